//! The transfer and access log: one concise line per login, transfer,
//! namespace change and refusal, as vsftpd's xferlog or ProFTPD's
//! TransferLog give an FTP administrator.
//!
//! It is separate from the diagnostic log (`tracing`): its lines have a
//! fixed, documented shape (`docs/node.md`, "The transfer log") that
//! scripts may parse, in one of two formats:
//!
//! - `text`: `TIME CLIENT USER COMMAND RESULT key=value...`, fields
//!   separated by one space; values that hold a space, `"`, `=` or a
//!   control character are written as a JSON string.
//! - `json`: one JSON object per line with the same fields.
//!
//! Writing never fails an FTP command: a log that cannot be written is
//! reported once on the diagnostic log and the line is dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard error, beside the diagnostic log.
    Stderr,
    /// Appended to a file (created with mode 0640 if missing).
    File(PathBuf),
    /// No transfer log.
    Off,
}

/// As node.toml's `[log] transfers` names it (for messages).
impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stderr => f.write_str("standard error"),
            Destination::File(p) => write!(f, "{}", p.display()),
            Destination::Off => f.write_str("off"),
        }
    }
}

/// How each line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// How a logged command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// It did what was asked.
    Ok,
    /// It was refused by policy (permission, path, limit, bad login),
    /// with the reason.
    Refused(&'a str),
    /// It was allowed but failed (I/O error, stalled transfer), with the
    /// reason.
    Failed(&'a str),
}

impl Outcome<'_> {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Ok => None,
            Outcome::Refused(r) | Outcome::Failed(r) => Some(r),
        }
    }
}

/// One line of the log. `command` is the FTP verb that caused it
/// (`LOGIN` for a login attempt, `CONNECT` for a refused connection).
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub client: IpAddr,
    /// The logged-in user, or the name a login attempt gave; `None`
    /// before `USER`.
    pub user: Option<&'a str>,
    pub command: &'a str,
    /// The path as the client sees it (inside its home), if any.
    pub path: Option<&'a str>,
    /// The target of a rename.
    pub to: Option<&'a str>,
    /// Bytes moved by a transfer.
    pub bytes: Option<u64>,
    pub duration: Duration,
    pub outcome: Outcome<'a>,
    /// The journal seq of an acknowledged upload (or of a journaled
    /// namespace change, where known).
    pub seq: Option<u64>,
}

impl<'a> Entry<'a> {
    /// An entry with only the required fields; set the others directly.
    pub fn new(client: IpAddr, user: Option<&'a str>, command: &'a str, outcome: Outcome<'a>) -> Entry<'a> {
        Entry {
            client,
            user,
            command,
            path: None,
            to: None,
            bytes: None,
            duration: Duration::ZERO,
            outcome,
            seq: None,
        }
    }
}

/// The log: cheap to share (`Arc`), safe to call from any thread.
#[derive(Debug)]
pub struct TransferLog {
    sink: Option<Mutex<Sink>>,
    format: Format,
    /// Set after the first write error, so it is reported once.
    broken: AtomicBool,
}

#[derive(Debug)]
enum Sink {
    Stderr,
    File { file: File, path: PathBuf },
}

impl TransferLog {
    /// Opens the destination (a file is opened for appending now, so a bad
    /// path is an error at start, not a silent loss later).
    pub fn open(dest: &Destination, format: Format) -> io::Result<TransferLog> {
        let sink = match dest {
            Destination::Off => None,
            Destination::Stderr => Some(Sink::Stderr),
            Destination::File(path) => Some(Sink::File {
                file: open_append(path)?,
                path: path.clone(),
            }),
        };
        Ok(TransferLog {
            sink: sink.map(Mutex::new),
            format,
            broken: AtomicBool::new(false),
        })
    }

