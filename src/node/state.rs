//! The node's *initial state* (users + service configuration) as one
//! shared, swappable value.
//!
//! Readers take a cheap `Arc` snapshot with [`StateHandle::current`];
//! SIGHUP calls [`StateHandle::reload`], which validates both files
//! completely before swapping, so an invalid edit leaves the old state in
//! force and sessions are never dropped. Permissions are looked up in the
//! current snapshot on every operation, so revoking one takes effect at
//! once, also for users already logged in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::config::{ConfigError, ServiceConfig};
use super::users::{Users, UsersError};

/// Errors loading the initial state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    Service(#[from] ConfigError),
    #[error(
        "users file {path}: user {user:?} has a password hash that is published in drift's repository \
         (examples/node/users.toml), so its password may be known to anyone; \
         set a new one with `drift user passwd {user} --users {path}`"
    )]
    PublishedHash { path: PathBuf, user: String },
}

/// One consistent version of the initial state.
#[derive(Debug)]
pub struct InitialState {
    pub service: ServiceConfig,
    pub users: Users,
    /// libunftp wants a `&'static str` greeting. One string is leaked per
    /// successful load, so memory grows only with the number of reloads.
    pub greeting: &'static str,
}

impl InitialState {
    pub fn load(users_file: &Path, service_file: &Path) -> Result<InitialState, StateError> {
        let service = ServiceConfig::load(service_file)?;
        let users = Users::load(users_file)?;
        if let Some(u) = users.published() {
            return Err(StateError::PublishedHash {
                path: users_file.to_owned(),
                user: u.name.clone(),
            });
        }
        let greeting: &'static str = Box::leak(service.greeting.clone().into_boxed_str());
        Ok(InitialState { service, users, greeting })
    }
}

/// What a reload changed, for the log.
#[derive(Debug)]
pub struct ReloadSummary {
    pub users: usize,
    /// The listen address cannot change without a restart; set when the
    /// new file asks for a different one.
    pub listen_ignored: Option<std::net::SocketAddr>,
}

/// Shared handle on the current initial state.
#[derive(Debug)]
pub struct StateHandle {
    users_file: PathBuf,
    service_file: PathBuf,
    current: RwLock<Arc<InitialState>>,
}

impl StateHandle {
    pub fn load(users_file: &Path, service_file: &Path) -> Result<StateHandle, StateError> {
        let state = InitialState::load(users_file, service_file)?;
        Ok(StateHandle {
            users_file: users_file.to_owned(),
            service_file: service_file.to_owned(),
            current: RwLock::new(Arc::new(state)),
        })
    }

    /// A snapshot of the state in force.
    pub fn current(&self) -> Arc<InitialState> {
        // A panic while holding the lock cannot leave a half-written Arc.
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads both files; on any error the old state stays in force.
    pub fn reload(&self) -> Result<ReloadSummary, StateError> {
        let mut next = InitialState::load(&self.users_file, &self.service_file)?;
        let old = self.current();
        let listen_ignored = if next.service.listen != old.service.listen {
            let asked = next.service.listen;
            next.service.listen = old.service.listen;
            Some(asked)
        } else {
            None
        };
        let summary = ReloadSummary {
            users: next.users.len(),
            listen_ignored,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(summary)
    }
}
