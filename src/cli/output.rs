//! Human output: aligned tables and short durations. `--json` output is plain serde.

use std::fmt::Write;

/// Render rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| printable(c, false).into_owned()).collect()).collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{:<w$}  ", cell, w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `42s`, `5m3s`, `2h4m`, `3d2h`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}


/// A one-line progress meter on stderr, shown only on a terminal.
pub struct Meter {
    label: String,
    total: u64,
    shown: bool,
    last_pct: u64,
}

impl Meter {
    pub fn new(label: &str, total: u64, quiet: bool) -> Meter {
        use std::io::IsTerminal;
        Meter { label: label.to_string(), total, shown: !quiet && std::io::stderr().is_terminal(), last_pct: u64::MAX }
    }

    pub fn update(&mut self, done: u64) {
        if !self.shown {
            return;
        }
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        if pct != self.last_pct {
            self.last_pct = pct;
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            eprint!("\r{}: {:.1}/{:.1} MiB ({pct}%)", self.label, mib(done), mib(self.total));
        }
    }

    pub fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// A registry digest as tables show it: its first 12 hex digits (`--json` has it whole).
pub fn short_digest(digest: Option<&str>) -> String {
    match digest {
        Some(d) => d.strip_prefix("sha256:").unwrap_or(d).chars().take(12).collect(),
        None => "-".into(),
    }
}

/// Text from outside (a node, a container, a registry) made safe for a terminal: control
/// characters (ESC, BEL, CR, ... and the C1 range) and the Unicode bidi overrides that can
/// reorder what the eye sees become visible escapes (`\x1b`, `\u{202e}`); newlines are kept
/// only where `newlines` says (messages, not table cells), tabs always.
pub fn printable(s: &str, newlines: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\t' && !(newlines && c == '\n')) || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_is_made_printable() {
        assert!(matches!(printable("plain text\twith tab", false), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("\x1b]0;pwned\x07\x1b[2J", false), "\\x1b]0;pwned\\x07\\x1b[2J");
        assert_eq!(printable("a\nb\rc", true), "a\nb\\x0dc");
        assert_eq!(printable("a\nb", false), "a\\x0ab");
        assert_eq!(printable("x\u{202e}y\u{9b}z", false), "x\\u{202e}y\\x9bz");
        assert!(table(&["A"], &[vec!["\x1b[31mred".into()]]).contains("\\x1b[31mred"));
    }

    #[test]
    fn table_aligns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["a".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\na    22\n");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(65), "1m5s");
        assert_eq!(duration(7300), "2h1m");
        assert_eq!(duration(90000), "1d1h");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_795_609_974_000), "2026-11-25 12:32:54");
    }
}
