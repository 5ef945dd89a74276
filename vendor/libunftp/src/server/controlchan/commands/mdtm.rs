use crate::{
    auth::UserDetail,
    server::{
        controlchan::{
            Reply, ReplyCode,
            error::ControlChanError,
            handler::{CommandContext, CommandHandler},
        },
    },
    storage::{Metadata, StorageBackend},
};
use async_trait::async_trait;
use chrono::{DateTime, offset::Utc};
use std::{path::PathBuf, sync::Arc};

const RFC3659_TIME: &str = "%Y%m%d%H%M%S";

#[derive(Debug)]
pub struct Mdtm {
    path: PathBuf,
}

impl Mdtm {
    pub fn new(path: PathBuf) -> Self {
        Mdtm { path }
    }
}

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Mdtm
where
    User: UserDetail,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: 'static + Metadata,
{
    #[tracing_attributes::instrument(skip_all)]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        // drift patch: answered inline. Upstream spawned a task that sent
        // the reply back through the control loop's message channel: a
        // task, a channel hop and a loop turn on every MDTM, which
        // `lftp mirror` sends for every file it downloads.
        let (user, storage, path) = {
            let session = args.session.lock().await;
            (session.user.clone(), Arc::clone(&session.storage), session.cwd.join(self.path.clone()))
        };
        let Some(user) = (*user).as_ref() else {
            return Ok(Reply::new(ReplyCode::NotLoggedIn, "Please authenticate"));
        };
        let reply = match storage.metadata(user, &path).await.and_then(|m| m.modified()) {
            Ok(mtime) => Reply::new_with_string(ReplyCode::FileStatus, DateTime::<Utc>::from(mtime).format(RFC3659_TIME).to_string()),
            Err(err) => {
                slog::debug!(args.logger, "MDTM: no modification time for {:?}: {}", path, err);
                super::drift_reply::storage_reply(&err)
            }
        };
        Ok(reply)
    }
}
