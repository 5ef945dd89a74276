//! The logged-in part of a session: the backend session on the current
//! primary (opened, and re-opened after a change of primary, with the
//! working directory and type restored), relayed commands and relayed
//! passive data connections.

use std::net::IpAddr;
use std::time::Duration;

use tracing::{info, warn};

use crate::backend::{quoted_path, Backend, COMMAND_TIMEOUT};
use crate::download::file_id;
use crate::passive::accept_from;
use crate::reply::Reply;
use crate::session::{Flow, Session};

/// How long the final reply of a transfer may take once the data is done
/// (the node waits for the guide with `ack = "guide"`).
pub const FINAL_REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Commands relayed as they are.
const RELAYED: &[&str] = &[
    "CWD", "XCWD", "CDUP", "XCUP", "PWD", "XPWD", "MKD", "XMKD", "RMD", "XRMD", "DELE", "RNFR", "RNTO", "SIZE", "MDTM", "MLST", "NOOP",
    "FEAT", "TYPE", "STAT", "REST", "ALLO", "MODE", "STRU", "HELP", "OPTS", "ABOR", "MFMT", "HASH", "SITE",
];
/// Commands that use a data connection.
const DATA: &[&str] = &["RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"];
/// Most times one command is sent again to a next primary.
const MAX_REDO: u32 = 4;
/// How long a refusal that says the service is moving waits for the
/// guide's announcement that it is (sent before the node refuses).
const SWITCH_NOTICE: Duration = Duration::from_secs(2);
/// Reply texts of a drift node that mean the command left no trace in
/// the history: refused before it ran (the node is no longer primary,
/// fenced, or draining for a migration), or run but never stored by the
/// guide because the node was demoted first (its change is quarantined).
/// Such a command is sent again to the next primary. A change whose ack
/// was lost to a lapsed *lease* is not here: the guide may hold it.
const NOT_IN_HISTORY: &[&str] = &[
    "this node is not the primary",
    "stopped taking changes (fenced)",
    "the service is moving to another node",
    "the node stopped being the primary before the guide confirmed the change",
];

/// Whether a node's reply means the command can go to the next primary.
pub fn redo(r: &Reply) -> bool {
    matches!(r.code, 421 | 450 | 451) && NOT_IN_HISTORY.iter().any(|t| r.text().contains(t))
}

/// Data commands whose bytes go from the client to the node.
const UPLOADS: &[&str] = &["STOR", "APPE", "STOU"];
/// Commands that change nothing: safe to send again on a new primary when
/// the old one was lost before it answered.
const REPEATABLE: &[&str] = &["CWD", "XCWD", "CDUP", "XCUP", "PWD", "XPWD", "SIZE", "MDTM", "MLST", "NOOP", "FEAT", "TYPE", "STAT", "HELP", "HASH"];

