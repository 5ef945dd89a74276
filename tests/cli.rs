//! The command line as a user meets it: help, man pages, exit codes.

mod common;

use common::*;

#[test]
fn every_subcommand_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["mount", "--help"],
        vec!["journal", "--help"],
        vec!["journal", "list", "--help"],
        vec!["journal", "verify", "--help"],
        vec!["journal", "pack", "--help"],
        vec!["journal", "replay", "--help"],
        vec!["digest", "--help"],
        vec!["node", "--help"],
        vec!["user", "--help"],
        vec!["xfer", "--help"],
    ] {
        let out = ok(&cmd);
        assert!(out.contains("Usage:"), "{cmd:?}: {out}");
    }
    let out = ok(&["journal", "list", "--help"]);
    assert!(out.contains("\"seq\"") && out.contains("--since"), "the JSON contract is documented: {out}");
}

#[test]
fn unknown_arguments_fail_with_usage_status() {
    let out = run(&["mount", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn man_pages_are_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    ok(&["man", dir.path().to_str().unwrap()]);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut fresh: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    fresh.sort();
    assert!(fresh.iter().any(|n| n == "drift-mount.1") && fresh.iter().any(|n| n == "drift-journal-list.1"));
    for name in &fresh {
        let want = std::fs::read(dir.path().join(name)).unwrap();
        let have = std::fs::read(repo.join(name)).unwrap_or_default();
        assert!(want == have, "man/{} is stale: run `cargo run -- man man/`", name.to_string_lossy());
    }
    let mut checked_in: Vec<_> = std::fs::read_dir(&repo).unwrap().map(|e| e.unwrap().file_name()).collect();
    checked_in.sort();
    assert_eq!(checked_in, fresh, "man/ has pages for commands that no longer exist");
}

#[test]
fn digest_of_a_missing_directory_is_a_clear_error() {
    let out = run(&["digest", "/nonexistent/drift-test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/drift-test"));
}

/// An OS error is printed once, not once per layer that wraps it.
#[test]
fn an_os_error_is_printed_once() {
    for args in [
        vec!["user", "list", "--users", "/nonexistent/drift-users.toml"],
        vec!["node", "--config", "/nonexistent/drift-node.toml"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("No such file or directory").count(), 1, "{args:?}: {err}");
        assert!(err.contains("/nonexistent/drift-"), "{args:?}: {err}");
    }
}
