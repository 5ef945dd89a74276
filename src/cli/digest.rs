//! `drift digest`: one BLAKE3 over a whole tree.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
#[command(after_help = "The digest covers every path below DIR (sorted), its type, and for files \
their size and content hash, for symlinks their target. Times, owners and modes are \
left out. Two trees with the same digest hold the same names and bytes.")]
pub struct DigestArgs {
    /// Directory to digest.
    pub dir: PathBuf,
    /// Print a JSON object with the digest and every entry's detail.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DigestArgs) -> anyhow::Result<ExitCode> {
    let d = drift_fs::digest::digest_tree(&args.dir).with_context(|| format!("digesting {}", args.dir.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &d)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", d.digest)?;
    }
    Ok(ExitCode::SUCCESS)
}
