//! `drift proxy --config proxy.toml`: runs the proxy crate (`proxy/`,
//! `drift-proxy`) fed by a subscription to the guide. This module is the
//! glue to the cluster: the announcements become the proxy's view, logins
//! are checked against the users file the guide sends (with the service
//! file's address filter, session limits and lockout, by the node's own
//! code), and each backend session gets a proxy credential
//! ([`crate::cluster::proxy_cred`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use drift_proxy::config::ProxyConfig;
use drift_proxy::{Authority, Refusal, Slot, View};
use tokio::sync::watch;

use crate::cluster::proxy_cred;
use crate::cluster::subscriber::{self, Feeds, Initial};
use crate::node::auth::Lockout;
use crate::node::config::ServiceConfig;
use crate::node::limits::{ConnectRefusal, Sessions};
use crate::node::users::{validate_name, verify_password, Users};
use crate::xfer::ClusterKey;

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Runs in the foreground until SIGINT or SIGTERM. See docs/proxy.md for the \
configuration keys, what works now and what is not built yet."
)]
pub struct ProxyArgs {
    /// The proxy's configuration file (proxy.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Option<ProxyCmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ProxyCmd {
    /// List the proxy's live sessions and transfers (its active state).
    Status(ProxyStatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProxyStatusArgs {
    /// The proxy's configuration file (names its state_db).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print one JSON object: {"sessions": [...], "transfers": [...]}.
    #[arg(long)]
    pub json: bool,
}

/// Logins against the users file of the guide's latest initial state,
/// with the service file's address filter, session limits and lockout.
struct ClusterAuthority {
    key: ClusterKey,
    initial: watch::Receiver<Option<Initial>>,
    /// The parsed users and service of the version last seen.
    parsed: Mutex<Option<Parsed>>,
    sessions: Arc<Sessions>,
    lockout: Lockout,
}

#[derive(Clone)]
struct Parsed {
    version: u64,
    users: Arc<Users>,
    service: Option<Arc<ServiceConfig>>,
}

/// Verified against when the user is unknown or locked out, so every
/// refusal costs the same argon2 time.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| crate::node::users::hash_password("drift-no-such-user").unwrap_or_default())
}

impl ClusterAuthority {
    fn parsed(&self) -> Option<Parsed> {
        let initial = self.initial.borrow().clone()?;
        let mut cache = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.as_ref().filter(|p| p.version == initial.version) {
            return Some(p.clone());
        }
        let from_guide = Path::new("(from the guide)");
        let users = match Users::parse(&initial.users, from_guide) {
            Ok(u) => Arc::new(u),
            Err(e) => {
                tracing::error!(version = initial.version, "the guide's users file does not parse: {e}");
                return cache.clone();
            }
        };
        let service = match ServiceConfig::parse(&initial.service, from_guide) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::error!(version = initial.version, "the guide's service file does not parse ({e}): no service limits or lockout apply");
                None
            }
        };
        let p = Parsed { version: initial.version, users, service };
        *cache = Some(p.clone());
        Some(p)
    }
}

impl Authority for ClusterAuthority {
    fn admit(&self, client: IpAddr) -> Result<Slot, String> {
        let Some(svc) = self.parsed().and_then(|p| p.service) else {
            return Ok(Box::new(()));
        };
        if !svc.filter.allows(client) {
            return Err("Your address is not allowed to use this service.".into());
        }
        match self.sessions.try_connect_from(client, svc.max_sessions, svc.max_sessions_per_address) {
            Ok(slot) => Ok(Box::new(slot)),
            Err(ConnectRefusal::Total(max)) => Err(format!("Too many sessions ({max} allowed); try again later.")),
            Err(ConnectRefusal::Address(max)) => Err(format!("Too many sessions from your address ({max} allowed); try again later.")),
        }
    }

