//! `drift node` and `drift user`: the command-line edge of the node.
//! Raw clap arguments are turned into typed values here; errors become
//! `anyhow` with context only at this layer.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::config::NodeConfig;
use super::users::{self, PermSet, User, Users};

const NODE_LONG_ABOUT: &str = "\
Runs a service node in the foreground: mounts drift-fs over the backing \
directory (every change is journaled), serves FTP from the mount with the \
users and service settings of the initial state, and stops cleanly \
(stop the FTP server, unmount, exit 0) on SIGINT or SIGTERM. SIGHUP \
reloads the users and service files without dropping sessions; an invalid \
file is rejected with a logged error and the previous state stays in force.

The node configuration (TOML):

  [storage]
  backing = \"/srv/drift/backing\"     # the real files
  mountpoint = \"/srv/drift/mnt\"      # where drift-fs is mounted and served from
  journal = \"/srv/drift/journal.db\"  # outside both directories
  sync = \"normal\"                    # or \"full\": also survive a machine crash
  fsync_uploads = false              # extra fsync per upload (sync=full fsyncs anyway)
  commit_timeout_secs = 30           # max wait for an upload's journal entry
  # fuse = false                     # serve `backing` directly: NO journal,
  #                                  # for benchmarks and debugging only

  [state]
  users = \"users.toml\"               # relative to this file
  service = \"service.toml\"

  [log]                              # the transfer log: one line per login,
  transfers = \"stderr\"               # transfer and refusal; \"off\" or a file
  format = \"text\"                    # or \"json\"

  [admin]                            # what `drift user unlock` talks to
  socket = \"node.admin.sock\"         # default: <config stem>.admin.sock here

The users file ([[user]] name, password_hash, home, permissions, allow_from) \
is managed with `drift user`. The service file sets listen, greeting, \
passive_ports, idle_timeout_secs, [sessions], [filter], [login] and [ftps]. \
Both formats, the transfer log's lines and every default are described in \
docs/node.md, with examples in examples/node/. SIGHUP also lifts all \
failed-login lockouts and reopens a transfer log file (after rotation).";

#[derive(Debug, clap::Args)]
#[command(after_long_help = NODE_LONG_ABOUT)]
pub struct NodeArgs {
    /// Node configuration file (TOML); its format is below (--help) and in docs/node.md.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Which users file a `drift user` command edits.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct UsersFileArg {
    /// The users file to read or edit (created by `user add` if missing).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// A node configuration file; its `[state] users` names the users file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl UsersFileArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match (&self.users, &self.config) {
            (Some(u), _) => Ok(u.clone()),
            (None, Some(c)) => Ok(NodeConfig::load(c)?.users_file),
            (None, None) => bail!("give --users FILE or --config FILE"),
        }
    }
}

