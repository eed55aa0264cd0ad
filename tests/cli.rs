//! The `mqtls` binary: start-up errors, `check`, `identity`, a real run ended by SIGTERM, and what it
//! tells systemd (`Type=notify`).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn mqtls(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqtls")).args(args).env_remove("RUST_LOG").output().expect("run mqtls")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Start-up failed with exit code 2 (a configuration error) and exactly one line on stderr; returns that line.
fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one line expected, got:\n{err}");
    err.trim().to_string()
}

#[test]
fn missing_certificate_file_stops_startup_naming_the_setting_and_the_file() {
    let pki = Pki::new();
    let missing = pki.path("nope.crt");
    let line =
        one_error_line(&mqtls(&["--cert", s(&missing), "--key", s(&pki.server_key), "--client-ca", s(&pki.ca_file)]));
    assert!(line.contains("cert:") && line.contains(s(&missing)), "{line}");
}

#[test]
fn unknown_config_key_stops_startup_naming_the_key_file_and_line() {
    let pki = Pki::new();
    let conf = pki.path("mqtls.toml");
    write_file(&conf, "listen = \"127.0.0.1:0\"\nclient_cert = \"x\"\n");
    let line = one_error_line(&mqtls(&["--config", s(&conf)]));
    assert!(line.contains(s(&conf)) && line.contains("line 2") && line.contains("client_cert"), "{line}");
}

#[test]
fn key_not_matching_the_certificate_stops_startup() {
    let pki = Pki::new();
    let other = pki.ca.client("someone");
    let (_, other_key) = other.write(pki.dir.path(), "other");
    let line = one_error_line(&mqtls(&[
        "--cert",
        s(&pki.server_cert),
        "--key",
        s(&other_key),
        "--client-ca",
        s(&pki.ca_file),
    ]));
    assert!(line.contains("key:") && line.contains("does not belong"), "{line}");
}

#[test]
fn a_truncated_pem_file_stops_startup_saying_in_words_what_is_missing() {
    let pki = Pki::new();
    let truncated = pki.path("truncated.crt");
    let pem = std::fs::read_to_string(&pki.server_cert).expect("server cert");
    write_file(&truncated, &pem[..pem.len() / 2]);
    let line =
        one_error_line(&mqtls(&["--cert", s(&truncated), "--key", s(&pki.server_key), "--client-ca", s(&pki.ca_file)]));
    assert!(line.contains("cert:") && line.contains(s(&truncated)), "{line}");
    assert!(line.contains("is not valid PEM"), "{line}");
    assert!(line.contains("has no \"-----END CERTIFICATE-----\" line") && line.contains("truncated"), "{line}");
    assert!(!line.contains("[45, 45"), "no byte lists: {line}");
}

#[test]
fn bad_listen_address_in_the_file_stops_startup_naming_it() {
    let pki = Pki::new();
    let conf = pki.path("mqtls.toml");
    write_file(&conf, "listen = \"localhost\"\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\n");
    let line = one_error_line(&mqtls(&["--config", s(&conf)]));
    assert!(line.contains("listen") && line.contains(s(&conf)), "{line}");
}

