//! `mqtls reload` against the real binary: it finds the running process through the configuration
//! file's `admin` address, waits for the reload's outcome, and exits 0 when the new files are in
//! service, 2 with the reason when they are refused (the old ones keep serving), 1 when there is no
//! process to ask. SIGHUP's reloads are counted the same way.
//!
//! In every test the files are watched with a 60 s debounce and no periodic re-check, so only the
//! command (or SIGHUP) can load a change while the test runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

/// Longer than `mqtls reload`'s own 15 s limit for an answer: the command must end by itself.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// mqtls started from a configuration file with an admin address, in front of a real Mosquitto.
struct Served {
    pki: Pki,
    broker: Mosquitto,
    file: PathBuf,
    mqtls: Binary,
    admin: u16,
}

/// Writes the file (`admin`, the reload timing, then `extra`) and starts the binary with it, the
/// PKI's files given as flags; retries with other ports if one was taken meanwhile.
fn serve(extra: &str) -> Served {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let file = pki.path("mqtls.toml");
    for _ in 0..5 {
        let (port, admin) = (free_port(), free_port());
        write_file(&file, &config_text(admin, extra));
        let mut args: Vec<String> = vec!["--config".into(), file.display().to_string()];
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        args.extend(["--upstream".into(), format!("127.0.0.1:{}", broker.port)]);
        args.extend(["--log-format".into(), "json".into()]);
        for (flag, path) in [("--cert", &pki.server_cert), ("--key", &pki.server_key), ("--client-ca", &pki.ca_file)] {
            args.extend([flag.to_string(), path.display().to_string()]);
        }
        match Binary::try_spawn(&args, pki.dir.path(), port) {
            Ok(mqtls) => {
                // Logged after the admin endpoint is bound and the start-up catch-up look at the files:
                // from here on, only the command or SIGHUP loads a change.
                mqtls.wait_for_log("watching TLS files");
                return Served { pki, broker, file, mqtls, admin };
            }
            Err(log) if log.contains("cannot bind") => continue,
            Err(log) => panic!("mqtls did not start: {log}"),
        }
    }
    panic!("mqtls found no free ports in 5 tries");
}

fn config_text(admin: u16, extra: &str) -> String {
    format!("admin = \"127.0.0.1:{admin}\"\nreload_interval = \"off\"\nreload_debounce = \"60s\"\n{extra}")
}

