//! The RFC 959 Password (`PASS`) command
//
// The argument field is a Telnet string specifying the user's
// password.  This command must be immediately preceded by the
// user name command, and, for some sites, completes the user's
// identification for access control.  Since password
// information is quite sensitive, it is desirable in general
// to "mask" it or suppress typeout.  It appears that the
// server has no foolproof way to achieve this.  It is
// therefore the responsibility of the user-FTP process to hide
// the sensitive password information.

use crate::server::{
    chancomms::ControlChanMsg,
    controlchan::{
        Reply, ReplyCode,
        error::ControlChanError,
        handler::{CommandContext, CommandHandler},
    },
    failed_logins::LockState,
    password,
    session::SessionState,
};
use async_trait::async_trait;
use std::{sync::Arc, time::Duration};
use tokio::{sync::mpsc::Sender, time::sleep};
use unftp_core::auth::{ChannelEncryptionState, UserDetail};
use unftp_core::storage::{Metadata, StorageBackend};

#[derive(Debug)]
pub struct Pass {
    password: password::Password,
}

impl Pass {
    pub fn new(password: password::Password) -> Self {
        Pass { password }
    }
}

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Pass
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        // drift patch: the password is checked inside this handler, not in a
        // spawned task. Upstream answered at once and checked in the
        // background, so `PASS` lines pipelined in one write were checked in
        // parallel, past the lockout and the failure delay. Now the control
        // loop reads nothing more until the check is over, and the session
        // leaves `WaitPass` before it starts: one check per `USER`, and a
        // second `PASS` gets 503.
        let logger = args.logger;
        let (username, creds, failed_logins, source_ip) = {
            let mut session = args.session.lock().await;
            match &session.state {
                SessionState::WaitPass => {}
                SessionState::New => return Ok(Reply::new(ReplyCode::BadCommandSequence, "Please supply a username first")),
                _ => return Ok(Reply::new(ReplyCode::NotLoggedIn, "Please open a new connection to re-authenticate")),
            }
            session.state = SessionState::New;
            // drift patch: a password that is not UTF-8 is still a login
            // attempt: checked (it fails, costing the failure delay),
            // counted towards a lockout and logged like any other, instead
            // of a 553 that skipped all three.
            let pass = String::from_utf8_lossy(self.password.as_ref());
            let pass: &str = &pass;
            let username: String = match session.username.clone() {
                Some(v) => v,
                None => {
                    slog::error!(logger, "NoneError for username. This shouldn't happen.");
                    return Ok(Reply::new(ReplyCode::NotLoggedIn, "Please open a new connection to re-authenticate"));
                }
            };
            let creds = unftp_core::auth::Credentials {
                password: Some(pass.to_string()),
                source_ip: session.source.ip(),
                certificate_chain: session.cert_chain.clone(),
                command_channel_security: if session.cmd_tls {
                    ChannelEncryptionState::Tls
                } else {
                    ChannelEncryptionState::Plaintext
                },
            };
            (username, creds, session.failed_logins.clone(), session.source.ip())
        };
        let tx: Sender<ControlChanMsg> = args.tx_control_chan.clone();

        let msg = match args.auth_pipeline.authenticate_and_get_user(&username, &creds).await {
            Ok(user) => {
                let is_locked = match failed_logins {
                    Some(failed_logins) => {
                        let result = failed_logins.success(source_ip, username.clone()).await;
                        if let Some(state) = result {
                            slog::warn!(
                                logger,
                                "PASS: User authenticated but currently locked out due to previous failed login attempts according to the policy! (Username={}. Note: the account automatically unlocks after the configured period if no further failed login attempts occur. state={:?})",
                                username,
                                state
                            );
                            true
                        } else {
                            false
                        }
                    }
                    None => false,
                };

                if is_locked {
                    sleep(Duration::from_millis(1500)).await;
                    ControlChanMsg::AuthFailed
                } else if user.account_enabled() {
                    let mut session = args.session.lock().await;
                    // Using Arc::get_mut means that this won't work if the Session is
                    // currently servicing multiple commands concurrently.  But it
                    // shouldn't ever be servicing PASS at the same time as another
                    // command.
                    match Arc::get_mut(&mut session.storage).map(|s| s.enter(&user)) {
                        Some(Err(e)) => {
                            // drift patch: the backend refused the session (for
                            // drift: the user's session limit); its error says
                            // why. The credentials were right, so this is not
                            // "Authentication failed": 421 with the reason, then
                            // the connection closes.
                            slog::warn!(logger, "PASS: session refused for {}: {}", username, e);
                            if let Err(err) = tx.send(ControlChanMsg::ExitControlLoop).await {
                                slog::warn!(logger, "PASS: Could not send internal message: {}", err);
                            }
                            return Ok(Reply::new_with_string(ReplyCode::ServiceNotAvailable, one_line(&e.to_string())));
                        }
                        None => {
                            slog::error!(logger, "Failed to lock Session::storage during PASS.");
                            ControlChanMsg::AuthFailed
                        }
                        Some(Ok(())) => {
                            slog::info!(logger, "PASS: User {} logged in", user);
                            session.user = Arc::new(Some(user));
                            ControlChanMsg::AuthSuccess {
                                username,
                                trace_id: session.trace_id,
                            }
                        }
                    }
                } else {
                    slog::warn!(logger, "PASS: User {} authenticated but account is disabled", user);
                    ControlChanMsg::AuthFailed
                }
            }
            Err(unftp_core::auth::AuthenticationError::BadUser) => {
                slog::warn!(logger, "PASS: Login attempt for unknown user {}", username);
                ControlChanMsg::AuthFailed
            }
            Err(err) => {
                slog::warn!(logger, "PASS: Failed login attempt for user {}, reason={}", username, err);
                if let Some(failed_logins) = failed_logins {
                    let result = failed_logins.failed(source_ip, username.clone()).await;
                    if let Some(state) = result {
                        match state {
                            LockState::MaxFailuresReached => {
                                slog::warn!(
                                    logger,
                                    "PASS: Maximum number bad login attempts reached according to the policy so the locking policy is now active (Username={}, IP={}, LockState={:?})",
                                    username,
                                    source_ip,
                                    state
                                );
                            }
                            LockState::AlreadyLocked => {
                                slog::info!(
                                    logger,
                                    "PASS: Another bad login attempt but the locking policy is already active (Username={}, IP={}, LockState={:?})",
                                    username,
                                    source_ip,
                                    state
                                );
                            }
                        }
                    }
                }

                ControlChanMsg::AuthFailed
            }
        };
        // The control loop drains this channel while a handler runs, so the
        // send cannot block; the reply is written before the next command
        // is read.
        if let Err(err) = tx.send(msg).await {
            slog::warn!(logger, "PASS: Could not send internal message: {}", err);
        }
        Ok(Reply::none())
    }
}

/// A reply text on one line (an error's Display could hold a newline).
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}