/// A failure of the host rather than the settings exits 1, so systemd restarts it (the unit's
/// `RestartPreventExitStatus=2` only holds back configuration errors).
#[test]
fn a_port_in_use_stops_startup_with_exit_status_1_naming_the_address() {
    let pki = Pki::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = mqtls(&[
        "--listen",
        &addr,
        "--cert",
        s(&pki.server_cert),
        "--key",
        s(&pki.server_key),
        "--client-ca",
        s(&pki.ca_file),
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let line = err.lines().last().unwrap_or_default();
    assert!(line.starts_with("mqtls: error: listen: cannot bind") && line.contains(&addr), "{err}");
    assert_eq!(line.matches("in use").count(), 1, "the reason once: {line}");
}

#[test]
fn check_validates_and_prints_the_effective_settings() {
    let pki = Pki::new();
    let conf = pki.path("mqtls.toml");
    // Relative paths resolve against the config file's directory.
    write_file(
        &conf,
        "cert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\nusername_from = \"san-uri\"\n",
    );
    let out = mqtls(&["check", "--config", s(&conf), "--password", "keep"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("username_from = \"san-uri\""), "{text}");
    assert!(text.contains("password = \"keep\""), "{text}");
    assert!(text.contains(&format!("cert = \"{}\"", s(&pki.server_cert))), "{text}");
}

/// `mqtls check`, the start-up log line and `/certs` describe the server certificate with the same
/// subject and serial. The subject has two attributes (CN then O, as encoded), so a rendering in
/// encoding order ("CN=localhost, O=Acme") differs from RFC 2253's reversed one; the serial has letters
/// and more than one byte, so a lowercase or colon-separated rendering differs from what
/// `openssl x509 -serial` prints.
#[tokio::test(flavor = "multi_thread")]
async fn check_the_startup_log_and_certs_show_the_same_subject_and_serial() {
    let pki = Pki::new();
    let server = pki.ca.issue(false, |p| {
        // rcgen's default DN holds a CN already: this one takes its place, first; O comes after it.
        p.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
        p.subject_alt_names = vec![rcgen::SanType::DnsName("localhost".try_into().expect("dns"))];
        p.serial_number = Some(rcgen::SerialNumber::from(vec![0x0a, 0xbc, 0xde]));
    });
    server.write(pki.dir.path(), "server");
    let (subject, serial) = ("O=Acme,CN=localhost", "0ABCDE");

    let files = ["--cert", s(&pki.server_cert), "--key", s(&pki.server_key), "--client-ca", s(&pki.ca_file)];
    let out = mqtls(&[&["check"], &files[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let line = text.lines().find_map(|l| l.strip_prefix("# server certificate: ")).unwrap_or_else(|| panic!("{text}"));
    let (checked_subject, rest) = line.split_once(" (serial ").unwrap_or_else(|| panic!("{line}"));
    let checked_serial = rest.split_once(',').map(|(serial, _)| serial).unwrap_or_else(|| panic!("{line}"));
    assert_eq!((checked_subject, checked_serial), (subject, serial), "mqtls check: {line}");

    let admin = free_port();
    let mqtls = Binary::start(&pki, &format!("127.0.0.1:{}", free_port()), &["--admin", &format!("127.0.0.1:{admin}")]);
    eventually("the admin endpoint accepts", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", admin)).await.is_ok()
    })
    .await;
    let (status, body) = http_get(([127, 0, 0, 1], admin).into(), "/certs").await;
    assert_eq!(status, 200, "{body}");
    let certs: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (&certs["server_chain"][0]["subject"], &certs["server_chain"][0]["serial"]),
        (&subject.into(), &serial.into()),
        "/certs: {body}"
    );

    let log = mqtls.log();
    let loaded = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "TLS configuration loaded")
        .unwrap_or_else(|| panic!("no start-up line in {log}"));
    assert_eq!((&loaded["subject"], &loaded["serial"]), (&subject.into(), &serial.into()), "log: {loaded}");
}

#[test]
fn identity_prints_the_username_a_certificate_maps_to() {
    let pki = Pki::new();
    let leaf = pki.ca.issue(true, |p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, "device-42");
        p.subject_alt_names = vec![rcgen::SanType::URI("spiffe://example.org/sensors/7".try_into().expect("uri"))];
    });
    let (cert, _) = leaf.write(pki.dir.path(), "leaf");
    let cn = mqtls(&["identity", s(&cert)]);
    assert_eq!(String::from_utf8_lossy(&cn.stdout), "device-42\n");
    let uri = mqtls(&["identity", s(&cert), "--username-from", "san-uri"]);
    assert_eq!(String::from_utf8_lossy(&uri.stdout), "spiffe://example.org/sensors/7\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_proxies_to_mosquitto_and_exits_zero_on_sigterm() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtls"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &format!("127.0.0.1:{}", broker.port)])
        .args(["--cert", s(&pki.server_cert), "--key", s(&pki.server_key), "--client-ca", s(&pki.ca_file)])
        .args(["--log-format", "json", "--drain-timeout", "5s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mqtls");
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "mqtls did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let device = pki.ca.client("device-42");
    let (c, k) = device.write(pki.dir.path(), "device");
    let mut args = mosquitto_tls_args(&pki, port, Some((&c, &k)));
    args.extend(["-t", "devices/device-42/t", "-m", "x"].map(String::from));
    let (ok, _, err) = run_tool("mosquitto_pub", &args).await;
    assert!(ok, "mosquitto_pub: {err}");
    assert_eq!(broker.usernames(), vec!["device-42"]);

    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status =
        tokio::time::timeout(WAIT, child.wait()).await.expect("exits within the drain deadline").expect("wait");
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .await
        .expect("read");
    // JSON logs: one object per line, carrying the connection span's fields.
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let open = lines.iter().find(|l| l["message"] == "open").expect("an open line");
    assert_eq!(open["span"]["identity"], "device-42");
    assert_eq!(open["span"]["proto"], "3.1.1");
    assert!(lines.iter().any(|l| l["message"] == "closed" && l["bytes_in"].as_u64().is_some_and(|n| n > 0)));
}

/// systemd's side of `Type=notify`: a datagram socket, named to mqtls by `$NOTIFY_SOCKET`.
struct ServiceManager {
    path: std::path::PathBuf,
    socket: std::os::unix::net::UnixDatagram,
}

impl ServiceManager {
    fn new(pki: &Pki) -> ServiceManager {
        let path = pki.path("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        ServiceManager { path, socket }
    }

    /// The next notification's lines (blocking, at most WAIT).
    fn next(&self) -> Vec<String> {
        let mut buf = [0u8; 512];
        let n = tokio::task::block_in_place(|| self.socket.recv(&mut buf)).expect("a notification within the wait");
        String::from_utf8_lossy(&buf[..n]).lines().map(String::from).collect()
    }

    /// `program args` running mqtls on `port` in front of a closed port, told about this manager.
    fn command(&self, pki: &Pki, port: u16, program: &str, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        c.args(args)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &format!("127.0.0.1:{}", free_port())])
            .args(["--cert", s(&pki.server_cert), "--key", s(&pki.server_key), "--client-ca", s(&pki.ca_file)])
            .env("NOTIFY_SOCKET", &self.path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        c
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_is_told_ready_once_serving_and_stopping_when_the_drain_begins() {
    let pki = Pki::new();
    let port = free_port();
    let manager = ServiceManager::new(&pki);
    let mut child = manager.command(&pki, port, env!("CARGO_BIN_EXE_mqtls"), &[]).spawn().expect("spawn mqtls");

    let ready = manager.next();
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means serving: the listener answers a handshake, and a reload does not end the process.
    let client = client_tls(&pki, Some(&pki.ca.client("device-1")));
    assert_eq!(presented_cert(port, client.clone()).await.expect("handshake once ready"), pki.server.der);
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    assert_eq!(presented_cert(port, client).await.expect("handshake after SIGHUP"), pki.server.der);

    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let stopping = manager.next();
    assert!(stopping.iter().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits after the drain").expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_watchdog_is_fed_while_mqtls_runs() {
    let pki = Pki::new();
    let manager = ServiceManager::new(&pki);
    // systemd names the process the watchdog is for; `exec` keeps the shell's pid for mqtls.
    let mut child = manager
        .command(&pki, free_port(), "sh", &["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_mqtls")])
        .env("WATCHDOG_USEC", "200000")
        .spawn()
        .expect("spawn mqtls");
    // WatchdogSec = 200 ms: a ping every 100 ms. Three of them (within the wait), beside READY=1.
    let mut pings = 0;
    for _ in 0..20 {
        pings += usize::from(manager.next().iter().any(|l| l == "WATCHDOG=1"));
        if pings == 3 {
            break;
        }
    }
    assert_eq!(pings, 3);
    child.kill().await.expect("kill");
}