/// Manage the users file (initial state) of a node. Passwords are read
/// from a prompt (or one line of standard input when it is not a
/// terminal), never from the command line, and stored as argon2 hashes.
/// Send SIGHUP to a running node to apply changes.
#[derive(Debug, clap::Subcommand)]
pub enum UserCmd {
    /// Add a user; asks for the password.
    #[command(
        after_help = "Example:\n  printf '%s\\n' \"$PW\" | drift user add alice --users users.toml --home /alice --perm list,read,write"
    )]
    Add {
        /// User name: letters, digits, '.', '_' and '-'.
        name: String,
        /// Home directory inside the served root, e.g. /alice (created at node start).
        #[arg(long, value_name = "DIR")]
        home: String,
        /// Comma-separated permissions: list, read, write, delete, mkdir, rename.
        #[arg(long, value_name = "PERMS")]
        perm: String,
        /// Comma-separated client addresses or networks allowed to log in
        /// (default: anywhere), e.g. 10.0.0.0/8,192.168.1.7.
        #[arg(long, value_name = "NETS")]
        allow_from: Option<String>,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// Change a user's password; asks for the new one.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// Delete a user (their files stay).
    Del {
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// List users: name, home, permissions, allowed addresses.
    List {
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// Lift a user's failed-login lockout on a running node, at once and
    /// without touching any session (SIGHUP to the node lifts all
    /// lockouts).
    #[command(after_help = "Example:\n  drift user unlock alice --config /etc/drift/node.toml")]
    Unlock {
        name: String,
        #[command(flatten)]
        node: NodeSocketArg,
    },
}

/// How `drift user unlock` reaches the running node.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct NodeSocketArg {
    /// The node's configuration file; its `[admin] socket` (default
    /// `<config stem>.admin.sock` beside it) is the node's admin socket.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The node's admin socket itself.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// The shortest password `drift user add` and `passwd` accept unless
/// `--min-length` says otherwise.
pub const DEFAULT_MIN_PASSWORD_LEN: usize = 10;

/// Password policy for `add` and `passwd`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PasswordArgs {
    /// Refuse passwords shorter than this many characters.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_PASSWORD_LEN, env = "DRIFT_MIN_PASSWORD_LENGTH")]
    pub min_length: usize,
}

pub fn run_node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let cfg = NodeConfig::load(&args.config)?;
    super::run(cfg).context("drift node")?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_user(cmd: UserCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCmd::Add {
            name,
            home,
            perm,
            allow_from,
            password: policy,
            file,
        } => {
            let path = file.path()?;
            // Check everything before asking for a password.
            users::validate_name(&name)?;
            let home = users::normalize_home(&home)?;
            let perms = PermSet::parse_list(&perm)?;
            let allow_from = match allow_from {
                None => None,
                Some(list) => {
                    let nets = list
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(users::parse_net)
                        .collect::<Result<Vec<_>, _>>()?;
                    if nets.is_empty() {
                        bail!("--allow-from is empty; leave it out to allow any address");
                    }
                    Some(nets)
                }
            };
            let mut table = Users::load_or_empty(&path)?;
            if table.get(&name).is_some() {
                bail!("user {name:?} already exists in {}", path.display());
            }
            let password = read_password(&name, policy)?;
            table.add(User {
                name: name.clone(),
                password_hash: users::hash_password(&password)?,
                home: home.clone(),
                perms,
                allow_from,
            })?;
            table.save(&path)?;
            eprintln!("added user {name} (home {home}, permissions {perms}) to {}", path.display());
        }
        UserCmd::Passwd {
            name,
            password: policy,
            file,
        } => {
            let path = file.path()?;
            let mut table = Users::load(&path)?;
            if table.get(&name).is_none() {
                bail!("no user {name:?} in {}", path.display());
            }
            let password = read_password(&name, policy)?;
            table.set_password_hash(&name, users::hash_password(&password)?)?;
            table.save(&path)?;
            eprintln!("changed the password of {name} in {}", path.display());
        }
        UserCmd::Del { name, file } => {
            let path = file.path()?;
            let mut table = Users::load(&path)?;
            table.remove(&name).with_context(|| format!("in {}", path.display()))?;
            table.save(&path)?;
            eprintln!("deleted user {name} from {} (their files are kept)", path.display());
        }
        UserCmd::List { file } => {
            let path = file.path()?;
            print_users(&Users::load(&path)?, &path)?;
        }
        UserCmd::Unlock { name, node } => {
            users::validate_name(&name)?;
            let socket = match (node.socket, node.config) {
                (Some(s), _) => s,
                (None, Some(c)) => {
                    let cfg = NodeConfig::load(&c)?;
                    cfg.admin_socket
                        .with_context(|| format!("{} sets [admin] socket = \"off\": the node cannot be reached; send it SIGHUP to lift all lockouts", c.display()))?
                }
                (None, None) => bail!("give --config FILE or --socket PATH"),
            };
            match admin_unlock(&socket, &name)? {
                0 => eprintln!("{name} was not locked out"),
                n => eprintln!("unlocked {name} ({n} lockout{} lifted)", if n == 1 { "" } else { "s" }),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks a running node, through its admin socket, to lift user `name`'s
/// lockouts; returns how many were lifted. The protocol (one request
/// line, one reply line) is described in `admin.rs`, the server side.
fn admin_unlock(socket: &Path, name: &str) -> anyhow::Result<usize> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!("cannot reach the node's admin socket {} (is the node running with this node.toml?)", socket.display())
    })?;
    let timeout = Some(std::time::Duration::from_secs(10));
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    s.write_all(format!("unlock {name}\n").as_bytes())
        .with_context(|| format!("writing to {}", socket.display()))?;
    let mut reply = String::new();
    std::io::BufReader::new(s.take(4096))
        .read_line(&mut reply)
        .with_context(|| format!("reading the answer from {}", socket.display()))?;
    let reply = reply.trim_end();
    if let Some(n) = reply.strip_prefix("ok ").and_then(|n| n.parse().ok()) {
        Ok(n)
    } else if let Some(msg) = reply.strip_prefix("error ") {
        bail!("the node refused: {msg}")
    } else {
        bail!("the node sent an unexpected answer {reply:?} on {}", socket.display())
    }
}

fn print_users(table: &Users, path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if table.is_empty() {
        eprintln!("no users in {}", path.display());
        return Ok(());
    }
    writeln!(out, "{:<20} {:<24} {:<36} ALLOW_FROM", "NAME", "HOME", "PERMISSIONS")?;
    for u in table.iter() {
        let allow = match &u.allow_from {
            None => "any".to_owned(),
            Some(n) => n.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        };
        writeln!(out, "{:<20} {:<24} {:<36} {allow}", u.name, u.home, u.perms.to_string())?;
    }
    Ok(())
}

/// Reads a password: twice from a terminal prompt, or one line from
/// standard input when it is not a terminal (scripts, tests). Refuses one
/// shorter than `policy.min_length` characters.
fn read_password(name: &str, policy: PasswordArgs) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {name}: ")).context("reading the password")?;
        let again = rpassword::prompt_password("Repeat it: ").context("reading the password")?;
        if first != again {
            bail!("the passwords differ; nothing changed");
        }
        first
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).context("reading the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        bail!("empty password; nothing changed");
    }
    let len = password.chars().count();
    if len < policy.min_length {
        bail!(
            "the password has {len} characters, fewer than the minimum of {} (--min-length or DRIFT_MIN_PASSWORD_LENGTH); nothing changed",
            policy.min_length
        );
    }
    Ok(password)
}
