//! The users file: one half of a node's *initial state*.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."   # never a plaintext password
//! home = "/alice"                                      # inside the served root
//! permissions = ["list", "read", "write", "delete", "mkdir", "rename"]
//! allow_from = ["127.0.0.1/32", "10.0.0.0/8"]          # optional; absent = anywhere
//! ```
//!
//! Parsing is strict (unknown keys, bad hashes, homes that leave the
//! root, duplicate names are errors naming the user and the file) so that
//! a typo can never silently widen what a user may do.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Longest accepted user name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Password hashes that have been published in drift's repository (the
/// example users file, now and in its history). Anyone can read them, so
/// whatever password they hash may be known: a node refuses to start with
/// one ([`Users::published`]).
pub const PUBLISHED_HASHES: &[&str] = &[
    // examples/node/users.toml: the hash of a random password that was
    // discarded, so the example carries no usable password.
    "$argon2id$v=19$m=19456,t=2,p=1$CWgW0OxexEWuH+thY3CBBg$zpn8nHXvsK8X4EkjEdiiWC/6o9EYsFACeO5/CSDoY1w",
    // examples/node/users.toml before: the hash of "change-me".
    "$argon2id$v=19$m=19456,t=2,p=1$87ZpeFnMmQm4TQfO9Abrpg$GUzQhGFIfTI+FWIqXNtKmUabzlmHX+9hbvuCBu+sdhM",
];

/// Errors reading, validating or writing a users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write users file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("users file {path} is not valid TOML for drift: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("users file {path}: user {user:?}: {problem}")]
    Invalid { path: PathBuf, user: String, problem: String },
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("invalid user name {name:?}: {problem}")]
    BadName { name: String, problem: String },
    #[error("invalid home directory {home:?}: {problem}")]
    BadHome { home: String, problem: String },
    #[error("unknown permission {0:?} (known: list, read, write, delete, mkdir, rename)")]
    BadPermission(String),
    #[error("invalid client network {0:?}: expected an address or CIDR network such as 10.0.0.0/8")]
    BadNetwork(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// One operation a user may be allowed to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Perm {
    /// LIST, NLST, MLSD.
    List,
    /// RETR (downloads, including resumed ones).
    Read,
    /// STOR, APPE, resumed uploads.
    Write,
    /// DELE and RMD; also renaming onto an existing name, which destroys it.
    Delete,
    /// MKD.
    Mkdir,
    /// RNFR/RNTO.
    Rename,
}

impl Perm {
    pub const ALL: [Perm; 6] = [Perm::List, Perm::Read, Perm::Write, Perm::Delete, Perm::Mkdir, Perm::Rename];

    pub fn as_str(self) -> &'static str {
        match self {
            Perm::List => "list",
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::Delete => "delete",
            Perm::Mkdir => "mkdir",
            Perm::Rename => "rename",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::str::FromStr for Perm {
    type Err = UsersError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Perm::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| UsersError::BadPermission(s.to_owned()))
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Perm`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet(u8);

impl PermSet {
    pub fn contains(self, p: Perm) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn insert(&mut self, p: Perm) {
        self.0 |= p.bit();
    }
    pub fn iter(self) -> impl Iterator<Item = Perm> {
        Perm::ALL.into_iter().filter(move |p| self.contains(*p))
    }
    /// Parses a comma-separated list such as `read,list`.
    pub fn parse_list(s: &str) -> Result<PermSet, UsersError> {
        let mut set = PermSet::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            set.insert(part.parse()?);
        }
        Ok(set)
    }
}

impl FromIterator<Perm> for PermSet {
    fn from_iter<I: IntoIterator<Item = Perm>>(iter: I) -> Self {
        let mut set = PermSet::default();
        for p in iter {
            set.insert(p);
        }
        set
    }
}

impl fmt::Display for PermSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Perm::as_str).collect();
        if names.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// A validated user.
#[derive(Clone)]
pub struct User {
    pub name: String,
    /// PHC string of an argon2 hash; validated to parse.
    pub password_hash: String,
    /// Normalised home inside the served root: `/` or `/a/b` (no `..`,
    /// no trailing slash).
    pub home: String,
    pub perms: PermSet,
    /// Client networks this user may log in from; `None` means anywhere.
    pub allow_from: Option<Vec<IpNet>>,
}

/// Never prints the password hash: libunftp's tracing spans print
/// session state with `Debug`.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("home", &self.home)
            .field("perms", &self.perms.to_string())
            .finish_non_exhaustive()
    }
}

impl User {
    /// Whether this user may log in from `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match &self.allow_from {
            None => true,
            Some(nets) => nets.iter().any(|n| n.contains(&canonical_ip(ip))),
        }
    }

