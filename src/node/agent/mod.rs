//! The node agent: a node's link to the guide point (heartbeats, lease,
//! shipping as primary, applying as backup, quarantine). See
//! `docs/cluster-protocol.md`.
