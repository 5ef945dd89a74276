//! The RFC 959 Status (`STAT`) command
//
// This command shall cause a status response to be sent over
// the control connection in the form of a reply.  The command
// may be sent during a file transfer (along with the Telnet IP
// and Synch signals--see the Section on FTP Commands) in which
// case the server will respond with the status of the
// operation in progress, or it may be sent between file
// transfers.  In the latter case, the command may have an
// argument field.  If the argument is a pathname, the command
// is analogous to the "list" command except that data shall be
// transferred over the control connection.  If a partial
// pathname is given, the server may respond with a list of
// file names or attributes associated with that specification.
// If no argument is given, the server should return general
// status information about the server FTP process.  This
// should include current values of all transfer parameters and
// the status of connections.

use crate::{
    auth::UserDetail,
    server::{
        chancomms::ControlChanMsg,
        controlchan::{
            Reply, ReplyCode,
            error::ControlChanError,
            handler::{CommandContext, CommandHandler},
        },
    },
    storage::{Metadata, StorageBackend},
};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc::Sender;

#[derive(Debug)]
pub struct Stat {
    path: Option<Bytes>,
}

impl Stat {
    pub fn new(path: Option<Bytes>) -> Self {
        Stat { path }
    }
}

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Stat
where
    User: UserDetail,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: 'static + Metadata,
{
    #[tracing_attributes::instrument(skip_all)]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        match self.path.clone() {
            None => {
                // drift patch: plain status lines (no library, backend or
                // authenticator type names, no Debug output).
                let session = args.session.lock().await;
                let mut text: Vec<String> = vec![
                    "FTP server status:".to_string(),
                    format!(" Connected to {}", session.source.ip()),
                    format!(" Logged in as {}", session.username.as_deref().unwrap_or("(nobody)")),
                    format!(" Working directory {}", session.cwd.to_string_lossy()),
                    format!(" Control connection {}", if session.cmd_tls { "TLS" } else { "plain" }),
                    format!(" Data connections {}", if session.data_tls { "TLS" } else { "plain" }),
                ];
                if session.start_pos > 0 {
                    text.push(format!(" Restart offset {}", session.start_pos));
                }
                if let Some(from) = &session.rename_from {
                    text.push(format!(" Rename pending from {}", from.to_string_lossy()));
                }
                text.push("End of status".to_string());
                Ok(Reply::new_multiline(ReplyCode::SystemStatus, text))
            }
            Some(path) => {
                let path: &str = std::str::from_utf8(&path)?;
                let path_str = path.to_string();

                let session = args.session.lock().await;
                // drift patch: relative to the working directory, as every
                // other command's path.
                let path = session.cwd.join(path);
                let user = session.user.clone();
                let storage = Arc::clone(&session.storage);

                let tx_success: Sender<ControlChanMsg> = args.tx_control_chan.clone();
                let tx_fail: Sender<ControlChanMsg> = args.tx_control_chan.clone();
                let logger = args.logger;

                tokio::spawn(async move {
                    match storage.list_vec((*user).as_ref().unwrap(), path).await {
                        Ok(lines) => {
                            slog::debug!(logger, "STAT: Successfully listed file or directory {:?}", path_str);
                            // drift patch: 213 (RFC 959 STAT of a path), framed
                            // so every listing line is inside the reply.
                            let mut text = Vec::with_capacity(lines.len() + 2);
                            text.push(format!("Status of {path_str}:"));
                            text.extend(lines.into_iter().map(|l| format!(" {l}")));
                            text.push("End of status".to_string());
                            if let Err(err) = tx_success
                                .send(ControlChanMsg::CommandChannelReply(Reply::new_multiline(ReplyCode::FileStatus, text)))
                                .await
                            {
                                slog::warn!(logger, "STAT: Could not send internal message to notify of STAT success: {}", err);
                            }
                        }
                        Err(e) => {
                            slog::debug!(logger, "STAT: Failure listing file or directory {:?}", path_str);
                            let reply = super::drift_reply::storage_reply(&e);
                            if let Err(err) = tx_fail.send(ControlChanMsg::CommandChannelReply(reply)).await {
                                slog::warn!(logger, "STAT: Could not send internal message to notify of STAT failure: {}", err);
                            }
                        }
                    }
                });
                Ok(Reply::none())
            }
        }
    }
}