    /// The home as a path relative to the served root (`.` for the root).
    pub fn home_relative(&self) -> PathBuf {
        let rel = self.home.trim_start_matches('/');
        if rel.is_empty() {
            PathBuf::from(".")
        } else {
            PathBuf::from(rel)
        }
    }

    /// Checks `password` against the stored hash. CPU-heavy (argon2): call
    /// it from a blocking thread.
    pub fn verify_password(&self, password: &str) -> bool {
        verify_password(&self.password_hash, password)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, seen on dual-stack
/// listeners) are matched as the IPv4 address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Checks a password against a PHC argon2 hash string; false on any error.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// Hashes a password with argon2id and a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Validates a user name: 1..=64 bytes of `[A-Za-z0-9._-]`, not starting
/// with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), UsersError> {
    let bad = |problem: &str| {
        Err(UsersError::BadName {
            name: name.to_owned(),
            problem: problem.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 64 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    Ok(())
}

/// Normalises a home directory given relative to the served root: it must
/// start with `/`, contain no `..`, `.` is dropped, no NUL. Returns `/` or
/// `/a/b`.
pub fn normalize_home(home: &str) -> Result<String, UsersError> {
    let bad = |problem: &str| {
        Err(UsersError::BadHome {
            home: home.to_owned(),
            problem: problem.to_owned(),
        })
    };
    if !home.starts_with('/') {
        return bad("must start with '/' (it is a path inside the served root)");
    }
    if home.contains('\0') {
        return bad("contains a NUL byte");
    }
    let mut parts = Vec::new();
    for c in Path::new(home).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return bad("must not contain '..'"),
            Component::Normal(s) => match s.to_str() {
                Some(s) if s.len() <= 255 => parts.push(s.to_owned()),
                Some(_) => return bad("a component is longer than 255 bytes"),
                None => return bad("not valid UTF-8"),
            },
            Component::Prefix(_) => return bad("not a Unix path"),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Parses a client network: a CIDR network or a bare address (a /32 or
/// /128).
pub fn parse_net(s: &str) -> Result<IpNet, UsersError> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| UsersError::BadNetwork(s.to_owned()))
}

/// The users table, keyed by name.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: BTreeMap<String, User>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "user")]
    users: Vec<RawUser>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    home: String,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow_from: Option<Vec<String>>,
}

impl Users {
    /// Reads and validates a users file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            source,
        })?;
        Users::parse(&text, path)
    }