    /// A log that writes nothing.
    pub fn off() -> TransferLog {
        TransferLog {
            sink: None,
            format: Format::Text,
            broken: AtomicBool::new(false),
        }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Writes one line.
    pub fn record(&self, e: &Entry<'_>) {
        let Some(sink) = &self.sink else { return };
        let now = time::OffsetDateTime::now_utc();
        let line = match self.format {
            Format::Text => text_line(now, e),
            Format::Json => json_line(now, e),
        };
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        let written = match &mut *sink {
            Sink::Stderr => io::stderr().lock().write_all(line.as_bytes()),
            Sink::File { file, .. } => file.write_all(line.as_bytes()),
        };
        if let Err(err) = written {
            if !self.broken.swap(true, Ordering::Relaxed) {
                let path = match &*sink {
                    Sink::File { path, .. } => path.display().to_string(),
                    Sink::Stderr => "standard error".to_owned(),
                };
                tracing::error!(%path, error = %err, "cannot write the transfer log; its lines are being lost");
            }
        }
    }

    /// Writes the `CONNECT refused` line of a connection turned away
    /// before the greeting (address filter, connection limits), with the
    /// reason as the client's `421` gives it.
    pub fn connect_refused(&self, client: IpAddr, reason: &str) {
        let client = super::users::canonical_ip(client);
        self.record(&Entry::new(client, None, "CONNECT", Outcome::Refused(reason)));
    }

    /// Re-opens a log file (after logrotate moved it); called on SIGHUP.
    pub fn reopen(&self) -> io::Result<()> {
        let Some(sink) = &self.sink else { return Ok(()) };
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Sink::File { file, path } = &mut *sink {
            *file = open_append(path)?;
            self.broken.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// RFC 3339 in UTC with exactly three fractional digits
/// (`2026-12-01T10:00:00.120Z`): a fixed width, so lines sort and align.
/// (The well-known Rfc3339 format drops trailing zeros: `...00.12Z`.)
fn rfc3339(t: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    // Milliseconds are enough to order lines by eye and join them with the
    // diagnostic log.
    t.to_offset(time::UtcOffset::UTC).format(FORMAT).unwrap_or_default()
}

/// A value for the text format: bare if it is a plain token, else a JSON
/// string (so a name with a space or a newline cannot forge a field).
fn token(v: &str) -> String {
    // Any whitespace (U+2003, U+3000, U+2028...), not only ' ': a parser
    // that splits on Unicode whitespace must see the same fields.
    let plain = !v.is_empty() && v.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '"' && c != '=');
    if plain {
        v.to_owned()
    } else {
        serde_json::Value::String(v.to_owned()).to_string()
    }
}

fn text_line(now: time::OffsetDateTime, e: &Entry<'_>) -> String {
    let mut s = format!(
        "{} {} {} {} {}",
        rfc3339(now),
        e.client,
        token(e.user.unwrap_or("-")),
        token(e.command),
        e.outcome.word()
    );
    let mut kv = |k: &str, v: String| {
        s.push(' ');
        s.push_str(k);
        s.push('=');
        s.push_str(&v);
    };
    if let Some(p) = e.path {
        kv("path", token(p));
    }
    if let Some(t) = e.to {
        kv("to", token(t));
    }
    if let Some(b) = e.bytes {
        kv("bytes", b.to_string());
    }
    kv("ms", e.duration.as_millis().to_string());
    if let Some(seq) = e.seq {
        kv("seq", seq.to_string());
    }
    if let Some(r) = e.outcome.reason() {
        kv("reason", token(r));
    }
    s.push('\n');
    s
}

fn json_line(now: time::OffsetDateTime, e: &Entry<'_>) -> String {
    let mut m = serde_json::Map::new();
    m.insert("time".into(), rfc3339(now).into());
    m.insert("client".into(), e.client.to_string().into());
    m.insert("user".into(), e.user.map(Into::into).unwrap_or(serde_json::Value::Null));
    m.insert("command".into(), e.command.into());
    m.insert("result".into(), e.outcome.word().into());
    if let Some(p) = e.path {
        m.insert("path".into(), p.into());
    }
    if let Some(t) = e.to {
        m.insert("to".into(), t.into());
    }
    if let Some(b) = e.bytes {
        m.insert("bytes".into(), b.into());
    }
    m.insert("ms".into(), (e.duration.as_millis() as u64).into());
    if let Some(seq) = e.seq {
        m.insert("seq".into(), seq.into());
    }
    if let Some(r) = e.outcome.reason() {
        m.insert("reason".into(), r.into());
    }
    let mut s = serde_json::Value::Object(m).to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> time::OffsetDateTime {
        time::macros::datetime!(2026-12-01 10:00:00.123456 UTC)
    }

    fn upload<'a>() -> Entry<'a> {
        let mut e = Entry::new("10.0.0.7".parse().unwrap(), Some("alice"), "STOR", Outcome::Ok);
        e.path = Some("/in/a b.txt");
        e.bytes = Some(42);
        e.duration = Duration::from_millis(7);
        e.seq = Some(19);
        e
    }

    #[test]
    fn text_quotes_what_could_forge_a_field() {
        assert_eq!(
            text_line(at(), &upload()),
            "2026-12-01T10:00:00.123Z 10.0.0.7 alice STOR ok path=\"/in/a b.txt\" bytes=42 ms=7 seq=19\n"
        );
        let mut e = Entry::new("::1".parse().unwrap(), Some("x\ny=1"), "LOGIN", Outcome::Refused("bad password"));
        e.duration = Duration::from_millis(1500);
        assert_eq!(
            text_line(at(), &e),
            "2026-12-01T10:00:00.123Z ::1 \"x\\ny=1\" LOGIN refused ms=1500 reason=\"bad password\"\n"
        );
        let mut e = upload();
        e.path = Some("/a\u{2003}b\u{2028}c");
        assert!(text_line(at(), &e).contains("path=\"/a\u{2003}b\u{2028}c\""), "{}", text_line(at(), &e));
    }

    #[test]
    fn times_have_a_fixed_width() {
        assert_eq!(rfc3339(time::macros::datetime!(2026-12-01 10:00:00.120999 UTC)), "2026-12-01T10:00:00.120Z");
        assert_eq!(rfc3339(time::macros::datetime!(2026-12-01 10:00:00 UTC)), "2026-12-01T10:00:00.000Z");
        assert_eq!(rfc3339(time::macros::datetime!(2026-12-01 12:00:00.5 +02:00)), "2026-12-01T10:00:00.500Z");
    }

    #[test]
    fn json_has_the_same_fields() {
        let v: serde_json::Value = serde_json::from_str(&json_line(at(), &upload())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"time":"2026-12-01T10:00:00.123Z","client":"10.0.0.7","user":"alice",
                "command":"STOR","result":"ok","path":"/in/a b.txt","bytes":42,"ms":7,"seq":19})
        );
    }

    #[test]
    fn destinations_display_as_configured() {
        assert_eq!(Destination::File("/var/log/drift/xfer.log".into()).to_string(), "/var/log/drift/xfer.log");
        assert_eq!(Destination::Stderr.to_string(), "standard error");
    }

    #[test]
    fn refused_connections_have_no_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xfer.log");
        let log = TransferLog::open(&Destination::File(path.clone()), Format::Text).unwrap();
        log.connect_refused("::ffff:10.66.0.3".parse().unwrap(), "address not allowed by the service filter");
        let text = std::fs::read_to_string(&path).unwrap();
        let (_, rest) = text.split_once(' ').unwrap();
        assert_eq!(rest, "10.66.0.3 - CONNECT refused ms=0 reason=\"address not allowed by the service filter\"\n");
    }

    #[test]
    fn file_destination_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xfer.log");
        let log = TransferLog::open(&Destination::File(path.clone()), Format::Json).unwrap();
        log.record(&upload());
        log.record(&upload());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.contains("\"seq\":19")));
    }
}
