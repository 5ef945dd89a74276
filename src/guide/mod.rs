//! The guide point: stores the history, grants the primary's lease,
//! detects failures, chooses and promotes targets, forwards state to
//! backups, and announces the primary. See `docs/cluster-protocol.md`.
