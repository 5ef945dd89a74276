//! Attaching to an existing TUN device, possibly in another network
//! namespace.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::str::FromStr;

/// `[NETNS:]DEV` from the command line.
#[derive(Clone, Debug)]
pub struct DevSpec {
    /// A name under /run/netns, or an absolute path such as
    /// /proc/PID/ns/net; None: linkem's own namespace.
    pub netns: Option<String>,
    pub dev: String,
}

impl FromStr for DevSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (netns, dev) = match s.rsplit_once(':') {
            Some((ns, dev)) if !ns.is_empty() => (Some(ns.to_string()), dev),
            Some((_, dev)) => (None, dev),
            None => (None, s),
        };
        if dev.is_empty() || dev.len() >= libc::IFNAMSIZ || dev.contains(['/', ' ', '\0']) {
            return Err(format!("`{s}`: not a valid device name (1 to 15 characters)"));
        }
        Ok(DevSpec { netns, dev: dev.to_string() })
    }
}

impl std::fmt::Display for DevSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{ns}:{}", self.dev),
            None => f.write_str(&self.dev),
        }
    }
}

/// An attached TUN device: reading gives one IP packet, writing one
/// injects one.
pub struct Tun {
    pub file: File,
    pub mtu: u32,
}

fn setns(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: setns on a valid namespace descriptor; it affects only the
    // calling thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` with the calling thread in network namespace `netns` (None:
/// where it is), and moves the thread back afterwards.
fn in_netns<T>(netns: Option<&str>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some(ns) = netns else { return f() };
    let path = if ns.starts_with('/') {
        PathBuf::from(ns)
    } else {
        PathBuf::from("/run/netns").join(ns)
    };
    let target = File::open(&path)
        .with_context(|| format!("network namespace {}", path.display()))?;
    let home = File::open("/proc/thread-self/ns/net").context("own network namespace")?;
    setns(&target).with_context(|| format!("entering network namespace {}", path.display()))?;
    let result = f();
    setns(&home).context("returning to the own network namespace")?;
    result
}

/// `ifreq` with the name filled in.
fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// Attaches to the existing TUN device `spec` (IFF_TUN | IFF_NO_PI, one
/// queue) and reads its MTU. The device must exist (`ip tuntap add dev DEV
/// mode tun`): its addresses, MTU and routes are the caller's business.
pub fn attach(spec: &DevSpec) -> Result<Tun> {
    in_netns(spec.netns.as_deref(), || {
        let cname = CString::new(spec.dev.as_str())?;
        // SAFETY: a valid NUL-terminated name.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            bail!(
                "no device {spec}: create it first with `ip tuntap add dev {} mode tun`",
                spec.dev
            );
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        let mut ifr = ifreq_for(&spec.dev);
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF takes a pointer to an ifreq that outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } != 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) => " (is it a tap or multi-queue device, or not tun at all?)",
                Some(libc::EBUSY) => " (another process is attached to it)",
                _ => "",
            };
            return Err(e).with_context(|| format!("attaching to {spec}{hint}"));
        }

        // SAFETY: plain socket(2); the result is checked before use.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error()).context("socket for SIOCGIFMTU");
        }
        // SAFETY: a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut ifr = ifreq_for(&spec.dev);
        // SAFETY: SIOCGIFMTU fills in the ifreq we pass.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("MTU of {spec}"));
        }
        // SAFETY: SIOCGIFMTU set the mtu member of the union.
        let mtu = unsafe { ifr.ifr_ifru.ifru_mtu } as u32;
        Ok(Tun { file, mtu })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_specs() {
        let s: DevSpec = "ns1:tun0".parse().unwrap();
        assert_eq!((s.netns.as_deref(), s.dev.as_str()), (Some("ns1"), "tun0"));
        let s: DevSpec = "/proc/1/ns/net:tun0".parse().unwrap();
        assert_eq!(s.netns.as_deref(), Some("/proc/1/ns/net"));
        let s: DevSpec = "tun0".parse().unwrap();
        assert_eq!(s.netns, None);
        assert!("ns1:".parse::<DevSpec>().is_err());
        assert!("ns1:a-name-far-too-long".parse::<DevSpec>().is_err());
    }
}
