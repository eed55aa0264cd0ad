//! `ocsp_staple`: a DER OCSP response made by the real `openssl ocsp` responder is stapled with the
//! server certificate (as `openssl s_client -status` sees it), reloaded when the file changes, shown
//! in `/certs` and `mqtls check`, and a file that is not a usable response stops start-up with one line.
//!
//! `openssl ocsp` can't make a response that is already out of date (and waiting for one to expire
//! takes a minute at least), so the expired one here is a real response with its times rewritten: mqtls
//! does not check the signature. The picking by the clock is tested in `src/tls` with an injected clock.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqtls::config::{Config, ReloadSettings};
use mqtls::conn::upstream::Upstream;
use mqtls::reload::{ReloadReason, Reloader};

fn openssl(args: &[&str]) -> Output {
    let program = require_tool("openssl", "openssl");
    let out = Command::new(program).args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[derive(Clone, Copy)]
enum Status {
    Good,
    Revoked,
}

/// Has `openssl ocsp`, as the CA's responder, answer for the PKI's server certificate with `status`,
/// valid for `ndays` days; writes the DER response to `out`.
fn ocsp_response(pki: &Pki, status: Status, ndays: u32, out: &Path) {
    let work = pki.path(&format!("responder-{}", out.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
    std::fs::create_dir_all(&work).expect("responder dir");
    let ca_key = work.join("ca.key");
    std::fs::write(&ca_key, pki.ca.issuer.key().serialize_pem()).expect("write CA key");
    let serial_line =
        String::from_utf8(openssl(&["x509", "-in", s(&pki.server_cert), "-noout", "-serial"]).stdout).expect("utf-8");
    let serial = serial_line.trim().trim_start_matches("serial=");
    // The responder's database, in `openssl ca`'s index.txt format.
    let entry = match status {
        Status::Good => format!("V\t991231235959Z\t\t{serial}\tunknown\t/CN=localhost\n"),
        Status::Revoked => format!("R\t991231235959Z\t250101000000Z\t{serial}\tunknown\t/CN=localhost\n"),
    };
    let index = work.join("index.txt");
    std::fs::write(&index, entry).expect("write index");
    let request = work.join("request.der");
    openssl(&["ocsp", "-issuer", s(&pki.ca_file), "-cert", s(&pki.server_cert), "-no_nonce", "-reqout", s(&request)]);
    let days = ndays.to_string();
    let tmp = out.with_extension("tmp");
    openssl(&[
        "ocsp",
        "-index",
        s(&index),
        "-rsigner",
        s(&pki.ca_file),
        "-rkey",
        s(&ca_key),
        "-CA",
        s(&pki.ca_file),
        "-reqin",
        s(&request),
        "-ndays",
        &days,
        "-respout",
        s(&tmp),
    ]);
    // Replaced whole, as a deployment would.
    std::fs::rename(&tmp, out).expect("rename response");
}

/// What `openssl s_client -status` prints about the OCSP response the server staples.
async fn s_client_status(pki: &Pki, port: u16) -> String {
    s_client_status_with(pki, port, &[]).await
}

async fn s_client_status_with(pki: &Pki, port: u16, extra: &[&str]) -> String {
    let openssl = require_tool("openssl", "openssl");
    let (client_cert, client_key) = pki.ca.client("device-1").write(pki.dir.path(), "device-1");
    let args: Vec<String> = [
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "localhost",
        "-status",
        "-CAfile",
        s(&pki.ca_file),
        "-cert",
        s(&client_cert),
        "-key",
        s(&client_key),
    ]
    .map(String::from)
    .into_iter()
    .chain(extra.iter().map(|s| s.to_string()))
    .collect();
    let (_, stdout, stderr) = run_tool(s(&openssl), &args).await;
    assert!(stdout.contains("OCSP response"), "s_client printed nothing about OCSP: {stdout}{stderr}");
    stdout
}

/// The `Next Update:` line of s_client's output, if any.
fn next_update_line(out: &str) -> Option<String> {
    out.lines().find(|l| l.trim_start().starts_with("Next Update:")).map(|l| l.trim().to_string())
}

fn no_upstream() -> Upstream {
    Upstream::Tcp { host: "127.0.0.1".into(), port: free_port() }
}

struct Rig {
    pki: Pki,
    proxy: Mqtls,
    reloader: Arc<Reloader>,
    staple: PathBuf,
}

/// mqtls with admin endpoints and `ocsp_staple` = a fresh good response (valid one day) in a
/// directory of its own, so only watching that directory notices it change.
async fn start(reload: ReloadSettings) -> Rig {
    init_logs();
    let pki = Pki::new();
    std::fs::create_dir_all(pki.path("ocsp")).expect("ocsp dir");
    let staple = pki.path("ocsp").join("server.ocsp.der");
    ocsp_response(&pki, Status::Good, 1, &staple);
    let mut config: Config = pki.config(no_upstream());
    config.global.reload = reload;
    config.global.admin = Some("127.0.0.1:0".parse().expect("addr"));
    config.listeners[0].tls.ocsp_staple = Some(staple.clone());
    let (proxy, reloader) = Mqtls::start_reloading(config).await;
    Rig { pki, proxy, reloader, staple }
}

async fn certs_ocsp(rig: &Rig) -> serde_json::Value {
    let (status, body) = http_get(rig.proxy.admin.expect("admin"), "/certs").await;
    assert_eq!(status, 200, "{body}");
    let certs: serde_json::Value = serde_json::from_str(&body).expect("/certs is JSON");
    certs.get("ocsp").cloned().unwrap_or_else(|| panic!("/certs shows no ocsp: {body}"))
}

fn rfc3339_to_unix(s: &str) -> i64 {
    humantime::parse_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

fn no_reload() -> ReloadSettings {
    ReloadSettings { interval: None, debounce: Duration::from_millis(50), watch: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_is_stapled_and_shown_in_certs() {
    let rig = start(no_reload()).await;
    let out = s_client_status(&rig.pki, rig.proxy.port()).await;
    assert!(out.contains("OCSP Response Status: successful"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    // TLS 1.2 sends it in a CertificateStatus message of its own.
    let out = s_client_status_with(&rig.pki, rig.proxy.port(), &["-tls1_2"]).await;
    assert!(out.contains("TLSv1.2"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");

    let ocsp = certs_ocsp(&rig).await;
    assert_eq!(ocsp["status"], "good", "{ocsp}");
    assert_eq!(ocsp["matches_certificate"], true, "{ocsp}");
    assert_eq!(ocsp["path"], s(&rig.staple), "{ocsp}");
    let this_update = rfc3339_to_unix(ocsp["this_update"].as_str().expect("this_update"));
    let next_update = rfc3339_to_unix(ocsp["next_update"].as_str().expect("next_update"));
    assert!((this_update - now_unix()).abs() < 300, "{ocsp}");
    assert_eq!(next_update - this_update, 86_400, "-ndays 1: {ocsp}");
}

/// Every GeneralizedTime (tag 0x18, 15 bytes, `YYYYMMDDHHMMSSZ`) in `der` set to 2020-01-01: thisUpdate
/// and nextUpdate, and so the response expired long ago.
fn backdated(der: &[u8]) -> Vec<u8> {
    let mut out = der.to_vec();
    let mut i = 0;
    while i + 17 <= out.len() {
        let body = &out[i + 2..i + 17];
        if out[i] == 0x18 && out[i + 1] == 15 && body[14] == b'Z' && body[..14].iter().all(u8::is_ascii_digit) {
            out[i + 2..i + 17].copy_from_slice(b"20200101000000Z");
            i += 17;
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_response_loads_with_a_warning_but_is_not_stapled() {
    init_logs();
    let pki = Pki::new();
    let fresh = pki.path("fresh.ocsp.der");
    ocsp_response(&pki, Status::Good, 1, &fresh);
    let staple = pki.path("expired.ocsp.der");
    std::fs::write(&staple, backdated(&std::fs::read(&fresh).expect("read"))).expect("write");

    let out = mqtls(&[&["check"][..], &tls_flags(&pki, &staple)].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("next_update=2020-01-01T00:00:00Z"), "{stdout}");
    assert!(stdout.contains("# WARNING: the OCSP response is outside its validity period"), "{stdout}");

    let binary = Binary::start(&pki, "127.0.0.1:1", &["--ocsp-staple", s(&staple)]);
    let warning = "the OCSP response is outside its validity period";
    binary.wait_for_log(warning);
    let out = s_client_status(&pki, binary.port).await;
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    assert_eq!(binary.log().matches(warning).count(), 1, "once, at load: {}", binary.log());

    let mut config = pki.config(no_upstream());
    config.listeners[0].tls.ocsp_staple = Some(staple);
    let proxy = Mqtls::start_with_admin(config).await;
    let (_, body) = http_get(proxy.admin.expect("admin"), "/certs").await;
    assert!(body.contains("\"next_update\": \"2020-01-01T00:00:00Z\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_nothing_is_stapled() {
    init_logs();
    let pki = Pki::new();
    let proxy = Mqtls::start_with_admin(pki.config(no_upstream())).await;
    let out = s_client_status(&pki, proxy.port()).await;
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    let (_, body) = http_get(proxy.admin.expect("admin"), "/certs").await;
    assert!(!body.contains("\"ocsp\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_response_is_stapled_after_the_watcher_reloads_it() {
    let rig = start(ReloadSettings { interval: None, debounce: Duration::from_millis(100), watch: true }).await;
    let before = s_client_status(&rig.pki, rig.proxy.port()).await;
    let first = next_update_line(&before).unwrap_or_else(|| panic!("no Next Update: {before}"));

    // Only the response changes: three days instead of one.
    ocsp_response(&rig.pki, Status::Good, 3, &rig.staple);
    eventually("/certs shows the new response", || async {
        let ocsp = certs_ocsp(&rig).await;
        let this_update = rfc3339_to_unix(ocsp["this_update"].as_str().unwrap_or_default());
        let next_update = rfc3339_to_unix(ocsp["next_update"].as_str().unwrap_or_default());
        next_update - this_update == 3 * 86_400
    })
    .await;
    let after = s_client_status(&rig.pki, rig.proxy.port()).await;
    assert!(after.contains("Cert Status: good"), "{after}");
    let second = next_update_line(&after).unwrap_or_else(|| panic!("no Next Update: {after}"));
    assert_ne!(first, second, "the old response is still stapled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_response_is_refused_on_reload_and_the_old_one_stays() {
    let rig = start(no_reload()).await;
    ocsp_response(&rig.pki, Status::Revoked, 1, &rig.staple);
    let err = rig.reloader.reload(ReloadReason::Sighup).expect_err("a revoked server certificate");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("ocsp_staple: {}: ", rig.staple.display())), "{msg}");
    assert!(msg.contains("revoked"), "{msg}");
    let out = s_client_status(&rig.pki, rig.proxy.port()).await;
    assert!(out.contains("Cert Status: good"), "{out}");
    assert_eq!(certs_ocsp(&rig).await["status"], "good");
}

fn mqtls(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqtls")).args(args).env_remove("RUST_LOG").output().expect("run mqtls")
}

/// Exit code 2 and exactly one line on stderr; returns it.
fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    err.trim().to_string()
}

fn tls_flags<'a>(pki: &'a Pki, staple: &'a Path) -> Vec<&'a str> {
    vec![
        "--cert",
        s(&pki.server_cert),
        "--key",
        s(&pki.server_key),
        "--client-ca",
        s(&pki.ca_file),
        "--ocsp-staple",
        s(staple),
    ]
}

#[test]
fn check_prints_the_response_and_a_file_in_the_config_is_relative_to_it() {
    let pki = Pki::new();
    let staple = pki.path("server.ocsp.der");
    ocsp_response(&pki, Status::Good, 1, &staple);
    let out = mqtls(&[&["check"][..], &tls_flags(&pki, &staple)].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = format!("# ocsp_staple: {} status=good this_update=", staple.display());
    assert!(stdout.contains(&line), "{stdout}");
    assert!(stdout.contains(&format!("ocsp_staple = \"{}\"", staple.display())), "{stdout}");

    let conf = pki.path("mqtls.toml");
    std::fs::write(
        &conf,
        "cert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\nocsp_staple = \"server.ocsp.der\"\n",
    )
    .expect("write config");
    let out = mqtls(&["check", "--config", s(&conf)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&line), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_file_that_is_no_ocsp_response_stops_check_and_start_up_with_one_line() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.der");
    std::fs::write(&garbage, b"this is not DER").expect("write");
    let want = format!("mqtls: error: ocsp_staple: {}: not a DER OCSP response", garbage.display());
    let check = one_error_line(&mqtls(&[&["check"][..], &tls_flags(&pki, &garbage)].concat()));
    assert!(check.starts_with(&want), "{check}");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let run = one_error_line(&mqtls(&[&["--listen", &listen][..], &tls_flags(&pki, &garbage)].concat()));
    assert!(run.starts_with(&want), "{run}");

    let missing = pki.path("missing.der");
    let err = one_error_line(&mqtls(&[&["check"][..], &tls_flags(&pki, &missing)].concat()));
    assert!(err.starts_with(&format!("mqtls: error: ocsp_staple: cannot read {}", missing.display())), "{err}");

    let revoked = pki.path("revoked.der");
    ocsp_response(&pki, Status::Revoked, 1, &revoked);
    let err = one_error_line(&mqtls(&[&["check"][..], &tls_flags(&pki, &revoked)].concat()));
    assert!(err.starts_with(&format!("mqtls: error: ocsp_staple: {}: ", revoked.display())), "{err}");
    assert!(err.contains("revoked"), "{err}");
}

/// A renewed certificate must not wait for its OCSP response: the old response loads with it but is
/// not stapled, even one saying the old certificate is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_for_another_certificate_loads_but_is_not_stapled() {
    init_logs();
    let pki = Pki::new();
    let other = Pki::new();
    let staple = other.path("other.ocsp.der");
    ocsp_response(&other, Status::Revoked, 1, &staple);
    let out = mqtls(&[&["check"][..], &tls_flags(&pki, &staple)].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# WARNING: the OCSP response is about serial"), "{stdout}");

    let mut config = pki.config(no_upstream());
    config.listeners[0].tls.ocsp_staple = Some(staple);
    let proxy = Mqtls::start_with_admin(config).await;
    let out = s_client_status(&pki, proxy.port()).await;
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    let (_, body) = http_get(proxy.admin.expect("admin"), "/certs").await;
    assert!(body.contains("\"matches_certificate\": false"), "{body}");
}
