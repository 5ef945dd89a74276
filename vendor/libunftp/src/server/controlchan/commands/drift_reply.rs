//! drift patch: the reply for a storage error, with the backend's own text
//! when it gave one ([`unftp_core::storage::ClientReply`]), and sent from
//! the command's task instead of through the control loop's generic
//! mapping (which only knows the error kind).

use crate::server::{
    chancomms::ControlChanMsg,
    controlchan::{Reply, ReplyCode},
};
use tokio::sync::mpsc::Sender;
use unftp_core::storage::{Error, ErrorKind};

/// The reply a client gets for `err`.
pub(crate) fn storage_reply(err: &Error) -> Reply {
    let (code, text) = match err.kind() {
        ErrorKind::ExceededStorageAllocationError => (ReplyCode::ExceededStorageAllocation, "Exceeded storage allocation"),
        ErrorKind::FileNameNotAllowedError => (ReplyCode::BadFileName, "File name not allowed"),
        ErrorKind::InsufficientStorageSpaceError => (ReplyCode::OutOfSpace, "Insufficient storage space"),
        ErrorKind::LocalError => (ReplyCode::LocalError, "Local error"),
        ErrorKind::PageTypeUnknown => (ReplyCode::PageTypeUnknown, "Page type unknown"),
        ErrorKind::TransientFileNotAvailable => (ReplyCode::TransientFileError, "File not available"),
        ErrorKind::PermanentFileNotAvailable => (ReplyCode::FileError, "File not found"),
        ErrorKind::PermanentDirectoryNotAvailable => (ReplyCode::FileError, "Directory not found"),
        ErrorKind::PermanentDirectoryNotEmpty => (ReplyCode::FileError, "Directory not empty"),
        ErrorKind::PermissionDenied => (ReplyCode::FileError, "Permission denied"),
        ErrorKind::CommandNotImplemented => (ReplyCode::CommandNotImplemented, "Command not implemented"),
        ErrorKind::ConnectionClosed => (ReplyCode::ConnectionClosed, "Connection closed"),
    };
    match err.client_reply() {
        Some(r) => Reply::new(r.code.and_then(reply_code).unwrap_or(code), &r.text),
        None => Reply::new(code, text),
    }
}

/// The codes a backend may ask for.
fn reply_code(code: u16) -> Option<ReplyCode> {
    Some(match code {
        450 => ReplyCode::TransientFileError,
        451 => ReplyCode::LocalError,
        452 => ReplyCode::OutOfSpace,
        501 => ReplyCode::ParameterSyntaxError,
        502 => ReplyCode::CommandNotImplemented,
        504 => ReplyCode::CommandNotImplementedForParameter,
        550 => ReplyCode::FileError,
        551 => ReplyCode::PageTypeUnknown,
        552 => ReplyCode::ExceededStorageAllocation,
        553 => ReplyCode::BadFileName,
        554 => ReplyCode::TransactionFailed,
        _ => return None,
    })
}

/// Sends `reply` as the answer of a command whose work ran on its own task.
pub(crate) async fn send(tx: &Sender<ControlChanMsg>, logger: &slog::Logger, command: &str, reply: Reply) {
    if let Err(err) = tx.send(ControlChanMsg::CommandChannelReply(reply)).await {
        slog::warn!(logger, "{}: could not send the reply to the control loop: {}", command, err);
    }
}