/// `mqtls reload ARGS`, to completion.
async fn mqtls_reload(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtls"))
        .arg("reload")
        .args(args)
        .env_remove("MQTLS_CONFIG")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(COMMAND_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("mqtls reload {args:?} did not end within {COMMAND_LIMIT:?}"))
        .expect("run mqtls reload")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Exit status 2 and exactly one line on stderr; returns that line.
fn refused_line(out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stdout: {}\nstderr: {err}", text(&out.stdout));
    assert_eq!(err.lines().count(), 1, "one line expected, got:\n{err}");
    err.trim().to_string()
}

impl Served {
    async fn reload(&self) -> Output {
        mqtls_reload(&["--config", s(&self.file)]).await
    }

    async fn presented(&self) -> rustls::pki_types::CertificateDer<'static> {
        let client = client_tls(&self.pki, Some(&self.pki.ca.client("probe")));
        presented_cert(self.mqtls.port, client).await.expect("handshake")
    }

    /// `mqtls_tls_reloads_total{result}` as the admin endpoint shows it.
    async fn reloads(&self, result: &str) -> f64 {
        let (status, body) = http_get(([127, 0, 0, 1], self.admin).into(), "/metrics").await;
        assert_eq!(status, 200, "{body}");
        let sample = format!("mqtls_tls_reloads_total{{result=\"{result}\"}}");
        body.lines().find_map(|l| l.strip_prefix(&sample).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }

    /// A device connected through mqtls (mosquitto_sub) receives what is published at the broker.
    async fn round_trip(&self, cn: &str) {
        let mut device = Device::connect(&self.pki, self.mqtls.port, cn, &self.pki.ca.client(cn)).await;
        device.round_trip(&self.broker, &format!("hello {cn}")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_exits_0_once_the_new_certificate_is_served() {
    let served = serve("");
    let next = served.pki.ca.server("localhost");
    replace_by_rename(&served.pki.server_key, &next.key_pem);
    replace_by_rename(&served.pki.server_cert, &next.cert_pem);

    let out = served.reload().await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}\nlog: {}", text(&out.stderr), served.mqtls.log());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("new TLS files in service"), "{stdout}");
    assert!(stdout.contains(s(&served.pki.server_cert)), "names the changed files: {stdout}");
    // No waiting: the command returned after the reload, so the very next handshake has it.
    assert!(served.presented().await == next.der, "the old certificate is still served after exit 0");
    assert_eq!(served.reloads("ok").await, 1.0);
    served.round_trip("device-1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_refuses_a_broken_certificate_naming_it_and_the_old_one_keeps_serving() {
    let served = serve("");
    let old = served.pki.server.der.clone();
    // A new certificate without its key: the pair does not match.
    let next = served.pki.ca.server("localhost");
    replace_by_rename(&served.pki.server_cert, &next.cert_pem);

    let out = served.reload().await;
    let line = refused_line(&out);
    assert!(line.starts_with("mqtls: error: reload refused"), "{line}");
    assert!(line.contains(s(&served.pki.server_cert)) && line.contains("does not belong"), "{line}");
    assert!(served.presented().await == old, "the refused certificate is served");
    served.round_trip("device-1").await;
    assert_eq!(served.reloads("error").await, 1.0);
    assert_eq!(served.reloads("ok").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_refuses_a_broken_settings_change_naming_it_and_the_old_settings_keep_serving() {
    let mut served = serve("allow_cn = [\"device-*\"]\n");
    // An allow rule that is no glob: the whole file is refused, the rules in service stay.
    write_file(&served.file, &config_text(served.admin, "allow_cn = [\"device-[1\"]\n"));

    let out = served.reload().await;
    let line = refused_line(&out);
    assert!(line.contains(&format!("allow_cn (in {})", served.file.display())), "{line}");
    served.round_trip("device-1").await;
    let stranger = client_tls(&served.pki, Some(&served.pki.ca.client("stranger")));
    assert!(!mqtt_accepted(served.mqtls.port, stranger).await, "the refused file's rules are not in service");
    assert_eq!(served.reloads("error").await, 1.0);
    assert!(served.mqtls.running(), "{}", served.mqtls.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_without_a_running_mqtls_says_so_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mqtls.toml");
    let admin = free_port();
    write_file(&file, &config_text(admin, ""));

    let out = mqtls_reload(&["--config", s(&file)]).await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("no mqtls answers at 127.0.0.1:{admin}")) && err.contains("is it running?"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_without_an_admin_address_says_how_to_set_one_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mqtls.toml");
    write_file(&file, "listen = \"127.0.0.1:8883\"\n");

    let line = refused_line(&mqtls_reload(&["--config", s(&file)]).await);
    assert!(line.contains(&format!("no admin address in {}", file.display())), "{line}");
    assert!(line.contains("admin = \"127.0.0.1:9883\""), "says what to set: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_counts_refused_and_taken_reloads_in_tls_reloads_total() {
    let served = serve("");
    let hup = || {
        let pid = served.mqtls.pid().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    };
    let next = served.pki.ca.server("localhost");
    replace_by_rename(&served.pki.server_cert, &next.cert_pem);
    hup();
    eventually("a refused SIGHUP reload is counted", || async { served.reloads("error").await == 1.0 }).await;

    replace_by_rename(&served.pki.server_key, &next.key_pem);
    hup();
    eventually("a taken SIGHUP reload is counted", || async { served.reloads("ok").await == 1.0 }).await;
    assert!(served.presented().await == next.der);
}
