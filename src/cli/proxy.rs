//! `drift proxy --config proxy.toml`: runs the proxy crate (`proxy/`,
//! `drift-proxy`) fed by a subscription to the guide. This module is the
//! glue to the cluster: the announcements become the proxy's view, logins
//! are checked against the users file the guide sends, and each backend
//! session gets a proxy credential ([`crate::cluster::proxy_cred`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use drift_proxy::config::ProxyConfig;
use drift_proxy::{Authority, Refusal, View};
use tokio::sync::watch;

use crate::cluster::proxy_cred;
use crate::cluster::subscriber::{self, Feeds, Initial};
use crate::node::users::{validate_name, verify_password, Users};
use crate::xfer::ClusterKey;

#[derive(Debug, clap::Args)]
#[command(after_help = "Runs in the foreground until SIGINT or SIGTERM. See docs/proxy.md for the \
configuration keys, what works now and what is not built yet.")]
pub struct ProxyArgs {
    /// The proxy's configuration file (proxy.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Logins against the users file of the guide's latest initial state.
struct ClusterAuthority {
    key: ClusterKey,
    initial: watch::Receiver<Option<Initial>>,
    /// The parsed users of the version last seen.
    users: Mutex<Option<(u64, Arc<Users>)>>,
}

/// Verified against when the user is unknown, so every refusal costs the
/// same argon2 time.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| crate::node::users::hash_password("drift-no-such-user").unwrap_or_default())
}

impl ClusterAuthority {
    fn users(&self) -> Option<Arc<Users>> {
        let initial = self.initial.borrow().clone()?;
        let mut cache = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, u)) = cache.as_ref() {
            if *v == initial.version {
                return Some(u.clone());
            }
        }
        match Users::parse(&initial.users, Path::new("(users file from the guide)")) {
            Ok(u) => {
                let u = Arc::new(u);
                *cache = Some((initial.version, u.clone()));
                Some(u)
            }
            Err(e) => {
                tracing::error!(version = initial.version, "the guide's users file does not parse: {e}");
                cache.as_ref().map(|(_, u)| u.clone())
            }
        }
    }
}

impl Authority for ClusterAuthority {
    fn check_login(&self, user: &str, password: &str, client: IpAddr) -> Result<(), Refusal> {
        let users = self.users().ok_or(Refusal::NoUsers)?;
        let found = validate_name(user).ok().and_then(|()| users.get(user));
        let hash = found.map(|u| u.password_hash.as_str()).unwrap_or_else(|| dummy_hash());
        // A proxy credential is never a password here: a client must not
        // pass one through the proxy.
        let ok = !proxy_cred::is_credential(password) && verify_password(hash, password);
        match found {
            None if validate_name(user).is_err() => Err(Refusal::BadName),
            None => Err(Refusal::UnknownUser),
            Some(_) if !ok => Err(Refusal::BadPassword),
            Some(u) if !u.allows(client) => Err(Refusal::AddressNotAllowed),
            Some(_) => Ok(()),
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
    let cfg = ProxyConfig::load(&args.config)?;
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
        let auth = Arc::new(ClusterAuthority { key: key.clone(), initial: feeds.initial.subscribe(), users: Mutex::new(None) });
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
