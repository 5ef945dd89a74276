//! Explicit FTPS (AUTH TLS) on `drift node`: with `[ftps] required = true`
//! curl uploads and downloads over TLS, and a plaintext login is refused.

mod common;

use std::process::Command;

use common::node::*;

#[test]
fn ftps_required_serves_tls_and_refuses_plaintext() {
    let certs = tempfile::tempdir().unwrap();
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node = TestNode::start(NodeSetup {
        service_extra: format!(
            "[ftps]\ncert = \"{}\"\nkey = \"{}\"\nrequired = true\n",
            cert.display(),
            key.display()
        ),
        ..NodeSetup::default()
    });
    let since = node.last_seq();
    let content = data(2_000_000, 31);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("t.bin"), &content).unwrap();
    let url = format!("ftp://127.0.0.1:{}/t.bin", node.port());
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "30", "--ssl-reqd", "-k", "--user", "alice:alice-pw-1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let up = curl(&["-T", work.path().join("t.bin").to_str().unwrap(), &url]);
    assert!(up.status.success(), "FTPS upload: {}", String::from_utf8_lossy(&up.stderr));
    let down = curl(&["-o", work.path().join("back.bin").to_str().unwrap(), &url]);
    assert!(down.status.success(), "FTPS download: {}", String::from_utf8_lossy(&down.stderr));
    assert_eq!(b3_file(&work.path().join("back.bin")), b3(&content));
    assert_eq!(node.journal_ops(since), vec![write_entry("/alice/t.bin", &content)]);

    // Without TLS the login is refused and nothing is written.
    let mut f = Ftp::connect(node.addr);
    assert_eq!(f.greeting.0, 220);
    let (code, text) = f.cmd("USER alice");
    assert!(code >= 500, "plaintext USER accepted: {code} {text}");
    assert_eq!(node.journal_ops(since).len(), 1);
}
