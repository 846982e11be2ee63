//! The kernel command line parser on arbitrary bytes: never panics, and what it
//! returns for a key is what the last occurrence of that key said.
#![no_main]

use firstboot::cmdline::Cmdline;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = Cmdline::parse(&text);
    for (k, v) in c.kiln() {
        assert_eq!(c.get(&format!("kiln.{k}")), Some(v.as_str()));
    }
    // Parsing is stable: re-parsing the same text gives the same result.
    assert_eq!(Cmdline::parse(&text), c);
});
