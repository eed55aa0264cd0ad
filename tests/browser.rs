//! A real browser through mqtls over wss://: Debian's headless Chromium loads examples/browser/index.html
//! (MQTT.js's browser bundle from npm), connects to a `protocol = "websockets"` listener with
//! `client_auth = "optional"` and a username/password that Mosquitto (which has no WebSocket listener)
//! authenticates, subscribes, publishes, and receives its own message. The page reports what happens
//! to the test's own HTTP server on loopback, which also serves it. No browser is downloaded: Chromium
//! comes from Debian and MQTT.js from npm (both installed by tests/run).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use mqtls::config::{ClientAuth, ListenerProtocol};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// MQTT.js's browser bundle, installed by tests/run from tests/browser/package.json.
fn mqtt_js() -> PathBuf {
    let dir = std::env::var_os("MQTLS_NPM").map(PathBuf::from).unwrap_or_else(|| repo("target/npm"));
    let bundle = dir.join("node_modules/mqtt/dist/mqtt.min.js");
    assert!(
        bundle.exists(),
        "{} not found: run `bash tests/run`, or `mkdir -p target/npm && cp tests/browser/package*.json target/npm && \
         (cd target/npm && npm ci)` (Debian package npm)",
        bundle.display()
    );
    bundle
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What Chromium's `--ignore-certificate-errors-spki-list` takes: the base64 SHA-256 of the server
/// certificate's SubjectPublicKeyInfo, so the test CA is trusted for this certificate only.
fn spki_pin(pki: &Pki) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(&pki.server.der).expect("server certificate");
    base64(&Sha256::digest(cert.tbs_certificate.subject_pki.raw))
}

/// Serves the page and the bundle, and passes on each report the page makes (its query string).
async fn serve_page(bundle: PathBuf) -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::unbounded_channel();
    let page = std::fs::read(repo("examples/browser/index.html")).expect("page");
    let script = std::fs::read(bundle).expect("bundle");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (page, script, tx) = (page.clone(), script.clone(), tx.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                let (status, kind, body) = if target.starts_with("/index.html") {
                    ("200 OK", "text/html", page)
                } else if target == "/mqtt.min.js" {
                    ("200 OK", "application/javascript", script)
                } else if let Some(query) = target.strip_prefix("/report?") {
                    let _ = tx.send(query.to_string());
                    ("204 No Content", "text/plain", Vec::new())
                } else {
                    ("404 Not Found", "text/plain", Vec::new())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, rx)
}

/// A query string's value of `key`, percent-decoded.
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}="))).map(|v| {
        let bytes = v.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match (
                bytes[i],
                bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()),
            ) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).to_string()
    })
}

/// Loads the page in headless Chromium with `password`; returns the reports until `done` says stop.
async fn browse(rig: &Rig, password: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let chromium = require_tool("chromium", "chromium");
    let (page_port, mut reports) = serve_page(mqtt_js()).await;
    let profile = tempfile::tempdir().expect("profile");
    let url = format!(
        "http://127.0.0.1:{page_port}/index.html?url=wss://localhost:{}/mqtt&username=dashboard&password={password}\
         &topic=devices/dashboard/board&publish=hello-from-chromium&report=/report&settle=1",
        rig.proxy.port()
    );
    let mut child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--ignore-certificate-errors-spki-list={}", spki_pin(&rig.pki)),
            "--enable-logging=stderr",
            &url,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(profile.path().join("chromium.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chromium");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !done(&seen) {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(report)) => seen.push(report),
            _ => break,
        }
    }
    let _ = child.kill().await;
    // Chromium's own log, for a failure that the page could not report.
    if std::env::var_os("MQTLS_BROWSER_LOG").is_some() {
        eprintln!("{}", std::fs::read_to_string(profile.path().join("chromium.log")).unwrap_or_default());
    }
    seen
}

async fn browser_rig() -> Rig {
    init_logs();
    let passwd = tempfile::NamedTempFile::new().expect("passwd").into_temp_path();
    let tool = require_tool("mosquitto_passwd", "mosquitto");
    let (ok, _, err) = run_tool(
        &tool.display().to_string(),
        &["-b".into(), passwd.display().to_string(), "dashboard".into(), "s3cret".into()],
    )
    .await;
    assert!(ok, "mosquitto_passwd: {err}");
    let pki = Pki::new();
    // The broker authenticates the browser: a password file, and anonymous clients refused.
    let kept = pki.path("passwd");
    std::fs::copy(&passwd, &kept).expect("copy passwd");
    let broker = Mosquitto::start_with(&format!("password_file {}\nallow_anonymous false", kept.display()));
    let mut config = pki.config(broker.upstream());
    config.listeners[0].websocket.protocol = ListenerProtocol::Websockets;
    config.listeners[0].tls.client_auth = ClientAuth::Optional;
    let proxy = Mqtls::start(config).await;
    Rig { pki, broker, proxy }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_with_mqtt_js_publishes_and_receives_through_mqtls_over_wss() {
    let rig = browser_rig().await;
    let got = |seen: &[String], key: &str, value: &str| seen.iter().any(|r| param(r, key).as_deref() == Some(value));
    let seen = browse(&rig, "s3cret", |seen| got(seen, "message", "devices/dashboard/board hello-from-chromium")).await;
    assert!(got(&seen, "state", "subscribed"), "the page subscribed: {seen:?}");
    assert!(
        got(&seen, "message", "devices/dashboard/board hello-from-chromium"),
        "the page received its own message back: {seen:?}"
    );
    assert!(rig.broker.usernames().contains(&"dashboard".to_string()), "{:?}", rig.broker.usernames());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_with_a_wrong_password_is_refused_by_the_broker() {
    let rig = browser_rig().await;
    let seen =
        browse(&rig, "wrong", |seen| seen.iter().any(|r| param(r, "state").is_some_and(|s| s.starts_with("error"))))
            .await;
    assert!(
        seen.iter().any(|r| param(r, "state").is_some_and(|s| s.starts_with("error") && s.contains("uthori"))),
        "the broker refused the password: {seen:?}"
    );
    assert!(!seen.iter().any(|r| param(r, "state").as_deref() == Some("subscribed")), "{seen:?}");
}
