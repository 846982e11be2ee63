//! Wall-clock times as text: RFC 3339 in UTC, the one form Kiln writes and reads (build
//! dates, OCI `created`, SBOM timestamps, the status report, Kubernetes heartbeats).

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds, e.g. `2023-11-14T22:13:20Z` (Kubernetes'
/// buildDate, OCI `created`, SPDX `created`). A time past year 9999 is written `@SECONDS`.
pub fn seconds(unix_secs: u64) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    i64::try_from(unix_secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("@{unix_secs}"))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for Unix milliseconds. A time past year 9999 is written
/// `@SECONDS.mmm`.
pub fn millis(unix_ms: u64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("@{}.{:03}", unix_ms / 1000, unix_ms % 1000))
}

/// Unix seconds (fraction dropped) of an RFC 3339 time such as Kubernetes writes
/// (`2026-11-27T16:30:00Z`); `None` for anything else or a time before 1970.
pub fn parse(text: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GNU date as the oracle.
    fn date(secs: u64) -> String {
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn formats_match_gnu_date() {
        for secs in [
            0u64,
            951_782_400,
            1_700_000_000,
            1_767_225_600,
            4_102_444_799,
        ] {
            assert_eq!(seconds(secs), date(secs), "{secs}");
            for ms in [0, 7, 123, 999] {
                let want = date(secs).replace('Z', &format!(".{ms:03}Z"));
                assert_eq!(millis(secs * 1000 + ms), want);
            }
        }
    }

    #[test]
    fn beyond_year_9999_is_still_written() {
        assert_eq!(seconds(u64::MAX), format!("@{}", u64::MAX));
        assert_eq!(millis(300_000_000_000_123), "@300000000000.123");
    }

    #[test]
    fn what_is_written_parses_back() {
        for secs in [
            0u64,
            951_782_400,
            1_767_225_600,
            1_798_382_999,
            4_102_444_800,
        ] {
            assert_eq!(parse(&seconds(secs)), Some(secs));
            assert_eq!(parse(&millis(secs * 1000 + 250)), Some(secs));
        }
        assert_eq!(
            parse("2026-11-27T17:30:00+01:00"),
            parse("2026-11-27T16:30:00Z")
        );
    }

    #[test]
    fn anything_else_does_not_parse() {
        for bad in [
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-27T00:00:00",
            "x-y-zTa:b:cZ",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
