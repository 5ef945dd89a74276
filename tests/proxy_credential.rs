//! The proxy credential at the node: accepted from a proxy address with
//! the cluster key (that is how a session through the proxy logs in),
//! refused from any other address, with another key, when replayed, and
//! never accepted as a password by the proxy itself. The credential is
//! made here from its documented format (`src/cluster/proxy_cred.rs`), so
//! the test also pins the format down.

mod common;

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cluster::{Cluster, ClusterSetup};
use common::node::Ftp;

fn credential(key: &[u8; 32], user: &str, client: &str, nonce: &str) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mac_key = blake3::derive_key("drift proxy credential v1", key);
    let mac = blake3::keyed_hash(&mac_key, format!("{user}\n{secs}\n{nonce}\n{client}").as_bytes());
    format!("drift-proxy-v1:{secs}:{nonce}:{client}:{}", mac.to_hex())
}

fn login_from(node: std::net::SocketAddr, from: &str, pass: &str) -> u32 {
    let mut f = Ftp::connect_from(node, from.parse::<IpAddr>().unwrap());
    assert_eq!(f.cmd("USER alice").0, 331);
    f.cmd(&format!("PASS {pass}")).0
}

#[test]
fn nodes_accept_proxy_credentials_only_from_proxies_with_the_key() {
    // The proxy leaves from 127.0.0.2, the only address the nodes trust.
    let setup = ClusterSetup { nodes: 1, node_extra: "proxies = [\"127.0.0.2/32\"]".into(), ..ClusterSetup::default() };
    let c = Cluster::start(setup);
    let (_, primary) = c.wait_primary(Duration::from_secs(30));
    let node = c.node(&primary);
    let node_addr: std::net::SocketAddr = node.ftp().parse().unwrap();
    let key: [u8; 32] = std::fs::read(&c.key).unwrap().try_into().unwrap();

    // Through the proxy: the node accepted its credential.
    let proxy = c.start_proxy("backend_source = \"127.0.0.2\"");
    let mut f = Ftp::login(proxy.addr(), "alice", "alice-pw-1");
    assert_eq!(f.stor("through.txt", b"via proxy\n").1 .0, 226);
    assert_eq!(std::fs::read(node.backing.join("alice/through.txt")).unwrap(), b"via proxy\n");

    // A credential made right, presented from the trusted address: 230
    // (so the refusals below are about address, key and replay only).
    let good = credential(&key, "alice", "127.0.0.1", "0123456789abcdef0123456789abcdef");
    assert_eq!(login_from(node_addr, "127.0.0.2", &good), 230);
    assert_eq!(login_from(node_addr, "127.0.0.2", &good), 530, "a replayed credential was accepted");
    // The same kind of credential from an address not in `proxies`.
    let fresh = credential(&key, "alice", "127.0.0.1", "11111111111111111111111111111111");
    assert_eq!(login_from(node_addr, "127.0.0.1", &fresh), 530, "accepted from a non-proxy");
    // From the proxy address, but made without the cluster key.
    let forged = credential(&[7u8; 32], "alice", "127.0.0.1", "22222222222222222222222222222222");
    assert_eq!(login_from(node_addr, "127.0.0.2", &forged), 530, "accepted with another key");
    // Bound to the user it was made for.
    let for_bob = credential(&key, "bob", "127.0.0.1", "33333333333333333333333333333333");
    assert_eq!(login_from(node_addr, "127.0.0.2", &for_bob), 530);
    assert!(node.wait_log("proxy credential refused", Duration::from_secs(5)), "{}", node.logs());

    // The proxy never takes a credential as a password.
    let another = credential(&key, "alice", "127.0.0.1", "44444444444444444444444444444444");
    assert_eq!(Ftp::try_login(proxy.addr(), "alice", &another).0, 530);
}