    fn check_login(&self, user: &str, password: &str, client: IpAddr) -> Result<Slot, Refusal> {
        let parsed = self.parsed().ok_or(Refusal::NoUsers)?;
        let policy = parsed.service.as_ref().map(|s| s.login.clone());
        let locked = policy.as_ref().and_then(|p| self.lockout.locked_for(p, user, client, Instant::now()));
        let found = validate_name(user).ok().and_then(|()| parsed.users.get(user));
        let hash = match (found, locked) {
            (Some(u), None) => u.password_hash.as_str(),
            _ => dummy_hash(),
        };
        // A proxy credential is never a password here: a client must not
        // pass one through the proxy.
        let ok = !proxy_cred::is_credential(password) && verify_password(hash, password);
        if locked.is_some() {
            return Err(Refusal::LockedOut);
        }
        let refusal = match found {
            None if validate_name(user).is_err() => Some(Refusal::BadName),
            None => Some(Refusal::UnknownUser),
            Some(_) if !ok => Some(Refusal::BadPassword),
            Some(u) if !u.allows(client) => return Err(Refusal::AddressNotAllowed),
            Some(_) => None,
        };
        if let Some(r) = refusal {
            if let Some(p) = &policy {
                if self.lockout.failed(p, user, client, Instant::now()) {
                    tracing::warn!(user, %client, failures = p.max_failures, lockout_secs = p.lockout.as_secs(), "too many failed logins: locking out");
                }
            }
            return Err(r);
        }
        if let Some(p) = &policy {
            self.lockout.succeeded(p, user, client);
        }
        let max = parsed.service.as_ref().map_or(usize::MAX, |s| s.max_sessions_per_user);
        match self.sessions.try_login(user, max) {
            Some(slot) => Ok(Box::new(slot)),
            None => Err(Refusal::TooManySessions),
        }
    }

    fn backend_password(&self, user: &str, client: IpAddr) -> String {
        proxy_cred::mint(&self.key, user, client)
    }
}

fn view_of(a: Option<&crate::cluster::msg::Announcement>) -> View {
    match a {
        None => View::default(),
        Some(a) => View { linked: true, epoch: a.epoch, primary: a.primary.clone(), ftp: a.ftp.clone(), serving: a.state == "serving" },
    }
}

pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    match (args.cmd, args.config) {
        (Some(ProxyCmd::Status(a)), _) => status(a),
        (None, Some(config)) => serve(&config),
        (None, None) => anyhow::bail!("drift proxy needs --config proxy.toml (or `drift proxy status --config proxy.toml`)"),
    }
}

fn status(args: ProxyStatusArgs) -> anyhow::Result<ExitCode> {
    let cfg = ProxyConfig::load(&args.config)?;
    let (sessions, transfers) = drift_proxy::state::read(&cfg.state_db)
        .with_context(|| format!("reading the proxy's state {} (is the proxy running?)", cfg.state_db.display()))?;
    let json = |rows: &[Vec<(String, String)>]| -> Vec<serde_json::Value> {
        rows.iter()
            .map(|r| {
                let obj = r.iter().map(|(k, v)| {
                    let v = v.parse::<i64>().map(serde_json::Value::from).unwrap_or_else(|_| if v.is_empty() { serde_json::Value::Null } else { v.clone().into() });
                    (k.clone(), v)
                });
                serde_json::Value::Object(obj.collect())
            })
            .collect()
    };
    if args.json {
        println!("{}", serde_json::json!({ "sessions": json(&sessions), "transfers": json(&transfers) }));
        return Ok(ExitCode::SUCCESS);
    }
    let show = |title: &str, rows: &[Vec<(String, String)>]| {
        println!("{title}: {}", rows.len());
        for r in rows {
            let line: Vec<String> = r.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={v}")).collect();
            println!("  {}", line.join(" "));
        }
    };
    show("sessions", &sessions);
    show("transfers", &transfers);
    Ok(ExitCode::SUCCESS)
}

fn serve(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = ProxyConfig::load(config)?;
    let key = ClusterKey::load(&cfg.key_file).context("loading the cluster key")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let feeds = Arc::new(Feeds::new());
        let (view_tx, view_rx) = watch::channel(View::default());
        let mut ann = feeds.announce.subscribe();
        tokio::spawn(async move {
            loop {
                let v = view_of(ann.borrow_and_update().as_ref());
                view_tx.send_replace(v);
                if ann.changed().await.is_err() {
                    return;
                }
            }
        });
        let auth = Arc::new(ClusterAuthority {
            key: key.clone(),
            initial: feeds.initial.subscribe(),
            parsed: Mutex::new(None),
            sessions: Arc::new(Sessions::default()),
            lockout: Lockout::default(),
        });
        let follow = tokio::spawn(subscriber::follow(cfg.guide.clone(), key, feeds.clone()));
        let listener = drift_proxy::server::bind(&cfg).await?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stop signal received: stopping");
        };
        let served = drift_proxy::server::serve(listener, cfg, view_rx, auth, stop).await;
        follow.abort();
        Ok::<_, anyhow::Error>(served?)
    })
    .context("drift proxy")?;
    Ok(ExitCode::SUCCESS)
}
