//! The storage backend's lines in the transfer log, and the refusals
//! whose text the client sees.

use std::path::Path;
use std::time::Instant;

use unftp_core::storage::{Error, ErrorKind};

use super::{normalise, DriftStorage};
use crate::node::auth::NodeUser;
use crate::node::xferlog::{Entry, Outcome};

/// A refusal with the exact reply text (and code) the client gets.
pub(super) fn refusal(kind: ErrorKind, code: Option<u16>, text: impl Into<String>) -> Error {
    Error::with_reply(kind, code, text)
}

/// A refusal of the ordinary kind (wrong kind of file, missing name,
/// existing name): logged once at info, `550` with `text`.
pub(super) fn refused_info(user: &NodeUser, text: String) -> Error {
    tracing::info!(user = %user.name, "refused: {text}");
    refusal(ErrorKind::PermanentFileNotAvailable, None, text)
}

/// `REST` beyond the end of the file, then `STOR` (hostile input 3).
pub(super) fn rest_beyond_end() -> Error {
    refusal(ErrorKind::PermanentFileNotAvailable, Some(554), "Restart offset beyond the end of the file")
}

/// The path as the client sees it (inside its home, starting with `/`).
pub(super) fn shown(path: &Path) -> String {
    match normalise(path) {
        Ok(rel) if rel == Path::new(".") => "/".to_string(),
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// How an error ends up in the log: policy refusals (permission, path,
/// REST beyond the end, wrong kind of file) or failures.
fn outcome_reason(err: &Error) -> (bool, String) {
    if let Some(r) = err.client_reply() {
        return (true, r.text.clone());
    }
    let reason = match std::error::Error::source(err) {
        Some(s) => s.to_string(),
        None => err.kind().to_string(),
    };
    let refused = matches!(err.kind(), ErrorKind::PermissionDenied | ErrorKind::FileNameNotAllowedError);
    (refused, reason)
}

/// One operation's line.
pub(super) struct Op<'a> {
    pub command: &'a str,
    pub path: &'a Path,
    pub to: Option<&'a Path>,
    pub started: Instant,
}

impl DriftStorage {
    /// Records how `op` ended: `Ok((bytes, seq))` or the error.
    pub(super) fn record<T>(&self, user: Option<&NodeUser>, op: Op<'_>, result: &Result<T, Error>, bytes: Option<u64>, seq: Option<u64>) {
        if !self.ctx.xferlog.enabled() {
            return;
        }
        let path = shown(op.path);
        let to = op.to.map(shown);
        let reason;
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(e) => {
                let (refused, r) = outcome_reason(e);
                reason = r;
                if refused {
                    Outcome::Refused(&reason)
                } else {
                    Outcome::Failed(&reason)
                }
            }
        };
        let mut entry = Entry::new(self.peer.ip(), user.map(|u| u.name.as_str()), op.command, outcome);
        entry.path = Some(&path);
        entry.to = to.as_deref();
        entry.bytes = bytes;
        entry.duration = op.started.elapsed();
        entry.seq = seq;
        self.ctx.xferlog.record(&entry);
    }
}
