//! drift patch: `MFMT YYYYMMDDHHMMSS[.sss] path` (draft-somers-ftp-mfxx):
//! sets a file's modification time (UTC), answering
//! `213 Modify=YYYYMMDDHHMMSS; path`. `lftp mirror` keeps times with it.

use super::drift_reply::{send, storage_reply};
use crate::{
    auth::UserDetail,
    server::controlchan::{
        Reply, ReplyCode,
        error::ControlChanError,
        handler::{CommandContext, CommandHandler},
    },
    storage::{Metadata, StorageBackend},
};
use async_trait::async_trait;
use chrono::{NaiveDateTime, TimeZone, Utc};
use std::{sync::Arc, time::SystemTime};

#[derive(Debug)]
pub struct Mfmt {
    arguments: String,
}

impl Mfmt {
    pub fn new(arguments: String) -> Self {
        Mfmt { arguments }
    }
}

/// Splits `YYYYMMDDHHMMSS[.sss] path` into the time and the path.
pub(crate) fn parse_mfmt(arguments: &str) -> Option<(SystemTime, String, &str)> {
    let (stamp, path) = arguments.split_once(' ')?;
    if path.is_empty() {
        return None;
    }
    let (whole, frac) = match stamp.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (stamp, None),
    };
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(whole, "%Y%m%d%H%M%S").ok()?;
    let mut t = Utc.from_utc_datetime(&naive);
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let nanos: i64 = format!("{f:0<9}").parse().ok()?;
        t += chrono::Duration::nanoseconds(nanos);
    }
    Some((t.into(), path.to_string(), whole))
}

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Mfmt
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument(skip_all)]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        let Some((mtime, shown, stamp)) = parse_mfmt(&self.arguments) else {
            return Ok(Reply::new(ReplyCode::ParameterSyntaxError, "Usage: MFMT YYYYMMDDHHMMSS path"));
        };
        let stamp = stamp.to_string();
        let session = args.session.lock().await;
        let user = session.user.clone();
        let storage = Arc::clone(&session.storage);
        let path = session.cwd.join(&shown);
        drop(session);
        let (tx, logger) = (args.tx_control_chan.clone(), args.logger);
        tokio::spawn(async move {
            let Some(user) = (*user).as_ref() else {
                return send(&tx, &logger, "MFMT", Reply::new(ReplyCode::NotLoggedIn, "Not logged in")).await;
            };
            let reply = match storage.set_modified(user, &path, mtime).await {
                Ok(()) => Reply::new_with_string(ReplyCode::FileStatus, format!("Modify={stamp}; {shown}")),
                Err(e) => storage_reply(&e),
            };
            send(&tx, &logger, "MFMT", reply).await;
        });
        Ok(Reply::none())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mfmt;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn parses_time_and_path() {
        let (t, p, s) = parse_mfmt("20200102030405 dir/a b.txt").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_577_934_245));
        assert_eq!(p, "dir/a b.txt");
        assert_eq!(s, "20200102030405");
        let (t, _, _) = parse_mfmt("20200102030405.5 x").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_millis(1_577_934_245_500));
        assert!(parse_mfmt("2020010203040 x").is_none());
        assert!(parse_mfmt("20201302030405 x").is_none());
        assert!(parse_mfmt("20200102030405").is_none());
        assert!(parse_mfmt("2020010203040x x").is_none());
    }
}
