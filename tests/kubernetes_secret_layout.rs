//! The Kubernetes example's TLS Secret, laid out on disk exactly as the kubelet lays out a Secret volume,
//! served by the mqtls binary with the example's own mqtls.toml (examples/kubernetes/configmaps.yaml).
//!
//! The kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go) writes a volume as:
//!
//! ```text
//! /etc/mqtls/tls/..2025_01_01_00_00_00.000000001/{tls.crt,tls.key,ca.crt}   this version's files
//! /etc/mqtls/tls/..data -> ..2025_01_01_00_00_00.000000001
//! /etc/mqtls/tls/tls.crt -> ..data/tls.crt    (and tls.key, ca.crt)
//! ```
//!
//! and updates it by writing a new timestamped directory, pointing a new symlink `..data_tmp` at it,
//! renaming `..data_tmp` over `..data`, and removing the old directory. The files themselves never change.

mod common;
#[path = "support/examples.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use support::*;

/// The paths in the example mqtls.toml are absolute (`/etc/mqtls/tls/tls.crt`): the test rebuilds that tree
/// under a temporary root.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn path(&self, abs: &str) -> PathBuf {
        self.dir.path().join(abs.trim_start_matches('/'))
    }
}

/// A Secret volume as the kubelet writes and updates it.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn create(dir: &Path, files: &[(&str, &str)]) -> SecretVolume {
        std::fs::create_dir_all(dir).expect("mount point");
        let mut v = SecretVolume { dir: dir.to_path_buf(), version: 0 };
        v.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("visible symlink");
        }
        v
    }

    fn timestamped(version: u32) -> String {
        format!("..2025_01_01_00_00_{version:02}.{:09}", 1000 + version)
    }

    /// Writes a new version and switches `..data` to it in one rename, then removes the old version.
    fn update(&mut self, files: &[(&str, &str)]) {
        let old = (self.version > 0).then(|| self.dir.join(Self::timestamped(self.version)));
        self.version += 1;
        let name = Self::timestamped(self.version);
        let new = self.dir.join(&name);
        std::fs::create_dir(&new).expect("timestamped dir");
        for (file, text) in files {
            write_file(&new.join(file), text);
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename ..data_tmp over ..data");
        if let Some(old) = old {
            std::fs::remove_dir_all(old).expect("remove old version");
        }
    }
}

/// The example's settings file placed under `root`, its absolute paths moved there too.
fn example_config(root: &Root) -> (PathBuf, String) {
    let toml = configmap_file(&read("examples/kubernetes/configmaps.yaml"), "mqtls.toml");
    let moved = toml.replace("\"/etc/", &format!("\"{}/etc/", root.dir.path().display()));
    let path = root.path("/etc/mqtls/mqtls.toml");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("config dir");
    write_file(&path, &moved);
    (path, toml)
}

struct Pod {
    root: Root,
    pki: Pki,
    volume: SecretVolume,
    broker: Mosquitto,
    mqtls: Binary,
    port: u16,
    admin: u16,
}

/// mqtls started as the example pod starts it (`--config /etc/mqtls/mqtls.toml`), the listening
/// addresses and the broker moved to free loopback ports by flags.
async fn start_pod() -> Pod {
    let root = Root { dir: tempfile::tempdir().expect("tempdir") };
    let (config, toml) = example_config(&root);
    for file in ["cert", "key", "client_ca"] {
        let line = toml.lines().find(|l| l.starts_with(&format!("{file} ="))).expect("TLS setting");
        assert!(line.contains("\"/etc/mqtls/tls/"), "{file} is not in the Secret mount: {line}");
    }
    let pki = Pki::new();
    let volume = SecretVolume::create(
        &root.path("/etc/mqtls/tls"),
        &[("tls.crt", &pki.server.cert_pem), ("tls.key", &pki.server.key_pem), ("ca.crt", &pki.ca.pem)],
    );
    let broker = Mosquitto::start();
    // A port taken between probing and binding (tests run in parallel) is retried with others.
    for _ in 0..5 {
        let (port, admin) = (free_port(), free_port());
        let args: Vec<String> = [
            "--config".into(),
            config.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin".into(),
            format!("127.0.0.1:{admin}"),
            "--upstream".into(),
            format!("127.0.0.1:{}", broker.port),
        ]
        .into();
        match Binary::try_spawn(&args, root.dir.path(), port) {
            Ok(mqtls) => return Pod { root, pki, volume, broker, mqtls, port, admin },
            Err(log) if log.contains("cannot bind") => continue,
            Err(log) => panic!("mqtls did not start: {log}"),
        }
    }
    panic!("mqtls found no free ports in 5 tries");
}

