//! Command-line interface. Each command family has its own module; this
//! one holds the top-level parser, logging set-up and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod digest;
pub mod journal;
pub mod man;
pub mod mount;
pub mod proxy;

/// Exit status for a failed command (bad input, I/O error, ...).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a check that ran fine and found a divergence
/// (`journal verify`).
pub const EXIT_DIVERGED: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "drift",
    version,
    about = "Keeps an FTP service alive while it moves between machines",
    long_about = "drift serves FTP from a journaling filesystem, ships every completed \
change to a guide point, and moves the service to a backup node when the primary \
dies or is threatened, without interrupting transfers in flight.\n\n\
Logging goes to standard error; set DRIFT_LOG (e.g. `debug`, `drift_fs=trace`) \
or --log to change its level.",
    propagate_version = true
)]
pub struct Cli {
    /// Log filter, e.g. `info`, `debug`, `drift_fs=trace` (overrides DRIFT_LOG).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the journaling filesystem over a backing directory (foreground).
    Mount(mount::MountArgs),
    /// Inspect, verify, pack and replay a journal.
    #[command(subcommand)]
    Journal(journal::JournalCmd),
    /// Print one BLAKE3 digest of a whole directory tree.
    Digest(digest::DigestArgs),
    /// Run a service node: an FTP server on a journaled mount.
    Node(crate::node::cli::NodeArgs),
    /// Manage the users file (initial state) of a node.
    #[command(subcommand)]
    User(crate::node::cli::UserCmd),
    /// Fast authenticated file transfer (the private frame protocol).
    #[command(subcommand)]
    Xfer(crate::xfer::cli::XferCmd),
    /// Run the guide point: history, leases, failover, migration, announcements.
    Guide(crate::guide::cli::GuideArgs),
    /// Show the cluster: epoch, primary, nodes, quarantines, migrations.
    Status(crate::guide::cli::StatusArgs),
    /// Move the primary to another node (drain, catch up, promote).
    Migrate(crate::guide::cli::MigrateArgs),
    /// Run the proxy: one FTP address for clients, relayed to the current primary.
    Proxy(proxy::ProxyArgs),
    /// Write the man pages for drift and every subcommand into a directory.
    #[command(hide = true)]
    Man(man::ManArgs),
}

/// Default log filter. libunftp logs whole session structs (Rust `Debug`)
/// at info, and every refused command again at warn; the node logs each
/// refusal once itself (the transfer log), so only libunftp's errors show.
const DEFAULT_LOG: &str = "info,libunftp=warn,libunftp::server::controlchan::commands=error";

/// The filter used: `--log` beats `DRIFT_LOG`, which beats
/// [`DEFAULT_LOG`]. A filter that does not name libunftp gets the default's
/// libunftp directives appended, so `DRIFT_LOG=debug` shows drift's debug
/// lines without libunftp's struct dumps (name `libunftp=...` to see them).
pub fn log_filter(flag: Option<&str>, env: Option<&str>) -> String {
    match flag.or(env) {
        None => DEFAULT_LOG.to_owned(),
        Some(f) if f.contains("libunftp") => f.to_owned(),
        Some(f) => {
            let quiet = DEFAULT_LOG.split_once(',').map(|(_, rest)| rest).unwrap_or("");
            if f.trim().is_empty() {
                DEFAULT_LOG.to_owned()
            } else {
                format!("{f},{quiet}")
            }
        }
    }
}

/// Sets up `tracing` on standard error with [`log_filter`].
pub fn init_logging(flag: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let env = std::env::var("DRIFT_LOG").ok();
    let filter = log_filter(flag, env.as_deref());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|err| {
        eprintln!("drift: ignoring bad log filter {filter:?}: {err}");
        EnvFilter::new(DEFAULT_LOG)
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The one-line message for a failed command: the error and its causes,
/// joined by `: `, leaving out a cause whose text the message already
/// holds (error types that print their source would otherwise show an OS
/// error twice: `cannot read X: No such file (os error 2): No such file
/// (os error 2)`).
pub fn error_message(err: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Mount(args) => mount::run(args),
        Command::Journal(cmd) => journal::run(cmd),
        Command::Digest(args) => digest::run(args),
        Command::Node(args) => crate::node::cli::run_node(args),
        Command::User(cmd) => crate::node::cli::run_user(cmd),
        Command::Xfer(cmd) => crate::xfer::cli::run(cmd),
        Command::Guide(args) => crate::guide::cli::run_guide(args),
        Command::Status(args) => crate::guide::cli::run_status(args),
        Command::Migrate(args) => crate::guide::cli::run_migrate(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Man(args) => man::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_causes_already_in_the_message_are_not_repeated() {
        let os = std::io::Error::from_raw_os_error(libc::ENOENT);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read users file /x: {source}")]
        struct Read {
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Read { source: os }).context("drift node");
        let m = error_message(&e);
        assert_eq!(m, "drift node: cannot read users file /x: No such file or directory (os error 2)");
        let plain = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT)).context("opening /y");
        assert_eq!(error_message(&plain), "opening /y: No such file or directory (os error 2)");
    }

    #[test]
    fn log_filters_keep_libunftp_quiet_unless_named() {
        assert_eq!(log_filter(None, None), DEFAULT_LOG);
        assert_eq!(log_filter(Some("debug"), Some("trace")), "debug,libunftp=warn,libunftp::server::controlchan::commands=error");
        assert_eq!(log_filter(None, Some("info,libunftp=debug")), "info,libunftp=debug");
    }
}
