//! `drift journal`: inspect, verify, pack and replay a journal.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use drift_fs::blobs::BlobStore;
use drift_fs::journal::format_time;
use drift_fs::{Entry, Journal};

#[derive(Debug, clap::Args)]
pub struct JournalArg {
    /// Journal file written by `drift mount` or `drift node`.
    #[arg(long, value_name = "FILE")]
    pub journal: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum JournalCmd {
    /// List entries, oldest first.
    #[command(after_help = "With --json, one object per line: \
{\"seq\":N,\"time\":\"RFC 3339\",\"op\":\"write|mkdir|rmdir|unlink|rename|attr\",\"path\":\"/a/b\"} \
plus \"to\" for rename, \"size\" and \"blake3\" (64 hex) for write, \"mode\" (a number) where it \
applies and \"mtime\" (RFC 3339) for attr entries that set it.")]
    List {
        #[command(flatten)]
        j: JournalArg,
        /// Only entries after this seq (exclusive).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one entry (JSON).
    Show {
        #[command(flatten)]
        j: JournalArg,
        /// The entry's seq.
        seq: u64,
    },
    /// Counts: entries, seq range, entries per op, bytes written.
    Stats {
        #[command(flatten)]
        j: JournalArg,
        #[arg(long)]
        json: bool,
    },
    /// Check a backing tree against the journal; exits 3 if they differ.
    #[command(after_help = "Reports every divergence: files or directories the journal says exist \
but the tree lacks, content that differs from the last write entry, and entries in the \
tree that were never journaled. Exit status: 0 when the tree matches, 3 when it does \
not, 1 on error.")]
    Verify {
        #[command(flatten)]
        j: JournalArg,
        /// The backing directory the journal describes.
        #[arg(long, value_name = "DIR")]
        backing: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Copy the content the journal names into a content-addressed store.
    #[command(after_help = "For every file the journal says exists, copies the backing file into \
STORE as STORE/ab/abcdef... (its BLAKE3), if its content still matches the journal. \
Files changed outside the journal are reported and skipped.")]
    Pack {
        #[command(flatten)]
        j: JournalArg,
        /// The backing directory holding the content.
        #[arg(long, value_name = "DIR")]
        backing: PathBuf,
        /// Blob store directory (created if missing).
        #[arg(long, value_name = "STORE")]
        blobs: PathBuf,
    },
    /// Apply journal entries, in order, onto a directory.
    #[command(after_help = "Idempotent: the destination remembers (in an extended attribute, \
user.drift.replayed) which journal was replayed onto it and up to which seq, so running the \
same replay again, or again after an interruption, continues where the last one stopped. \
A destination that holds a replay of a different journal is refused (exit 1, nothing \
changed): two journals' trees cannot be mixed. Writes whose content a later entry in the range replaces or deletes are skipped. A needed \
blob that is missing or corrupt stops the replay with an error naming the entry; nothing of \
that entry is applied. The destination belongs to the replay: do not change it by hand.")]
    Replay {
        #[command(flatten)]
        j: JournalArg,
        /// Blob store made by `drift journal pack`.
        #[arg(long, value_name = "STORE")]
        blobs: PathBuf,
        /// Directory to apply the entries onto (created if missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// First seq to apply (inclusive).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last seq to apply (inclusive); default: the end.
        #[arg(long)]
        until: Option<u64>,
    },
}

fn open(j: &JournalArg) -> anyhow::Result<Journal> {
    Journal::open(&j.journal).context("cannot open journal")
}

fn print_entry(out: &mut impl Write, e: &Entry, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, e)?;
        return writeln!(out);
    }
    let mut detail = String::new();
    if let Some(to) = &e.to {
        detail.push_str(&format!(" -> {to}"));
    }
    if let Some(size) = e.size {
        detail.push_str(&format!("  {size} bytes"));
    }
    if let Some(h) = &e.blake3 {
        detail.push_str(&format!("  blake3 {}", &h[..16]));
    }
    if let Some(m) = e.mode {
        detail.push_str(&format!("  mode {m:o}"));
    }
    if let Some(t) = e.mtime {
        detail.push_str(&format!("  mtime {}", format_time(t)));
    }
    writeln!(out, "{:>8}  {}  {:<6}  {}{}", e.seq, format_time(e.time), e.op.as_str(), e.path, detail)
}