/// The certificate mqtls presents to a new connection.
async fn presented(pod: &Pod) -> Vec<u8> {
    let device = pod.pki.ca.client("device-42");
    let tls = tls_connect(pod.port, client_tls(&pod.pki, Some(&device))).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().expect("server certificate")[0].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtls_serves_the_secret_volume_the_example_mounts() {
    let pod = start_pod().await;
    eventually("/readyz answers 200", || async { probe(pod.admin, "/readyz").await == 200 }).await;
    assert_eq!(probe(pod.admin, "/healthz").await, 200);
    assert_eq!(presented(&pod).await, pod.pki.server.der.to_vec(), "the Secret's tls.crt is presented");

    // A device certificate from the Secret's ca.crt is accepted and mapped to its CN.
    let device = pod.pki.ca.client("device-42");
    let (c, k) = device.write(pod.root.dir.path(), "device-42");
    let mut args = mosquitto_tls_args(&pod.pki, pod.port, Some((&c, &k)));
    args.extend(["-t", "devices/device-42/hello", "-m", "hi"].map(String::from));
    let (ok, _, err) = run_tool("mosquitto_pub", &args).await;
    assert!(ok, "mosquitto_pub through mqtls: {err}\nmqtls log:\n{}", pod.mqtls.log());
    assert_eq!(pod.broker.usernames(), vec!["device-42"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_secret_is_presented_within_two_seconds_and_open_connections_stay() {
    let mut pod = start_pod().await;
    assert_eq!(presented(&pod).await, pod.pki.server.der.to_vec());

    // A device connected before the renewal.
    let device = pod.pki.ca.client("device-42");
    let mut before = tls_connect(pod.port, client_tls(&pod.pki, Some(&device))).await.expect("TLS");
    tokio::io::AsyncWriteExt::write_all(&mut before, &packet::connect(4, "before", None, None)).await.expect("send");
    assert_eq!(read_exact_within(&mut before, 4).await.expect("CONNACK"), [0x20, 0x02, 0x00, 0x00]);

    // cert-manager renews: a new key and certificate (same CA); the kubelet swaps ..data.
    let renewed = pod.pki.ca.issue(false, |p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, "localhost renewed");
        p.subject_alt_names = vec![
            rcgen::SanType::DnsName("localhost".try_into().expect("dns")),
            rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
        ];
    });
    let ca = pod.pki.ca.pem.clone();
    pod.volume.update(&[("tls.crt", &renewed.cert_pem), ("tls.key", &renewed.key_pem), ("ca.crt", &ca)]);
    within(
        Duration::from_secs(2),
        || format!("the renewed certificate presented after the ..data swap; mqtls log:\n{}", pod.mqtls.log()),
        || async { presented(&pod).await == renewed.der.to_vec() },
    )
    .await;

    // The connection opened before the renewal still works.
    tokio::io::AsyncWriteExt::write_all(&mut before, &packet::PINGREQ).await.expect("send PINGREQ");
    assert_eq!(read_exact_within(&mut before, 2).await.expect("PINGRESP"), [0xD0, 0x00]);
    assert_eq!(probe(pod.admin, "/readyz").await, 200);
}
