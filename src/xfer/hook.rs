//! The inspection hook: the paper's place for virus, malicious-code or
//! content scanning. It sees every complete, hash-verified file before it
//! gets its final name; a refusal deletes the staged file and is reported
//! to the sender.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A file about to be committed.
pub struct Candidate<'a> {
    /// Its name relative to the receiving directory.
    pub name: &'a Path,
    /// Where its complete content lies now (not its final name).
    pub staged: &'a Path,
    pub size: u64,
    pub blake3: blake3::Hash,
}

/// Decides whether a complete file may be committed. Runs on a blocking
/// thread; it may take its time.
pub trait CommitHook: Send + Sync {
    /// `Err(reason)` refuses the file.
    fn inspect(&self, file: &Candidate<'_>) -> Result<(), String>;
}

/// Runs an external program per file: `PROGRAM STAGED_PATH NAME`, with
/// `DRIFT_XFER_NAME`, `DRIFT_XFER_SIZE` and `DRIFT_XFER_BLAKE3` in its
/// environment. Exit status 0 accepts; anything else refuses, and the first
/// line of its output (stdout, else stderr) becomes the reason.
pub struct CommandHook {
    pub program: PathBuf,
    pub timeout: Duration,
}

impl CommitHook for CommandHook {
    fn inspect(&self, file: &Candidate<'_>) -> Result<(), String> {
        let child = Command::new(&self.program)
            .arg(file.staged)
            .arg(file.name)
            .env("DRIFT_XFER_NAME", file.name)
            .env("DRIFT_XFER_SIZE", file.size.to_string())
            .env("DRIFT_XFER_BLAKE3", file.blake3.to_hex().as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("inspection program {} could not run: {e}", self.program.display()))?;
        // Output is drained on its own thread (a chatty scanner must not
        // block on a full pipe) and the wait is bounded: a hung scanner
        // refuses the file rather than hanging the receiver.
        let pid = child.id() as libc::pid_t;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(self.timeout) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("waiting for the inspection program: {e}")),
            Err(_) => {
                // SAFETY: plain kill(2) on the child we spawned; it has not
                // been reaped, since its waiter has not returned.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Err(format!("inspection timed out after {:?}", self.timeout));
            }
        };
        if out.status.success() {
            return Ok(());
        }
        let text = if out.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
            out.stdout
        } else {
            out.stderr
        };
        let line = String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>();
        Err(if line.is_empty() {
            format!("refused by inspection ({})", out.status)
        } else {
            format!("refused by inspection: {line}")
        })
    }
}