pub fn run(cmd: JournalCmd) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        JournalCmd::List { j, since, json } => {
            let journal = open(&j)?;
            // Page through so a huge journal streams instead of loading whole.
            let mut after = since;
            loop {
                let page = journal.list(after, Some(10_000))?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    print_entry(&mut out, e, json)?;
                }
            }
        }
        JournalCmd::Show { j, seq } => {
            let journal = open(&j)?;
            match journal.get(seq)? {
                Some(e) => print_entry(&mut out, &e, true)?,
                None => bail!("no entry with seq {seq} in {} (last seq is {})", j.journal.display(), journal.last_seq()),
            }
        }
        JournalCmd::Stats { j, json } => {
            let s = open(&j)?.stats()?;
            if json {
                serde_json::to_writer(&mut out, &s)?;
                writeln!(out)?;
            } else {
                writeln!(out, "entries:       {}", s.entries)?;
                if let (Some(a), Some(b)) = (s.first_seq, s.last_seq) {
                    writeln!(out, "seq:           {a}..={b}")?;
                }
                if let (Some(a), Some(b)) = (s.first_time, s.last_time) {
                    writeln!(out, "time:          {} .. {}", format_time(a), format_time(b))?;
                }
                for (op, n) in &s.by_op {
                    writeln!(out, "{:<14} {n}", format!("{op}:"))?;
                }
                writeln!(out, "bytes written: {}", s.bytes_written)?;
            }
        }
        JournalCmd::Verify { j, backing, json } => {
            let journal = open(&j)?;
            if !backing.is_dir() {
                bail!("backing directory {} does not exist or is not a directory", backing.display());
            }
            let divs = drift_fs::verify::verify(&journal, &backing)?;
            for d in &divs {
                if json {
                    serde_json::to_writer(&mut out, d)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{d}")?;
                }
            }
            if divs.is_empty() {
                if !json {
                    writeln!(out, "ok: {} matches the journal ({} entries)", backing.display(), journal.last_seq())?;
                }
            } else {
                eprintln!("drift: {} divergence(s) between {} and the journal", divs.len(), backing.display());
                return Ok(ExitCode::from(super::EXIT_DIVERGED));
            }
        }
        JournalCmd::Pack { j, backing, blobs } => {
            let journal = open(&j)?;
            if !backing.is_dir() {
                bail!("backing directory {} does not exist or is not a directory", backing.display());
            }
            let store = BlobStore::open(&blobs)?;
            let r = drift_fs::replay::pack(&journal, &backing, &store)?;
            for p in &r.changed {
                eprintln!("drift: {p}: content differs from its journal entry; not packed");
            }
            for p in &r.missing {
                eprintln!("drift: {p}: missing from {}; not packed", backing.display());
            }
            writeln!(
                out,
                "packed {} blob(s), {} bytes; {} already present; {} changed, {} missing",
                r.packed, r.bytes, r.present, r.changed.len(), r.missing.len()
            )?;
        }
        JournalCmd::Replay { j, blobs, to, from, until } => {
            let journal = open(&j)?;
            let store = BlobStore::existing(&blobs).context("cannot open blob store")?;
            if let Some(u) = until {
                if u < from {
                    bail!("--until {u} is before --from {from}");
                }
            }
            std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            let r = drift_fs::replay::replay(&journal, &store, &to, from, until)?;
            writeln!(
                out,
                "applied {} entr{} ({} superseded write(s) skipped, {} applied by an earlier replay){}",
                r.applied,
                if r.applied == 1 { "y" } else { "ies" },
                r.superseded,
                r.already,
                r.last_seq.map(|s| format!("; now at seq {s}")).unwrap_or_default()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
