//! The cluster's gate on changes (see `node::agent::gate`): a change
//! starts only on an unfenced, undrained primary, and its success reply
//! waits, with `ack = "guide"`, until the guide stored it.

use std::future::Future;

use unftp_core::storage::{Error, ErrorKind, Result};

use super::DriftStorage;

impl DriftStorage {
    /// Refuses a change (450 with the reason) unless the gate allows it;
    /// standalone nodes have no gate.
    pub(super) fn gate_change(&self, command: &str) -> Result<()> {
        let Some(gate) = &self.ctx.gate else { return Ok(()) };
        gate.may_change().map_err(|why| {
            tracing::info!(command, "refused: {why}");
            Error::with_reply(ErrorKind::TransientFileNotAvailable, Some(450), why.to_string())
        })
    }

    /// After a change journaled at `seq` (or, if `None`, at the journal's
    /// position now): waits until it may be acknowledged; 451 if not.
    pub(super) async fn acknowledge(&self, seq: Option<u64>) -> Result<()> {
        let Some(gate) = &self.ctx.gate else { return Ok(()) };
        let seq = match (seq, &self.ctx.commit) {
            (Some(s), _) => s,
            (None, Some(c)) => c.mark(),
            (None, None) => return Ok(()),
        };
        gate.wait_stored(seq).await.map_err(|why| {
            tracing::error!(seq, "change made but not acknowledged: {why}");
            Error::with_reply(ErrorKind::LocalError, Some(451), format!("Not acknowledged: {why}"))
        })
    }

    /// A change other than an upload: gate, operation, acknowledgement.
    pub(super) async fn change<T>(&self, command: &str, op: impl Future<Output = Result<T>>) -> Result<T> {
        self.gate_change(command)?;
        let v = op.await?;
        self.acknowledge(None).await?;
        Ok(v)
    }
}
