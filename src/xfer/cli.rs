//! `drift xfer`: keygen, send, recv. Parses flags into the library's
//! configs, drives a tokio runtime, draws progress and prints summaries.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::channel::{TcpAcceptor, TcpConnector};
use super::hook::CommandHook;
use super::key::ClusterKey;
use super::recv::{Receiver, RecvConfig};
use super::send::{self, Progress, SendConfig};

#[derive(Debug, Subcommand)]
pub enum XferCmd {
    /// Generate a cluster key file (32 random bytes, mode 0600).
    Keygen {
        /// Where to write the key. An existing file is never overwritten.
        path: PathBuf,
    },
    /// Send files and directory trees to a receiver.
    Send(SendArgs),
    /// Receive files into a directory.
    Recv(RecvArgs),
}

#[derive(Debug, Args)]
#[command(long_about = "Send files and directory trees to a `drift xfer recv`.\n\n\
Files are cut into frames that travel out of order over several TCP connections; every frame carries a keyed BLAKE3 MAC and a sequence number, every file is checked against its BLAKE3 before it appears under its final name, and an interrupted transfer resumes where it stopped. Payload is authenticated, not encrypted.\n\n\
Each PATH arrives under its base name in the receiver's directory (like `cp -r PATH... DIR`); directories are sent recursively with their modes, symlinks as symlinks. Exit status: 0 when everything was delivered, 1 otherwise (every failed entry is named on standard error).")]
pub struct SendArgs {
    /// Receiver address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Cluster key file (32 bytes, from `drift xfer keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Number of TCP connections the frames are spread over.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub streams: usize,
    /// Data frame size: a power of two from 1K to 64M. Suffixes K, M, G are
    /// binary (1M = 1048576 bytes). Larger frames cost less per byte; smaller
    /// ones lose less when a connection dies.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub frame_size: u64,
    /// Files transferred at once (each with its frames spread over all streams).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub files: usize,
    /// Files up to this size are batched, many per frame, with one round
    /// trip per batch instead of three per file (same suffixes as
    /// --frame-size; capped at the frame size).
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub small: u64,
    /// Limit the payload rate, in bytes per second (same suffixes, e.g. 100M).
    /// Default: no limit.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub max_rate: Option<u64>,
    /// Seconds to wait for the receiver's handshake on each connection.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
    /// Copy every frame through the sender's memory instead of handing
    /// large frames to the kernel with sendfile(2). sendfile already falls
    /// back by itself where a source filesystem cannot do it; this is for
    /// comparisons and for troubleshooting.
    #[arg(long)]
    pub no_sendfile: bool,
    /// Print the summary as one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// Files and directories to send.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(long_about = "Receive files from `drift xfer send` into a directory.\n\n\
Prints `listening on ADDR` on standard output once ready (useful with port 0), then one summary line per finished session. Incomplete files are kept in the state directory and resumed when the same file is offered again. Connections that fail the key handshake are logged and dropped; they never end the receiver.")]
pub struct RecvArgs {
    /// Address to listen on, e.g. 0.0.0.0:7070, or 127.0.0.1:0 for any free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Cluster key file (32 bytes, from `drift xfer keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Directory files land in (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Where partial files and resume state live. Must be on the same
    /// filesystem as --dir. Default: DIR/.drift-xfer (removed when empty).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Exit after the first session ends: status 0 if the sender finished,
    /// 1 if the session failed.
    #[arg(long)]
    pub once: bool,
    /// Program run on every complete, verified file before it is committed:
    /// `PROGRAM STAGED_PATH NAME` (also DRIFT_XFER_NAME, DRIFT_XFER_SIZE,
    /// DRIFT_XFER_BLAKE3 in its environment). Non-zero exit refuses the file;
    /// its first output line is reported to the sender.
    #[arg(long, value_name = "PROGRAM")]
    pub inspect: Option<PathBuf>,
    /// Seconds the --inspect program may run per file before the file is refused.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub inspect_timeout: u64,
    /// fsync every file before giving it its final name, and its directory after (durable, slower).
    #[arg(long)]
    pub fsync: bool,
    /// Seconds a new connection has to complete the key handshake.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

/// Parses `1048576`, `64K`, `1M`, `1MiB`, `2G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 4096, 64K, 1M or 2G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

pub fn run(cmd: XferCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        XferCmd::Keygen { path } => {
            ClusterKey::generate()
                .write_new(&path)
                .with_context(|| format!("writing key file {}", path.display()))?;
            println!("wrote a new cluster key to {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        XferCmd::Send(args) => runtime()?.block_on(run_send(args)),
        XferCmd::Recv(args) => runtime()?.block_on(run_recv(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn run_send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let key = ClusterKey::load(&args.key).context("loading the cluster key")?;
    let mut cfg = SendConfig::new(key);
    cfg.streams = args.streams;
    cfg.frame_size = args.frame_size;
    cfg.files_in_flight = args.files;
    cfg.small_file = args.small.min(args.frame_size);
    cfg.max_rate = args.max_rate;
    cfg.sendfile = !args.no_sendfile;
    cfg.handshake_timeout = Duration::from_secs(args.timeout);
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(progress.clone());
    let connector = Arc::new(TcpConnector { addr: args.to.clone() });
    let result = send::send(&args.paths, cfg, connector, progress).await;
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    let report = result.with_context(|| format!("sending to {}", args.to))?;
    for (name, why) in &report.failures {
        eprintln!("drift: not delivered: {name}: {why}");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "sent {} files ({} entries), {} in {:.2} s, {}/s over {} streams{}",
            report.files,
            report.entries,
            human(report.bytes),
            report.seconds,
            human((report.bytes as f64 / report.seconds.max(1e-9)) as u64),
            report.streams,
            if report.held_bytes > 0 {
                format!(" ({} already held by the receiver)", human(report.held_bytes))
            } else {
                String::new()
            }
        )?;
    }
    if !report.failures.is_empty() {
        bail!("{} of {} entries were not delivered", report.failures.len(), report.failures.len() as u64 + report.entries);
    }
    Ok(ExitCode::SUCCESS)
}

type Bar = (indicatif::ProgressBar, tokio::task::JoinHandle<()>);

/// A byte progress bar on a terminal; nothing when stderr is not one.
fn progress_bar(progress: Arc<Progress>) -> Option<Bar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .ok()?;
    bar.set_style(style);
    let b = bar.clone();
    let task = tokio::spawn(async move {
        // Bounded by the transfer: aborted when send returns.
        loop {
            b.set_length(progress.total_bytes.load(Ordering::Relaxed));
            b.set_position(progress.done_bytes.load(Ordering::Relaxed));
            b.set_message(format!(
                "{}/{} entries",
                progress.done_entries.load(Ordering::Relaxed),
                progress.total_entries.load(Ordering::Relaxed)
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Some((bar, task))
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

async fn run_recv(args: RecvArgs) -> anyhow::Result<ExitCode> {
    let key = ClusterKey::load(&args.key).context("loading the cluster key")?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let (state_dir, remove_empty) = match &args.state_dir {
        Some(d) => (d.clone(), false),
        None => (args.dir.join(".drift-xfer"), true),
    };
    let hook = args.inspect.as_ref().map(|p| {
        Arc::new(CommandHook {
            program: p.clone(),
            timeout: Duration::from_secs(args.inspect_timeout),
        }) as Arc<dyn super::hook::CommitHook>
    });
    let cfg = RecvConfig {
        dir: args.dir.clone(),
        state_dir,
        key,
        hook,
        fsync: args.fsync,
        handshake_timeout: Duration::from_secs(args.timeout),
        remove_empty_state_dir: remove_empty,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the listening address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    let (receiver, mut reports) = Receiver::new(cfg);
    let acceptor = Arc::new(TcpAcceptor { listener });
    let serve = receiver.serve(acceptor);
    tokio::pin!(serve);
    loop {
        tokio::select! {
            r = &mut serve => {
                r.context("receiver stopped")?;
                return Ok(ExitCode::SUCCESS);
            }
            report = reports.recv() => {
                let Some(r) = report else { return Ok(ExitCode::SUCCESS) };
                let secs = r.elapsed.as_secs_f64();
                match &r.error {
                    None => {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "received {} entries, {} in {:.2} s, {}/s from {}",
                            r.entries, human(r.bytes), secs,
                            human((r.bytes as f64 / secs.max(1e-9)) as u64), r.peer)?;
                        out.flush()?;
                    }
                    Some(e) => eprintln!("drift: session from {} failed: {e}", r.peer),
                }
                if args.once {
                    return Ok(if r.error.is_none() { ExitCode::SUCCESS } else { ExitCode::from(crate::cli::EXIT_FAILURE) });
                }
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; partial files are kept for resume");
                return Ok(ExitCode::from(130));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("1.5M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
    }
}
