//! The documentation against the program: the worked example for several listeners,
//! examples/listeners.toml, is a valid configuration.

use std::path::{Path, PathBuf};

use mqtls::config::{ClientAuth, Config, RunArgs};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn the_several_listeners_example_is_valid() {
    let path = repo("examples/listeners.toml");
    let all = Config::load_all(&RunArgs { config: Some(path), ..Default::default() })
        .expect("examples/listeners.toml is valid");
    let names: Vec<_> = all.iter().map(|c| c.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["devices", "passwords", "https-port"]);
    assert_eq!(all[1].tls.client_auth, ClientAuth::Optional);
    assert_eq!(all[2].tls.alpn, ["x-amzn-mqtt-ca", "mqtt"]);
    assert_eq!(all[2].tls.sni.len(), 1);
    assert!(all[0].tls.sni.is_empty() && all[0].tls.alpn.is_empty());
}
