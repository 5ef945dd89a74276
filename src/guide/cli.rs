//! `drift guide`, `drift status` and `drift migrate`: argument parsing
//! and the operator side of a control link. Errors get their context here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use super::config::GuideConfig;
use crate::cluster::link::{self, LinkReader, LinkWriter};
use crate::cluster::msg::{Down, Hello, PeerKind, Up};
use crate::xfer::ClusterKey;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `drift migrate` waits for the new primary to serve.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
#[command(after_help = "Runs in the foreground until SIGINT or SIGTERM. See docs/guide.md for the \
configuration keys and what the guide stores in its data directory.")]
pub struct GuideArgs {
    /// The guide's configuration file (guide.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Which guide an operator command talks to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The guide's cluster port, host:port (with --key).
    #[arg(long, value_name = "ADDR", requires = "key")]
    pub guide: Option<String>,
    /// The cluster key file (with --guide).
    #[arg(long, value_name = "FILE", requires = "guide")]
    pub key: Option<PathBuf>,
    /// Take the address and key from a guide's config file [default: ./guide.toml].
    #[arg(long, value_name = "FILE", conflicts_with_all = ["guide", "key"])]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Without --json, prints a table: the epoch and primary, each node's role, \
applied seq, lag, heartbeat age and threat, the quarantines and the recent migrations. \
The JSON fields are documented in docs/guide.md.")]
pub struct StatusArgs {
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Drains the primary (it stops taking changes and ships everything), brings \
the target up to date, promotes it and demotes the old primary. Returns once the new primary \
serves; exits non-zero with the reason if the migration failed (the old primary then carries on).")]
pub struct MigrateArgs {
    /// The node to promote [default: the most up-to-date, least loaded, least threatened].
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,
    /// Why, for the migration history.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

pub fn run_guide(args: GuideArgs) -> anyhow::Result<ExitCode> {
    let cfg = GuideConfig::load(&args.config)?;
    runtime()?.block_on(super::server::run(cfg)).context("drift guide")?;
    Ok(ExitCode::SUCCESS)
}

fn resolve(t: &Target) -> anyhow::Result<(String, ClusterKey)> {
    if let (Some(addr), Some(key)) = (&t.guide, &t.key) {
        let key = ClusterKey::load(key).context("loading the cluster key")?;
        return Ok((addr.clone(), key));
    }
    let path = t.config.clone().unwrap_or_else(|| PathBuf::from("guide.toml"));
    if t.config.is_none() && !path.exists() {
        bail!("no guide given: pass --guide ADDR --key FILE, or --config guide.toml (no ./guide.toml here)");
    }
    let cfg = GuideConfig::load(&path)?;
    let key = ClusterKey::load(&cfg.key_file).context("loading the cluster key")?;
    Ok((cfg.dial_addr(), key))
}

async fn operator(addr: &str, key: &ClusterKey) -> anyhow::Result<(LinkReader, LinkWriter)> {
    let (r, mut w) = link::connect(addr, key, CONNECT_TIMEOUT)
        .await
        .with_context(|| format!("cannot talk to the guide at {addr}"))?;
    w.send(&Up::Hello(Hello { kind: PeerKind::Operator, node: None })).await?;
    Ok((r, w))
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (addr, key) = resolve(&args.target)?;
    let status = runtime()?.block_on(async {
        let (mut r, mut w) = operator(&addr, &key).await?;
        w.send(&Up::Status).await?;
        match r.recv_within::<Down>(CONNECT_TIMEOUT).await? {
            Down::StatusReply { status } => Ok::<_, anyhow::Error>(status),
            Down::Refused { reason } => bail!("the guide refused: {reason}"),
            _ => bail!("the guide answered something other than a status"),
        }
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{status}")?;
    } else {
        write!(out, "{}", super::status::table(&status))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let (addr, key) = resolve(&args.target)?;
    let (ok, message) = runtime()?.block_on(async {
        let (mut r, mut w) = operator(&addr, &key).await?;
        w.send(&Up::Migrate { to: args.to.clone(), reason: args.reason.clone() }).await?;
        match r.recv_within::<Down>(MIGRATE_TIMEOUT).await? {
            Down::MigrateReply { ok, message, .. } => Ok::<_, anyhow::Error>((ok, message)),
            Down::Refused { reason } => Ok((false, format!("the guide refused: {reason}"))),
            _ => bail!("the guide answered something other than a migration result"),
        }
    })?;
    if !ok {
        bail!("{message}");
    }
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}
