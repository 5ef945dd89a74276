//! The `HELP` command
//
// A HELP request asks for human-readable information from the server. The server may accept this request with code 211 or 214, or reject it with code 502.
//
// A HELP request may include a parameter. The meaning of the parameter is defined by the server. Some servers interpret the parameter as an FTP verb,
// and respond by briefly explaining the syntax of the verb.

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

#[derive(Debug)]
pub struct Help;

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Help
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument(skip_all)]
    async fn handle(&self, _args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        // drift patch: the commands this server recognizes, as vsftpd and
        // ProFTPD list them (no library or type names).
        const COMMANDS: &[&str] = &[
            "ABOR", "ACCT", "ALLO", "APPE", "AUTH", "CCC", "CDUP", "CWD", "DELE", "EPSV", "FEAT", "HASH", "HELP", "LIST", "MDTM", "MFMT", "MKD", "MLSD",
            "MLST", "MODE", "NLST", "NOOP", "OPTS", "PASS", "PASV", "PBSZ", "PORT", "PROT", "PWD", "QUIT", "REST", "RETR", "RMD", "RNFR", "RNTO",
            "SITE", "SIZE", "STAT", "STOR", "STOU", "STRU", "SYST", "TYPE", "USER", "XCWD", "XMKD", "XPWD", "XRMD",
        ];
        let mut text: Vec<String> = vec!["The following commands are recognized:".to_string()];
        text.extend(COMMANDS.chunks(12).map(|row| format!(" {}", row.join(" "))));
        text.push("SITE HELP lists the SITE commands.".to_string());
        text.push("Help OK.".to_string());
        Ok(Reply::new_multiline(ReplyCode::HelpMessage, text))
    }
}