    /// Like [`load`](Self::load), but a missing file is an empty table
    /// (for `drift user add` creating the first user).
    pub fn load_or_empty(path: &Path) -> Result<Users, UsersError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Users::default()),
            _ => Users::load(path),
        }
    }

    /// Parses and validates users-file text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Users, UsersError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| UsersError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut users = BTreeMap::new();
        for ru in raw.users {
            let invalid = |problem: String| UsersError::Invalid {
                path: path.to_owned(),
                user: ru.name.clone(),
                problem,
            };
            validate_name(&ru.name).map_err(|e| invalid(e.to_string()))?;
            match PasswordHash::new(&ru.password_hash) {
                Ok(h) if h.algorithm.as_str().starts_with("argon2") => {}
                Ok(h) => {
                    return Err(invalid(format!(
                        "password_hash uses {}, only argon2 hashes are accepted (make one with `drift user passwd`)",
                        h.algorithm
                    )))
                }
                Err(e) => {
                    return Err(invalid(format!(
                        "password_hash is not an argon2 PHC string ({e}); plaintext passwords are never accepted, use `drift user passwd`"
                    )))
                }
            }
            let home = normalize_home(&ru.home).map_err(|e| invalid(e.to_string()))?;
            let mut perms = PermSet::default();
            for p in &ru.permissions {
                perms.insert(p.parse().map_err(|e: UsersError| invalid(e.to_string()))?);
            }
            let allow_from = match &ru.allow_from {
                None => None,
                Some(list) => {
                    let nets = list
                        .iter()
                        .map(|s| parse_net(s))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| invalid(e.to_string()))?;
                    if nets.is_empty() {
                        return Err(invalid(
                            "allow_from is empty, so the user could never log in; remove the key to allow any address".into(),
                        ));
                    }
                    Some(nets)
                }
            };
            let user = User {
                name: ru.name.clone(),
                password_hash: ru.password_hash.clone(),
                home,
                perms,
                allow_from,
            };
            if users.insert(ru.name.clone(), user).is_some() {
                return Err(invalid("appears more than once".into()));
            }
        }
        Ok(Users { users })
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The first user whose password hash is one of [`PUBLISHED_HASHES`].
    pub fn published(&self) -> Option<&User> {
        self.users.values().find(|u| PUBLISHED_HASHES.contains(&u.password_hash.trim()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds a new user; fails if the name is taken.
    pub fn add(&mut self, user: User) -> Result<(), UsersError> {
        validate_name(&user.name)?;
        if self.users.contains_key(&user.name) {
            return Err(UsersError::Exists(user.name));
        }
        self.users.insert(user.name.clone(), user);
        Ok(())
    }

    pub fn set_password_hash(&mut self, name: &str, hash: String) -> Result<(), UsersError> {
        let user = self.users.get_mut(name).ok_or_else(|| UsersError::NoSuchUser(name.to_owned()))?;
        user.password_hash = hash;
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<User, UsersError> {
        self.users.remove(name).ok_or_else(|| UsersError::NoSuchUser(name.to_owned()))
    }

    /// Serialises the table back to the file format.
    pub fn to_toml(&self) -> String {
        let raw = RawFile {
            users: self
                .users
                .values()
                .map(|u| RawUser {
                    name: u.name.clone(),
                    password_hash: u.password_hash.clone(),
                    home: u.home.clone(),
                    permissions: u.perms.iter().map(|p| p.as_str().to_owned()).collect(),
                    allow_from: u.allow_from.as_ref().map(|n| n.iter().map(ToString::to_string).collect()),
                })
                .collect(),
        };
        let body = toml::to_string(&raw).unwrap_or_default();
        format!(
            "# drift users file (initial state). Managed with `drift user`; see docs/node.md.\n\
             # Send SIGHUP to a running node after editing.\n\n{body}"
        )
    }

    /// Writes the table atomically (temporary file in the same directory,
    /// fsync, rename) with mode 0600: it holds password hashes.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let text = self.to_toml();
        // Never write something we could not read back.
        Users::parse(&text, path)?;
        let err = |source| UsersError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(users: &str) -> Result<Users, UsersError> {
        Users::parse(users, Path::new("users.toml"))
    }

    #[test]
    fn hash_then_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret "));
        assert!(!verify_password("not a hash", "s3cret"));
    }

    #[test]
    fn round_trip() {
        let mut users = Users::default();
        users
            .add(User {
                name: "alice".into(),
                password_hash: hash_password("pw").unwrap(),
                home: normalize_home("/alice/./x/").unwrap(),
                perms: PermSet::parse_list("read,list").unwrap(),
                allow_from: Some(vec![parse_net("127.0.0.1").unwrap()]),
            })
            .unwrap();
        let back = file(&users.to_toml()).unwrap();
        let a = back.get("alice").unwrap();
        assert_eq!(a.home, "/alice/x");
        assert!(a.perms.contains(Perm::Read) && a.perms.contains(Perm::List));
        assert!(!a.perms.contains(Perm::Write));
        assert!(a.allows("127.0.0.1".parse().unwrap()));
        assert!(a.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!a.allows("127.0.0.2".parse().unwrap()));
        assert!(a.verify_password("pw"));
    }

    #[test]
    fn rejects_plaintext_and_escapes() {
        let plain = r#"[[user]]
name = "bob"
password_hash = "hunter2"
home = "/bob"
"#;
        let e = file(plain).unwrap_err().to_string();
        assert!(e.contains("bob") && e.contains("plaintext"), "{e}");
        let h = hash_password("x").unwrap();
        let esc = format!("[[user]]\nname = \"bob\"\npassword_hash = \"{h}\"\nhome = \"/../etc\"\n");
        assert!(file(&esc).unwrap_err().to_string().contains(".."));
        let rel = format!("[[user]]\nname = \"bob\"\npassword_hash = \"{h}\"\nhome = \"bob\"\n");
        assert!(file(&rel).unwrap_err().to_string().contains("start with '/'"));
        let perm = format!("[[user]]\nname = \"bob\"\npassword_hash = \"{h}\"\nhome = \"/b\"\npermissions = [\"execute\"]\n");
        assert!(file(&perm).unwrap_err().to_string().contains("execute"));
        let dup = format!(
            "[[user]]\nname = \"bob\"\npassword_hash = \"{h}\"\nhome = \"/b\"\n[[user]]\nname = \"bob\"\npassword_hash = \"{h}\"\nhome = \"/c\"\n"
        );
        assert!(file(&dup).unwrap_err().to_string().contains("more than once"));
        let unknown = format!("[[user]]\nname = \"bob\"\npassword = \"x\"\npassword_hash = \"{h}\"\nhome = \"/b\"\n");
        assert!(file(&unknown).is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("alice.b-2_x").is_ok());
        for bad in ["", "-x", ".x", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
