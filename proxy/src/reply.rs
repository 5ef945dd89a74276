//! FTP replies and command lines: bounded reading, parsing and writing.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Longest command line a client may send (bytes, CRLF included).
pub const MAX_LINE: usize = 4096;
/// Most lines in one backend reply (a FEAT or STAT listing).
pub const MAX_REPLY_LINES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply of more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
}

/// Reads one line ending in `\n` (at most [`MAX_LINE`] bytes), without
/// its `\r\n`. `Ok(None)` at end of stream. An over-long line is consumed
/// up to its end and reported as [`LineError::TooLong`], so the next line
/// reads cleanly.
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return if line.is_empty() && !too_long { Ok(None) } else { Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()) };
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if !too_long {
            if line.len() + n > MAX_LINE {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        r.consume(n);
        if done {
            if too_long {
                return Err(LineError::TooLong);
            }
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            return Ok(Some(line));
        }
    }
}

/// A reply: its code and its lines as received (without CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply { code, lines: vec![format!("{code} {}", text.into())] }
    }

    /// 1xx.
    pub fn preliminary(&self) -> bool {
        (100..200).contains(&self.code)
    }

    pub fn success(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The text after the code on the last line.
    pub fn text(&self) -> &str {
        self.lines.last().map(|l| l.get(4..).unwrap_or("")).unwrap_or("")
    }

    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        let mut out = Vec::new();
        for l in &self.lines {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        w.write_all(&out).await?;
        w.flush().await
    }
}

fn code_of(line: &str) -> Option<u16> {
    let c = line.get(..3)?;
    c.bytes().all(|b| b.is_ascii_digit()).then(|| c.parse().ok()).flatten()
}

/// Reads one (possibly multi-line) reply from a server.
pub async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, LineError> {
    let eof = || LineError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
    let first = read_line(r).await?.ok_or_else(eof)?;
    let first = String::from_utf8_lossy(&first).into_owned();
    let code = code_of(&first).ok_or_else(|| LineError::Malformed(first.clone()))?;
    let multi = first.as_bytes().get(3) == Some(&b'-');
    let mut lines = vec![first];
    if multi {
        let end = format!("{code} ");
        loop {
            let l = read_line(r).await?.ok_or_else(eof)?;
            let l = String::from_utf8_lossy(&l).into_owned();
            let last = l.starts_with(&end) || l == end.trim_end();
            lines.push(l);
            if last {
                break;
            }
            if lines.len() > MAX_REPLY_LINES {
                return Err(LineError::TooManyLines);
            }
        }
    }
    Ok(Reply { code, lines })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_the_next_line_reads_cleanly() {
        let long = "A".repeat(MAX_LINE + 10);
        let input = format!("NOOP\r\n{long}\r\nPWD\r\n");
        let mut r = tokio::io::BufReader::with_capacity(64, input.as_bytes());
        assert_eq!(read_line(&mut r).await.unwrap().unwrap(), b"NOOP");
        assert!(matches!(read_line(&mut r).await, Err(LineError::TooLong)));
        assert_eq!(read_line(&mut r).await.unwrap().unwrap(), b"PWD");
        assert!(read_line(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn multi_line_replies_are_read_whole() {
        let input = "211-Features:\r\n EPSV\r\n211 End\r\n230 ok\r\n";
        let mut r = tokio::io::BufReader::new(input.as_bytes());
        let f = read_reply(&mut r).await.unwrap();
        assert_eq!((f.code, f.lines.len()), (211, 3));
        let o = read_reply(&mut r).await.unwrap();
        assert_eq!((o.code, o.text()), (230, "ok"));
        let mut bad = tokio::io::BufReader::new("hello\r\n".as_bytes());
        assert!(matches!(read_reply(&mut bad).await, Err(LineError::Malformed(_))));
    }
}
