//! Command-line interface. Each command family has its own module; this
//! one holds the top-level parser, logging set-up and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod digest;
pub mod journal;
pub mod man;
pub mod mount;

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
    /// Write the man pages for drift and every subcommand into a directory.
    #[command(hide = true)]
    Man(man::ManArgs),
}

/// Default log filter: libunftp logs whole session structs at info level.
const DEFAULT_LOG: &str = "info,libunftp=warn";

/// Sets up `tracing` on standard error. `--log` beats `DRIFT_LOG`, which
/// beats the default `info`.
pub fn init_logging(flag: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("DRIFT_LOG").ok())
        .unwrap_or_else(|| DEFAULT_LOG.to_owned());
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

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Mount(args) => mount::run(args),
        Command::Journal(cmd) => journal::run(cmd),
        Command::Digest(args) => digest::run(args),
        Command::Node(args) => crate::node::cli::run_node(args),
        Command::User(cmd) => crate::node::cli::run_user(cmd),
        Command::Xfer(cmd) => crate::xfer::cli::run(cmd),
        Command::Man(args) => man::run(args),
    }
}
