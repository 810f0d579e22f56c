//! Bounded line reading for everything that reads lines from outside (protocol sessions on
//! both ends, container logs): a line longer than the limit is consumed to its end without
//! being kept, and reported as too long, so no peer can make a reader grow without bound.
//! Bytes are kept as bytes until the line is complete (a multi-byte character split across
//! reads stays whole; invalid UTF-8 is replaced, never a reason to fail).

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest protocol line either end accepts: a 1 MiB chunk is about 1.4 MB as base64 in JSON.
pub const MAX_PROTOCOL_LINE: usize = 4 << 20;

/// One line, or how long a line was that exceeded the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Text(String),
    TooLong(u64),
}

/// Lines of an async reader, at most `max` bytes each. Cancel-safe: a partly read line is
/// kept in `self` when a `next_line` future is dropped (as `tokio::select!` does), and the
/// next call continues it.
pub struct BoundedLines<R> {
    reader: R,
    max: usize,
    buf: Vec<u8>,
    total: u64,
}

impl<R: AsyncBufRead + Unpin> BoundedLines<R> {
    pub fn new(reader: R, max: usize) -> Self {
        BoundedLines { reader, max, buf: Vec::new(), total: 0 }
    }

    /// The next line without its `\n` (and `\r`), or None at the end of input.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.total == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let (chunk, ends) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            let n = chunk.len();
            self.total += n as u64;
            if self.total <= self.max as u64 {
                self.buf.extend_from_slice(chunk);
            } else {
                // Too long: keep nothing more (and let go of what was kept).
                self.buf = Vec::new();
            }
            self.reader.consume(n + usize::from(ends));
            if ends {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> Line {
        let total = std::mem::take(&mut self.total);
        let mut bytes = std::mem::take(&mut self.buf);
        if total > self.max as u64 {
            return Line::TooLong(total);
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        Line::Text(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }
}

/// The same for blocking readers (container log pipes): at most `max` bytes of each line are
/// kept; a longer line is cut there and says how many bytes were left out.
pub fn read_line_capped(reader: &mut impl std::io::BufRead, max: usize) -> std::io::Result<Option<String>> {
    let mut kept: Vec<u8> = Vec::new();
    let mut dropped = 0u64;
    let mut any = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            break;
        }
        any = true;
        let (chunk, ends) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], true),
            None => (available, false),
        };
        let n = chunk.len();
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
        dropped += n.saturating_sub(room) as u64;
        reader.consume(n + usize::from(ends));
        if ends {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if kept.last() == Some(&b'\r') {
        kept.pop();
    }
    let mut line = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        line.push_str(&format!(" [mcp: line cut, {dropped} more bytes]"));
    }
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_reading_goes_on_after_a_long_one() {
        let mut input = Vec::new();
        input.extend_from_slice(b"short\r\n");
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend_from_slice(b"\n\xc3\xa9t\xff\nlast");
        // A tiny buffer: lines arrive in many pieces.
        let reader = tokio::io::BufReader::with_capacity(7, input.as_slice());
        let mut lines = BoundedLines::new(reader, 1000);
        assert_eq!(lines.next_line().await.unwrap(), Some(Line::Text("short".into())));
        assert_eq!(lines.next_line().await.unwrap(), Some(Line::TooLong(100_000)));
        assert_eq!(lines.next_line().await.unwrap(), Some(Line::Text("ét\u{fffd}".into())), "split é kept whole, bad byte replaced");
        assert_eq!(lines.next_line().await.unwrap(), Some(Line::Text("last".into())));
        assert_eq!(lines.next_line().await.unwrap(), None);
    }

    #[test]
    fn capped_lines_say_what_was_cut() {
        let mut input = std::io::BufReader::with_capacity(5, &b"abcdefghij\nok\n\nend"[..]);
        assert_eq!(read_line_capped(&mut input, 4).unwrap().as_deref(), Some("abcd [mcp: line cut, 6 more bytes]"));
        assert_eq!(read_line_capped(&mut input, 4).unwrap().as_deref(), Some("ok"));
        assert_eq!(read_line_capped(&mut input, 4).unwrap().as_deref(), Some(""));
        assert_eq!(read_line_capped(&mut input, 4).unwrap().as_deref(), Some("end"));
        assert_eq!(read_line_capped(&mut input, 4).unwrap(), None);
    }
}