impl Session {
    /// Makes sure the backend session is on the primary the guide
    /// announces, holding (up to `patience`) while none serves. The error
    /// is the reply for the client.
    pub async fn ensure_backend(&mut self) -> Result<(), Reply> {
        let patience = self.shared.cfg.patience;
        let deadline = tokio::time::Instant::now() + patience;
        let user = self.user.clone().ok_or_else(|| Reply::new(530, "Please log in with USER and PASS"))?;
        loop {
            let mut view = self.shared.view.clone();
            let target = tokio::time::timeout_at(deadline, view.wait_for(|v| v.target().is_some()))
                .await
                .ok()
                .and_then(|r| r.ok())
                .and_then(|v| v.target().map(|(e, f)| (e, f.to_owned())));
            let Some((epoch, ftp)) = target else {
                warn!(session = self.id, "no primary serving within {patience:?}");
                return Err(Reply::new(421, format!("Service not available: no primary within {} s", patience.as_secs())));
            };
            if self.backend.as_ref().is_some_and(|b| b.epoch == epoch) {
                return Ok(());
            }
            if let Some(old) = self.backend.take() {
                info!(session = self.id, from_epoch = old.epoch, to_epoch = epoch, "moving the session to the new primary");
                tokio::spawn(old.quit());
            }
            match self.open_backend(&user, &ftp, epoch).await {
                Ok(b) => {
                    self.backend = Some(b);
                    return Ok(());
                }
                Err(e) => {
                    warn!(session = self.id, epoch, "cannot open a session on the primary: {e}");
                    // Wait for the next announcement (or the deadline).
                    let mut view = self.shared.view.clone();
                    let changed = tokio::time::timeout(Duration::from_millis(500), view.wait_for(|v| v.epoch != epoch || v.target().is_none()));
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(Reply::new(421, "Service not available: the primary does not answer"));
                    }
                }
            }
        }
    }

    async fn open_backend(&self, user: &str, ftp: &str, epoch: u64) -> Result<Backend, String> {
        let mut b = Backend::connect(ftp, self.shared.cfg.backend_source, epoch).await.map_err(|e| e.to_string())?;
        let auth = self.shared.auth.clone();
        let (u, ip): (String, IpAddr) = (user.to_owned(), self.client);
        let pw = tokio::task::spawn_blocking(move || auth.backend_password(&u, ip)).await.map_err(|e| e.to_string())?;
        b.login(user, &pw).await.map_err(|e| e.to_string())?;
        if let Some(t) = &self.type_ {
            let r = b.command(&format!("TYPE {t}")).await.map_err(|e| e.to_string())?;
            if !r.success() {
                return Err(format!("restoring TYPE {t}: {}", r.text()));
            }
        }
        if let Some(d) = &self.cwd {
            let r = b.command(&format!("CWD {d}")).await.map_err(|e| e.to_string())?;
            if !r.success() {
                return Err(format!("restoring the directory {d}: {}", r.text()));
            }
        }
        Ok(b)
    }

    /// A command of a logged-in session.
    pub async fn logged_in(&mut self, verb: &str, line: &str) -> std::io::Result<Flow> {
        let reply = match verb {
            "PASV" | "EPSV" => self.open_passive(verb == "EPSV").await,
            v if DATA.contains(&v) => {
                let flow = self.data_command(line).await;
                self.shared.state.transfer_end(self.id);
                return flow;
            }
            v if RELAYED.contains(&v) => match self.relay(verb, line).await {
                Ok(r) => r,
                Err(r) => {
                    self.send(&r).await?;
                    return Ok(if r.code == 421 { Flow::Close } else { Flow::Continue });
                }
            },
            _ => Reply::new(502, "Command not implemented"),
        };
        self.send(&reply).await?;
        Ok(Flow::Continue)
    }

    /// Relays one command; after a success, tracks what a new backend
    /// must restore.
    async fn relay(&mut self, verb: &str, line: &str) -> Result<Reply, Reply> {
        let mut tries = 0;
        let reply = loop {
            self.ensure_backend().await?;
            let Some(b) = self.backend.as_mut() else { continue };
            // RNTO on another primary needs its RNFR there first.
            let rnfr = match (verb, &self.rnfr) {
                ("RNTO", Some((epoch, from))) if *epoch != b.epoch => Some(from.clone()),
                _ => None,
            };
            let sent = async {
                if let Some(from) = &rnfr {
                    let r = b.command(from).await?;
                    if r.code != 350 {
                        return Ok(r);
                    }
                }
                b.command(line).await
            }
            .await;
            match sent {
                Ok(r) if redo(&r) && tries < MAX_REDO && self.moving().await => {
                    info!(session = self.id, code = r.code, "{verb} was not performed by a primary that is being replaced: sent again to the next one");
                    self.backend = None;
                    tries += 1;
                }
                Ok(r) => break r,
                Err(e) => {
                    warn!(session = self.id, "the primary was lost during {verb}: {e}");
                    self.backend = None;
                    tries += 1;
                    if !REPEATABLE.contains(&verb) || tries > MAX_REDO {
                        return Err(Reply::new(451, format!("The primary was lost during {verb}; it may not have taken effect")));
                    }
                }
            }
        };
        if verb == "RNFR" {
            self.rnfr = reply.success().then(|| (self.backend.as_ref().map_or(0, |b| b.epoch), line.to_owned()));
        } else if verb == "RNTO" {
            self.rnfr = None;
        }
        if reply.success() {
            match verb {
                "TYPE" => self.type_ = Some(line[4..].trim().to_owned()),
                "REST" => self.rest = line[4..].trim().parse().unwrap_or(0),
                "CWD" | "XCWD" | "CDUP" | "XCUP" => self.track_cwd().await,
                _ => {}
            }
        }
        Ok(filter(verb, reply))
    }

    /// Whether the guide says the service is moving away from the
    /// backend's primary (waits up to [`SWITCH_NOTICE`] for it).
    pub async fn moving(&self) -> bool {
        let epoch = self.backend.as_ref().map_or(0, |b| b.epoch);
        let mut v = self.shared.view.clone();
        let moved = matches!(tokio::time::timeout(SWITCH_NOTICE, v.wait_for(|v| v.epoch != epoch || !v.serving)).await, Ok(Ok(_)));
        moved
    }

    async fn track_cwd(&mut self) {
        let Some(b) = self.backend.as_mut() else { return };
        if let Ok(r) = b.command("PWD").await {
            if r.code == 257 {
                self.cwd = quoted_path(r.text());
            }
        }
    }

    async fn open_passive(&mut self, extended: bool) -> Reply {
        let ip = self.local;
        let listener = match self.shared.passive.bind(ip).await {
            Ok(l) => l,
            Err(e) => {
                warn!(session = self.id, "no passive port: {e}");
                return Reply::new(425, "No passive port free");
            }
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(_) => return Reply::new(425, "No passive port free"),
        };
        self.passive = Some(listener);
        if extended {
            return Reply::new(229, format!("Entering Extended Passive Mode (|||{port}|)"));
        }
        let v4 = match (self.shared.cfg.passive_host, ip) {
            (Some(h), _) => h,
            (None, IpAddr::V4(v4)) => v4,
            (None, IpAddr::V6(_)) => {
                self.passive = None;
                return Reply::new(425, "PASV needs IPv4: use EPSV");
            }
        };
        let o = v4.octets();
        Reply::new(227, format!("Entering Passive Mode ({},{},{},{},{},{})", o[0], o[1], o[2], o[3], port >> 8, port & 0xff))
    }

    /// RETR, STOR, LIST, ...: a data connection on each side, joined.
    async fn data_command(&mut self, line: &str) -> std::io::Result<Flow> {
        let Some(listener) = self.passive.take() else {
            self.send(&Reply::new(425, "Use PASV or EPSV first")).await?;
            return Ok(Flow::Continue);
        };
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        // Until the node answered, nothing reached the client: a lost
        // primary is replaced and the command sent again, except APPE and
        // STOU, whose effect a second try would double.
        let repeatable = !matches!(verb.as_str(), "APPE" | "STOU");
        let deadline = tokio::time::Instant::now() + self.shared.cfg.patience;
        let rest = std::mem::take(&mut self.rest);
        let path = line.get(verb.len() + 1..).unwrap_or("").to_owned();
        // A binary RETR can be resumed on another primary if the file is
        // known by its BLAKE3.
        let resumable = verb == "RETR" && !self.type_.as_deref().is_some_and(|t| t.to_ascii_uppercase().starts_with('A'));
        let mut redo_left = MAX_REDO;
        // The transfer's row exists before anything is sent.
        let epoch = self.backend.as_ref().map_or(self.shared.view.borrow().epoch, |b| b.epoch);
        self.shared.state.transfer_start(self.id, &verb, &path, None, epoch);
        let (node_data, first, id) = loop {
            if let Err(r) = self.ensure_backend().await {
                self.send(&r).await?;
                return Ok(Flow::Close);
            }
            let Some(b) = self.backend.as_mut() else { return Ok(Flow::Close) };
            let mut sent = false;
            let attempt = async {
                let id = if resumable { file_id(b, &path).await? } else { None };
                let d = b.open_data().await?;
                if rest > 0 {
                    // Armed again: the REST may have gone to a lost primary.
                    b.command(&format!("REST {rest}")).await?;
                }
                sent = true;
                b.send(line).await?;
                Ok::<_, crate::backend::BackendError>((d, b.reply(COMMAND_TIMEOUT).await?, id))
            }
            .await;
            match attempt {
                // A first reply that refuses, from a primary being
                // replaced: nothing was done (libunftp's text for a data
                // command's error is generic, so the code is enough).
                Ok((_, first, _)) if matches!(first.code, 421 | 450 | 451) && redo_left > 0 && self.moving().await => {
                    info!(session = self.id, code = first.code, "{verb} was refused by a primary that is being replaced: sent again to the next one");
                    redo_left -= 1;
                    self.backend = None;
                }
                Ok(x) => break x,
                Err(e) => {
                    warn!(session = self.id, "the primary was lost before answering {verb}: {e}");
                    self.backend = None;
                    if (sent && !repeatable) || tokio::time::Instant::now() >= deadline {
                        self.send(&Reply::new(451, format!("The primary was lost during {verb}; try again"))).await?;
                        return Ok(Flow::Continue);
                    }
                }
            }
        };
        if !first.preliminary() {
            self.send(&first).await?;
            return Ok(Flow::Continue);
        }
        self.send(&first).await?;
        let upload = UPLOADS.iter().any(|u| line.len() >= u.len() && line[..u.len()].eq_ignore_ascii_case(u));
        let accepted = accept_from(&listener, self.client).await;
        drop(listener);
        let relayed = match (accepted, id) {
            (Ok(client_data), Some(id)) => {
                let last = self.download(client_data, node_data, &path, rest, id).await;
                self.send(&last).await?;
                return Ok(Flow::Continue);
            }
            (Ok(client_data), None) if verb == "STOR" && rest == 0 => {
                let last = self.upload(client_data, node_data, &path).await;
                self.send(&last).await?;
                return Ok(Flow::Continue);
            }
            (Ok(client_data), None) if upload => pump(client_data, node_data).await,
            (Ok(client_data), None) => pump(node_data, client_data).await,
            (Err(e), _) => {
                // The node's transfer must not count as done: reset its
                // data connection, and never pass its 226 on.
                warn!(session = self.id, "the client did not open the data connection: {e}");
                let _ = node_data.set_zero_linger();
                drop(node_data);
                let _ = self.final_reply().await;
                self.send(&Reply::new(425, "Cannot open the data connection")).await?;
                return Ok(Flow::Continue);
            }
        };
        let Some(b) = self.backend.as_mut() else { return Ok(Flow::Close) };
        let last = b.reply(FINAL_REPLY_TIMEOUT).await;
        match last {
            // A broken data connection is never answered as a success.
            Ok(r) if r.success() && relayed.is_err() => {
                warn!(session = self.id, "the data connection broke ({relayed:?}); the node said {}", r.code);
                self.send(&Reply::new(426, "Data connection broken; transfer aborted")).await?
            }
            Ok(r) => self.send(&r).await?,
            Err(e) => {
                warn!(session = self.id, "no final reply from the primary ({e}); data connection: {relayed:?}");
                self.backend = None;
                self.send(&Reply::new(451, "The transfer did not complete on the service")).await?;
            }
        }
        Ok(Flow::Continue)
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to` (the other
/// direction carries nothing in stream mode). On an error both are reset,
/// so the receiving end sees a failure, not an end of file.
async fn pump(mut from: tokio::net::TcpStream, mut to: tokio::net::TcpStream) -> std::io::Result<u64> {
    use tokio::io::AsyncWriteExt;
    match tokio::io::copy(&mut from, &mut to).await {
        Ok(n) => {
            to.shutdown().await?;
            Ok(n)
        }
        Err(e) => {
            let _ = to.set_zero_linger();
            let _ = from.set_zero_linger();
            Err(e)
        }
    }
}

/// Hides what the proxy does not offer from a relayed FEAT.
fn filter(verb: &str, mut r: Reply) -> Reply {
    if verb == "FEAT" && r.lines.len() > 2 {
        let hidden = ["AUTH", "PBSZ", "PROT", "EPRT", "CCC"];
        r.lines.retain(|l| !hidden.iter().any(|h| l.trim_start().to_ascii_uppercase().starts_with(h)));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replies_that_left_no_trace_are_sent_again() {
        assert!(redo(&Reply::new(451, "Not acknowledged: the node stopped being the primary before the guide confirmed the change")));
        assert!(redo(&Reply::new(450, "the service is moving to another node; try again in a moment")));
        assert!(!redo(&Reply::new(451, "Not acknowledged: the node lost its lease before the guide confirmed the change")));
        assert!(!redo(&Reply::new(550, "this node is not the primary")));
        assert!(!redo(&Reply::new(250, "the service is moving to another node")));
    }
}
