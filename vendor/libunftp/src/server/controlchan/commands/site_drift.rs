//! drift patch: the SITE subcommands drift builds in (`SITE CHMOD`,
//! `SITE HELP`) and the refusal of a path that is not valid UTF-8.

use super::drift_reply::storage_reply;
use crate::{
    auth::UserDetail,
    server::{
        controlchan::{Reply, ReplyCode, handler::CommandContext},
        ftpserver::options::SiteMd5,
    },
    storage::{FEATURE_SITEMD5, Metadata, StorageBackend},
};
use std::sync::Arc;

/// `SITE CHMOD mode path`: `mode` is octal permission bits (at most
/// `7777`).
pub(crate) async fn chmod<Storage, User>(context: &CommandContext<Storage, User>, arguments: &str) -> Reply
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    let Some((mode, path)) = parse_chmod(arguments) else {
        return Reply::new(ReplyCode::ParameterSyntaxError, "Usage: SITE CHMOD <octal mode> <path>");
    };
    let session = context.session.lock().await;
    let user = session.user.clone();
    let storage = Arc::clone(&session.storage);
    let full = session.cwd.join(path);
    drop(session);
    let Some(user) = (*user).as_ref() else {
        return Reply::new(ReplyCode::NotLoggedIn, "Not logged in");
    };
    match storage.chmod(user, &full, mode).await {
        Ok(()) => Reply::new(ReplyCode::CommandOkay, "SITE CHMOD command successful"),
        Err(e) => storage_reply(&e),
    }
}

/// `644 some/path` into the mode and the path.
pub(crate) fn parse_chmod(arguments: &str) -> Option<(u32, &str)> {
    let (mode, path) = arguments.trim_start().split_once(' ')?;
    if path.is_empty() || mode.is_empty() || mode.len() > 4 {
        return None;
    }
    let mode = u32::from_str_radix(mode, 8).ok()?;
    Some((mode, path))
}

/// `SITE HELP`: the SITE subcommands this server answers.
pub(crate) fn help<Storage, User>(context: &CommandContext<Storage, User>) -> Reply
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    let mut commands = vec!["CHMOD <octal mode> <path>".to_string(), "HELP".to_string()];
    if context.sitemd5 != SiteMd5::None && context.storage_features & FEATURE_SITEMD5 > 0 {
        commands.push("MD5 <path>".to_string());
    }
    commands.extend(context.site_handlers.keys().cloned());
    commands.sort();
    let mut lines = vec!["The following SITE commands are recognized:".to_string()];
    lines.extend(commands.into_iter().map(|c| format!(" {c}")));
    lines.push("End of SITE HELP".to_string());
    Reply::new_multiline(ReplyCode::HelpMessage, lines)
}

/// A command whose path was not valid UTF-8 (`verb` is its name): refused
/// before anything touches the disk, so two byte strings never name one
/// file.
pub(crate) async fn bad_name<Storage, User>(context: &CommandContext<Storage, User>, verb: &str) -> Reply
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    let session = context.session.lock().await;
    let (user, storage) = (session.user.clone(), Arc::clone(&session.storage));
    drop(session);
    let reason = "file name is not valid UTF-8";
    storage.refused((*user).as_ref(), verb, None, reason);
    Reply::new(ReplyCode::BadFileName, "File name not allowed: not valid UTF-8")
}

/// drift patch: the handler of [`Command::BadName`](crate::server::controlchan::Command::BadName).
#[derive(Debug)]
pub struct BadName {
    command: String,
}

impl BadName {
    pub fn new(command: String) -> Self {
        BadName { command }
    }
}

#[async_trait::async_trait]
impl<Storage, User> crate::server::controlchan::handler::CommandHandler<Storage, User> for BadName
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument(skip_all)]
    async fn handle(&self, context: CommandContext<Storage, User>) -> Result<Reply, crate::server::controlchan::error::ControlChanError> {
        Ok(bad_name(&context, &self.command).await)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_chmod;

    #[test]
    fn chmod_arguments() {
        assert_eq!(parse_chmod("644 a b"), Some((0o644, "a b")));
        assert_eq!(parse_chmod("0755 d"), Some((0o755, "d")));
        assert_eq!(parse_chmod("4755 d"), Some((0o4755, "d")));
        assert_eq!(parse_chmod("8 x"), None);
        assert_eq!(parse_chmod("12345 x"), None);
        assert_eq!(parse_chmod("644"), None);
        assert_eq!(parse_chmod("rw x"), None);
    }
}
