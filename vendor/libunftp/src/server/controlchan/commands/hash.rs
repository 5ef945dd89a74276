//! drift patch: `HASH path` (draft-bryan-ftpext-hash, as FileZilla uses
//! it): `213 <ALGO> <start>-<end> <hex> <path>` for the whole file, in the
//! algorithm `OPTS HASH` selected (BLAKE3 by default).

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
use std::sync::Arc;

#[derive(Debug)]
pub struct Hash {
    path: String,
}

impl Hash {
    pub fn new(path: String) -> Self {
        Hash { path }
    }
}

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Hash
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument(skip_all)]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        let session = args.session.lock().await;
        let user = session.user.clone();
        let storage = Arc::clone(&session.storage);
        let path = session.cwd.join(&self.path);
        drop(session);
        let shown = self.path.clone();
        let algo = storage.hash_algorithm();
        let (tx, logger) = (args.tx_control_chan.clone(), args.logger);
        // Hashing may read a large file: it runs on its own task so the
        // control loop stays responsive (ABOR, other sessions).
        tokio::spawn(async move {
            let Some(user) = (*user).as_ref() else {
                return send(&tx, &logger, "HASH", Reply::new(ReplyCode::NotLoggedIn, "Not logged in")).await;
            };
            let reply = match storage.hash(user, &path, algo).await {
                Ok(h) => Reply::new_with_string(
                    ReplyCode::FileStatus,
                    format!("{} 0-{} {} {}", algo.name(), h.len, h.hex, shown),
                ),
                Err(e) => storage_reply(&e),
            };
            send(&tx, &logger, "HASH", reply).await;
        });
        Ok(Reply::none())
    }
}
