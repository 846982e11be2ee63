//! Draws a boot's timeline (firstboot's `kiln: timeline` console line) as an SVG, in the
//! manner of `systemd-analyze plot`: one row per milestone (a bar from the previous milestone
//! to it) and one per component (a bar from its first spawn to its first readiness), on a
//! time axis in seconds since the kernel started. Deterministic: the same timeline gives the
//! same bytes.

use std::fmt::Write as _;

use firstboot::timeline::Timeline;

const LABEL_W: f64 = 230.0;
const PLOT_W: f64 = 900.0;
const ROW_H: f64 = 18.0;
const TOP: f64 = 40.0;

/// XML-escapes text for an SVG text node or attribute.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step in seconds giving at most about a dozen grid lines over `span_s`.
fn tick_step(span_s: f64) -> u64 {
    [1u64, 2, 5, 10, 20, 30, 60, 120, 300, 600]
        .into_iter()
        .find(|s| span_s / *s as f64 <= 12.0)
        .unwrap_or(1200)
}

/// The SVG document for `t`, titled `title`.
pub fn render_svg(t: &Timeline, title: &str) -> String {
    let end_ms = t
        .phases
        .iter()
        .map(|p| p.at_ms)
        .chain(
            t.components
                .iter()
                .map(|c| c.ready_ms.unwrap_or(c.start_ms)),
        )
        .max()
        .unwrap_or(0)
        .max(1000);
    let scale = PLOT_W / end_ms as f64;
    let x = |ms: u64| LABEL_W + ms as f64 * scale;
    let rows = t.phases.len() + t.components.len();
    let height = TOP + (rows as f64 + 1.0) * ROW_H + 30.0;
    // Room after the plot for the note of a bar ending at the right edge.
    let width = LABEL_W + PLOT_W + 130.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="14">{}</text>"#,
        esc(title)
    );
    // Grid and axis labels.
    let step = tick_step(end_ms as f64 / 1000.0);
    let mut sec = 0;
    while sec * 1000 <= end_ms {
        let gx = x(sec * 1000);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#666">{sec} s</text>"##,
            height - 25.0,
            height - 10.0
        );
        sec += step;
    }
    let mut row = 0usize;
    let mut bar = |s: &mut String, label: &str, from: u64, to: u64, fill: &str, note: &str| {
        let y = TOP + row as f64 * ROW_H;
        let w = (x(to) - x(from)).max(1.0);
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text><rect class="bar" x="{:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{fill}"><title>{}</title></rect><text x="{:.1}" y="{:.1}">{}</text>"#,
            LABEL_W - 6.0,
            y + ROW_H - 5.0,
            esc(label),
            x(from),
            y + 2.0,
            ROW_H - 4.0,
            esc(&format!("{label}: {note}")),
            x(to) + 4.0,
            y + ROW_H - 5.0,
            esc(note)
        );
        row += 1;
    };
    let mut prev = 0;
    for p in &t.phases {
        let from = prev.min(p.at_ms);
        bar(
            &mut s,
            &p.name,
            from,
            p.at_ms,
            "#8fb3d9",
            &format!("{:.1} s", p.at_ms as f64 / 1000.0),
        );
        prev = p.at_ms;
    }
    for c in &t.components {
        let (to, fill, note) = match c.ready_ms {
            Some(r) => (
                r,
                "#7cc47c",
                format!(
                    "ready after {:.1} s",
                    r.saturating_sub(c.start_ms) as f64 / 1000.0
                ),
            ),
            None => (c.start_ms, "#e08080", "not ready".to_string()),
        };
        bar(&mut s, &c.name, c.start_ms, to, fill, &note);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use firstboot::timeline::{Mark, Span};

    fn sample() -> Timeline {
        Timeline {
            phases: vec![
                Mark {
                    name: "stage2".into(),
                    at_ms: 20_000,
                },
                Mark {
                    name: "node-ready".into(),
                    at_ms: 200_000,
                },
            ],
            components: vec![
                Span {
                    name: "etcd".into(),
                    start_ms: 30_000,
                    ready_ms: Some(35_000),
                },
                Span {
                    name: "kube<apiserver>".into(),
                    start_ms: 35_100,
                    ready_ms: None,
                },
            ],
        }
    }

    /// (x, width) of each bar, in document order.
    fn bars(svg: &str) -> Vec<(f64, f64)> {
        svg.split(r#"<rect class="bar" x=""#)
            .skip(1)
            .map(|rest| {
                let num = |key: &str, s: &str| -> f64 {
                    let i = s.find(key).map(|i| i + key.len()).unwrap_or(0);
                    s[i..]
                        .split('"')
                        .next()
                        .unwrap_or("")
                        .parse()
                        .unwrap_or(f64::NAN)
                };
                let xv: f64 = rest
                    .split('"')
                    .next()
                    .unwrap_or("")
                    .parse()
                    .unwrap_or(f64::NAN);
                (xv, num(r#"width=""#, rest))
            })
            .collect()
    }

    #[test]
    fn one_bar_per_phase_and_component_on_a_shared_scale() {
        let svg = render_svg(&sample(), "boot");
        let b = bars(&svg);
        assert_eq!(b.len(), 4, "{svg}");
        let per_ms = PLOT_W / 200_000.0;
        // stage2: 0..20 s; node-ready: 20..200 s; etcd: 30..35 s.
        assert!((b[0].0 - LABEL_W).abs() < 0.1 && (b[0].1 - 20_000.0 * per_ms).abs() < 0.1);
        assert!((b[1].0 - (LABEL_W + 20_000.0 * per_ms)).abs() < 0.1);
        assert!((b[1].1 - 180_000.0 * per_ms).abs() < 0.1);
        assert!((b[2].1 - 5_000.0 * per_ms).abs() < 0.1);
        assert!(svg.contains("ready after 5.0 s"));
        // A component never ready gets a marker, not a negative width; text is escaped.
        assert!(b[3].1 >= 1.0);
        assert!(svg.contains("kube&lt;apiserver&gt;") && !svg.contains("kube<apiserver>"));
        assert!(svg.contains(">200 s<") || svg.contains(">180 s<"), "{svg}");
        assert_eq!(svg, render_svg(&sample(), "boot"));
    }

    #[test]
    fn ticks_stay_few() {
        assert_eq!(tick_step(9.0), 1);
        assert_eq!(tick_step(250.0), 30);
        assert!(tick_step(100_000.0) >= 600);
    }
}
