//! The edge of the cluster: the proxy applies the service file's lockout,
//! per-address session limit and address rules itself, before anything
//! reaches a node, and nodes do not count the proxy's connections as one
//! client address.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::cluster::{Cluster, ClusterSetup};
use common::node::Ftp;

fn setup() -> ClusterSetup {
    ClusterSetup { nodes: 2, node_extra: "proxies = [\"127.0.0.1/32\"]".into(), ..ClusterSetup::default() }
}

fn login_from(proxy: SocketAddr, from: &str, pass: &str) -> (Ftp, u32) {
    let mut f = Ftp::connect_from(proxy, from.parse::<IpAddr>().unwrap());
    if f.greeting.0 != 220 {
        let code = f.greeting.0;
        return (f, code);
    }
    assert_eq!(f.cmd("USER alice").0, 331);
    let code = f.cmd(&format!("PASS {pass}")).0;
    (f, code)
}

#[test]
fn repeated_failures_lock_the_account_at_the_proxy() {
    let c = Cluster::start(setup());
    let (_, primary) = c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    // The service default: 5 failures lock user-and-address for 15 min.
    for i in 0..5 {
        assert_eq!(login_from(proxy.addr(), "127.0.0.1", "wrong").1, 530, "failure {i}");
    }
    assert_eq!(login_from(proxy.addr(), "127.0.0.1", "alice-pw-1").1, 530, "the right password got in while locked out");
    assert!(proxy.wait_log("too many failed logins: locking out", Duration::from_secs(5)), "{}", proxy.logs());
    assert!(proxy.logs().contains("reason=\"locked out\"") || proxy.logs().contains("reason=locked out"), "{}", proxy.logs());
    // Another address is not locked (lock_by = "user-and-ip").
    let (mut f, code) = login_from(proxy.addr(), "127.0.0.3", "alice-pw-1");
    assert_eq!(code, 230);
    assert_eq!(f.cmd("PWD").0, 257);
    // The node never saw the wrong passwords: its lockout is untouched.
    let mut direct = Ftp::connect(c.node(&primary).ftp().parse().unwrap());
    assert_eq!(direct.cmd("USER alice").0, 331);
    assert_eq!(direct.cmd("PASS alice-pw-1").0, 230);
}

#[test]
fn the_proxy_limits_each_address_and_nodes_do_not_count_it_as_one() {
    let c = Cluster::start(setup());
    c.wait_primary(Duration::from_secs(30));
    // Three sessions per client address, on every node; reloaded with
    // SIGHUP, so the primary sends the new service file to the guide and
    // the guide to the proxy.
    let proxy = c.start_proxy("");
    for n in &c.nodes {
        let svc = n.dir.join("service.toml");
        let mut text = std::fs::read_to_string(&svc).unwrap();
        text.push_str("\n[sessions]\nmax_per_address = 3\n");
        std::fs::write(&svc, text).unwrap();
        let pid = n.proc.as_ref().and_then(|p| p.pid()).unwrap();
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }
    assert!(
        common::wait_until(Duration::from_secs(30), || proxy.logs().matches("initial state received").count() >= 2),
        "the proxy never got the new service file:\n{}",
        proxy.logs()
    );
    // Six sessions through the proxy: six backend connections from the
    // proxy's one address, twice the node's per-address limit.
    let mut sessions = Vec::new();
    for from in ["127.0.0.1", "127.0.0.3"] {
        for _ in 0..3 {
            let (f, code) = login_from(proxy.addr(), from, "alice-pw-1");
            assert_eq!(code, 230, "a session from {from}:\n{}", proxy.logs());
            sessions.push(f);
        }
    }
    for f in &mut sessions {
        assert_eq!(f.cmd("PWD").0, 257, "a backend session was refused by the node");
    }
    // A fourth from one address is refused by the proxy.
    let (_f, code) = login_from(proxy.addr(), "127.0.0.1", "alice-pw-1");
    assert_eq!(code, 421, "a fourth session from one address was let in");
    assert!(proxy.logs().contains("Too many sessions from your address"), "{}", proxy.logs());
}
