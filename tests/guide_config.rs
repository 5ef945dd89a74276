//! The example guide configuration loads, and its values are what
//! docs/guide.md says.

use std::path::Path;
use std::time::Duration;

use drift::guide::config::GuideConfig;

#[test]
fn the_example_guide_toml_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster/guide.toml");
    let c = GuideConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen, "0.0.0.0:7070");
    assert_eq!(c.dial_addr(), "127.0.0.1:7070");
    assert_eq!(c.key_file, path.parent().unwrap().join("cluster.key"));
    assert_eq!(c.id, "guide-1");
    assert_eq!(c.lease, Duration::from_millis(600));
    assert_eq!((c.threat_threshold, c.load_threshold), (80, None));
    assert_eq!(c.sustain, Duration::from_secs(5));
    assert_eq!(c.catch_up_timeout, Duration::from_secs(30));
}
