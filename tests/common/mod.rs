//! Real parts for the integration tests: a test PKI (rcgen), a real Mosquitto on a free loopback port,
//! mqtls running in-process, and clients (rumqttc, mosquitto_pub/sub, a raw TLS client).
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtls::config::{
    ClientAuth, ClientIdPolicy, ClientUsername, Config, Global, IdentityPolicy, Limits, Listener, LogFormat,
    PasswordPolicy, ReloadSettings, TlsSettings,
};
use mqtls::conn::upstream::Upstream;
use mqtls::reload::Reloader;
use mqtls::x509::identity::UsernameFrom;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

/// Upper bound for any wait in these tests: generous for a loaded CI machine, finite always.
pub const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// PKI

/// A certificate authority that can issue client certificates and CRLs.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// Issues a leaf certificate; `edit` customises subject, SANs, validity, serial.
    pub fn issue(&self, client: bool, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        edit(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    /// A server certificate for localhost and 127.0.0.1 with the given CN and a fresh key (and so a
    /// distinct serial: rcgen derives it from the public key).
    pub fn server(&self, cn: &str) -> Leaf {
        self.issue(false, |p| {
            p.distinguished_name.push(DnType::CommonName, cn);
            p.subject_alt_names =
                vec![SanType::DnsName("localhost".try_into().expect("dns")), SanType::IpAddress([127, 0, 0, 1].into())];
        })
    }

    /// A client certificate with the given CN.
    pub fn client(&self, cn: &str) -> Leaf {
        self.issue(true, |p| p.distinguished_name.push(DnType::CommonName, cn))
    }

    /// A CRL revoking the given serial numbers, valid from 2024 to 2099.
    pub fn crl(&self, revoked: &[u64]) -> String {
        let (from, to) = (rcgen::date_time_ymd(2024, 1, 1), rcgen::date_time_ymd(2099, 1, 1));
        self.signed_crl(1, from, to, revoked).pem().expect("crl pem")
    }

    /// A DER CRL numbered `number`, revoking `revoked`, with the given thisUpdate and nextUpdate.
    pub fn crl_der(
        &self,
        number: u64,
        this_update: time::OffsetDateTime,
        next_update: time::OffsetDateTime,
        revoked: &[u64],
    ) -> Vec<u8> {
        self.signed_crl(number, this_update, next_update, revoked).der().to_vec()
    }

    fn signed_crl(
        &self,
        number: u64,
        this_update: time::OffsetDateTime,
        next_update: time::OffsetDateTime,
        revoked: &[u64],
    ) -> rcgen::CertificateRevocationList {
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).expect("crl")
    }
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key pem")
    }

    /// Writes cert and key into `dir` as NAME.crt / NAME.key and returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }
}

/// The standard test PKI: a client CA, a server certificate for localhost, and files on disk.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub server: Leaf,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("mqtls test CA");
        let server = ca.server("localhost");
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, &ca.pem).expect("write ca");
        let (server_cert, server_key) = server.write(dir.path(), "server");
        Pki { dir, ca, server, ca_file, server_cert, server_key }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The settings a test starts from: client certs required, CN as username, broker at `upstream`.
    pub fn config(&self, upstream: Upstream) -> Config {
        let listener = Listener {
            name: None,
            listen: "127.0.0.1:0".parse().expect("addr"),
            reuse_port: false,
            upstream,
            proxy_protocol: Default::default(),
            tls: TlsSettings {
                cert: self.server_cert.clone(),
                key: self.server_key.clone(),
                client_ca: Some(self.ca_file.clone()),
                client_auth: ClientAuth::Required,
                crls: vec![],
                refuse_expired: false,
                alpn: vec![],
                sni: vec![],
                ocsp_staple: None,
                ticket_keys: None,
                crl_fetch: Default::default(),
            },
            identity: IdentityPolicy {
                username_from: UsernameFrom::Cn,
                client_username: ClientUsername::Overwrite,
                password: PasswordPolicy::Drop,
                client_id: ClientIdPolicy::Keep,
            },
            authz: Default::default(),
            recheck: Default::default(),
            websocket: Default::default(),
        };
        let global = Global {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            limits: Limits::default(),
            drain_timeout: Duration::from_secs(5),
            admin: None,
            upstream_check_interval: Duration::from_millis(200),
            reload: ReloadSettings::default(),
            refuse_expired: false,
            threads: 1,
            busy_poll: None,
            handshake_nice: 10,
            admission: Default::default(),
        };
        Config { file: None, global, listeners: vec![listener] }
    }
}

// ---------------------------------------------------------------------------------------------
// Mosquitto

/// The ACL every broker in these tests uses: devices may only touch their own subtree; `monitor`
/// (connecting directly, never through mqtls) sees everything.
pub const ACL: &str = "pattern readwrite devices/%u/#\nuser monitor\ntopic readwrite #\n";

/// A real Mosquitto on a free loopback port, stopped when dropped.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    conf: PathBuf,
}

pub fn mosquitto_binary() -> PathBuf {
    for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v mosquitto"]).output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return p.into();
        }
    }
    panic!("mosquitto not found: these tests need a real broker; install the Debian package `mosquitto` (apt-get install mosquitto mosquitto-clients)");
}

pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().expect("sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!p.is_empty(), "{name} not found: install the Debian package `{package}` (apt-get install {package})");
    p.into()
}

/// A free TCP port on 127.0.0.1 (bound then released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// Starts Mosquitto with the test ACL plus `extra` config lines.
    pub fn start_with(extra: &str) -> Mosquitto {
        let bin = mosquitto_binary();
        let mut dir = tempfile::tempdir().expect("tempdir");
        // A port can be taken between probe and bind; retry a few times with fresh ports.
        for _ in 0..5 {
            let port = free_port();
            let acl = dir.path().join("acl");
            std::fs::write(&acl, ACL).expect("acl");
            let log = dir.path().join("mosquitto.log");
            let conf = dir.path().join("mosquitto.conf");
            let text = format!(
                "per_listener_settings false\nlistener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n\
                 connection_messages true\nlog_dest stderr\nlog_type all\npersistence false\nuser root\n{extra}\n",
                acl.display()
            );
            std::fs::write(&conf, text).expect("conf");
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("spawn mosquitto");
            let mut m = Mosquitto { child, port, dir, log, conf };
            if m.wait_listening() {
                return m;
            }
            let _ = m.child.kill();
            let _ = m.child.wait();
            dir = m.take_dir();
        }
        panic!("mosquitto did not start listening");
    }

    /// Stops the broker (its port then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port with the same configuration.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new().append(true).open(&self.log).expect("log");
        self.child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.log().contains("running") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn upstream(&self) -> Upstream {
        Upstream::Tcp { host: "127.0.0.1".into(), port: self.port }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the broker's log contains `needle`; panics with the log if it never does.
    pub async fn expect_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("broker log never showed {needle:?}; log:\n{}", self.log());
    }

    /// The usernames of the clients that connected, as Mosquitto logged them (`u'NAME'`).
    pub fn usernames(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("New client connected"))
            .filter_map(|l| l.split("u'").nth(1).and_then(|r| r.rsplit_once("')")).map(|(u, _)| u.to_string()))
            .collect()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// mqtls in-process

/// mqtls serving on a free loopback port inside the test's runtime, built by the same
/// [`mqtls::App`] as the binary; stopped when dropped.
pub struct Mqtls {
    pub addr: SocketAddr,
    /// The admin endpoints' address, when started with them.
    pub admin: Option<SocketAddr>,
    /// The (first) listener's proxy: its metrics, settings and TLS handle.
    pub proxy: Arc<mqtls::Proxy>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Mqtls {
    pub async fn start(config: Config) -> Mqtls {
        Self::launch(config, false).await.0
    }

    /// Also serves the admin endpoints on a free loopback port.
    pub async fn start_with_admin(config: Config) -> Mqtls {
        Self::launch(config, true).await.0
    }

    /// Like `start`, with the reloader at hand (watch, debounce, SIGHUP, re-check as `config.global.reload` says).
    pub async fn start_reloading(config: Config) -> (Mqtls, Arc<Reloader>) {
        Self::launch(config, false).await
    }

    async fn launch(mut config: Config, with_admin: bool) -> (Mqtls, Arc<Reloader>) {
        if with_admin {
            config.global.admin = Some("127.0.0.1:0".parse().expect("addr"));
        }
        let app = mqtls::App::bind(config, None).await.expect("valid configuration");
        let addr = *app.listen_addrs().first().expect("a listener");
        let admin = app.admin_addr();
        let proxy = app.proxies().first().expect("a listener").clone();
        let reloader = app.reloaders().first().expect("a listener").clone();
        let shutdown = CancellationToken::new();
        let run = app.run(shutdown.clone());
        let task = tokio::spawn(async move { run.await.expect("SIGHUP handler") });
        (Mqtls { addr, admin, proxy, shutdown, task: Some(task) }, reloader)
    }

    /// Starts the drain (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the server task to end (after a drain), or panics after `within`.
    pub async fn wait_stopped(&mut self, within: Duration) {
        if let Some(t) = self.task.take() {
            tokio::time::timeout(within, t).await.expect("server stopped in time").expect("server task");
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The sum of the samples `query` selects (e.g. `mqtls_connections_total{outcome="ok"}`: every
    /// series of that name with at least those labels, whatever its `listener` and `transport`), 0 if none.
    pub fn metric(&self, query: &str) -> f64 {
        sample(&self.metrics_text(), query)
    }

    /// The Prometheus exposition of every metric, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.proxy.all_metrics().render()
    }

    /// Stops accepting, drains, and waits for the server task.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
    }
}

impl Drop for Mqtls {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The usual test rig: a PKI, a real Mosquitto, and mqtls in front of it with the PKI's standard
/// configuration as `edit` changes it.
pub struct Rig {
    pub pki: Pki,
    pub broker: Mosquitto,
    pub proxy: Mqtls,
}

pub async fn rig(edit: impl FnOnce(&mut Config)) -> Rig {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    edit(&mut config);
    let proxy = Mqtls::start(config).await;
    Rig { pki, broker, proxy }
}

/// The mqtls binary, killed when dropped, with its JSON log in a file.
pub struct Binary {
    child: Child,
    log: PathBuf,
    pub port: u16,
}

impl Binary {
    /// Starts mqtls on a free port with `pki`'s files, `upstream`, plus `extra` flags; waits until it
    /// accepts. A port taken between probing and binding (tests run in parallel, and every outgoing
    /// connection takes an ephemeral port too) is retried with another.
    pub fn start(pki: &Pki, upstream: &str, extra: &[&str]) -> Binary {
        for _ in 0..5 {
            let port = free_port();
            let mut args: Vec<String> =
                vec!["--listen".into(), format!("127.0.0.1:{port}"), "--upstream".into(), upstream.into()];
            args.extend(["--log-format", "json"].map(String::from));
            for (flag, path) in
                [("--cert", &pki.server_cert), ("--key", &pki.server_key), ("--client-ca", &pki.ca_file)]
            {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            match Self::try_spawn(&args, pki.dir.path(), port) {
                Ok(b) => return b,
                Err(log) if log.contains("cannot bind") => continue,
                Err(log) => panic!("mqtls did not start: {log}"),
            }
        }
        panic!("mqtls found no free port in 5 tries");
    }

    /// Starts `mqtls ARGS` with its log in `dir`; waits until `port` accepts connections.
    pub fn spawn(args: &[String], dir: &Path, port: u16) -> Binary {
        Self::try_spawn(args, dir, port).unwrap_or_else(|log| panic!("mqtls did not start: {log}"))
    }

    /// Like [`Binary::spawn`], but a process that exits before accepting is an `Err` with its log.
    pub fn try_spawn(args: &[String], dir: &Path, port: u16) -> Result<Binary, String> {
        let log = dir.join(format!("mqtls-{port}.log"));
        // Cargo names the binary to integration tests only; the bench example's tests include this
        // module too and never start the binary.
        let Some(bin) = option_env!("CARGO_BIN_EXE_mqtls") else {
            return Err("no mqtls binary outside the integration tests".into());
        };
        let child = Command::new(bin)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn mqtls");
        let mut b = Binary { child, log, port };
        let deadline = Instant::now() + WAIT;
        // Ready once it accepts TCP (whatever the log level says).
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if !b.running() {
                return Err(b.log());
            }
            assert!(Instant::now() < deadline, "mqtls did not start: {}", b.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, or panics with the log after WAIT.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "mqtls never logged {needle:?}: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Waits for the process to exit; its status, or a panic with its log after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "mqtls did not exit within {within:?}: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs a tracing subscriber once so failing tests show mqtls' log lines.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("mqtls=debug").with_test_writer().try_init();
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A rustls client configuration trusting the test CA, presenting `leaf` if given.
pub fn client_tls(pki: &Pki, leaf: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert_der()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(mqtls::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match leaf {
        Some(l) => builder.with_client_auth_cert(vec![l.der.clone()], l.key_der()).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

impl Pki {
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.ca.pem.as_bytes()).expect("ca pem")
    }
}

/// A raw TLS connection to mqtls, for byte-level assertions.
pub async fn tls_connect(port: u16, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await?;
    // With TLS 1.3 a refused client certificate is only reported on the first read; a flush forces the
    // handshake to complete from the client's side.
    tls.flush().await?;
    Ok(tls)
}

/// Reads exactly `n` bytes or fails after WAIT.
pub async fn read_exact_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(buf)
}

/// Reads until EOF (or error) within WAIT; returns what arrived.
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("connection was not closed in time");
    out
}

/// MQTT packet builders for the raw-client tests.
pub mod packet {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
    }

    fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        varint(body.len(), &mut out);
        out.extend_from_slice(body);
        out
    }

    /// A CONNECT for protocol level 3, 4 or 5 with optional username and password.
    pub fn connect(level: u8, client_id: &str, username: Option<&str>, password: Option<&[u8]>) -> Vec<u8> {
        let mut body = Vec::new();
        string(if level == 3 { b"MQIsdp" } else { b"MQTT" }, &mut body);
        body.push(level);
        let mut flags = 0x02;
        if username.is_some() {
            flags |= 0x80;
        }
        if password.is_some() {
            flags |= 0x40;
        }
        body.push(flags);
        body.extend_from_slice(&30u16.to_be_bytes());
        if level == 5 {
            body.push(0);
        }
        string(client_id.as_bytes(), &mut body);
        if let Some(u) = username {
            string(u.as_bytes(), &mut body);
        }
        if let Some(p) = password {
            string(p, &mut body);
        }
        frame(0x10, &body)
    }

    pub fn subscribe(level: u8, packet_id: u16, topic: &str, qos: u8) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        if level == 5 {
            body.push(0);
        }
        string(topic.as_bytes(), &mut body);
        body.push(qos);
        frame(0x82, &body)
    }

    pub fn publish_qos0(level: u8, topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        if level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        frame(0x30, &body)
    }

    pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
    pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];
}

/// A fake broker that records the first bytes a client sends and answers CONNACK, for byte-level
/// assertions on what mqtls forwards. Returns the upstream and a receiver for the captured bytes.
pub async fn capturing_upstream() -> (Upstream, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok(Ok((mut s, _))) = tokio::time::timeout(WAIT, listener.accept()).await else { return };
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read until the stream pauses: the proxy writes the CONNECT (plus pipelined bytes) at once.
        // The first read waits as long as any step may take; only later ones end at a pause.
        let mut pause = WAIT;
        while let Ok(Ok(n)) = tokio::time::timeout(pause, s.read(&mut chunk)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            pause = Duration::from_millis(300);
        }
        let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
        let _ = tx.send(got);
        let _ = tokio::time::timeout(WAIT, s.read(&mut chunk)).await;
    });
    (Upstream::Tcp { host: "127.0.0.1".into(), port }, rx)
}

// ---------------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub

/// Arguments for mosquitto_pub/sub to reach mqtls over TLS with `leaf`'s certificate.
pub fn mosquitto_tls_args(pki: &Pki, port: u16, leaf: Option<(&Path, &Path)>) -> Vec<String> {
    let mut args = vec![
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        pki.ca_file.display().to_string(),
    ];
    if let Some((c, k)) = leaf {
        args.extend(["--cert".into(), c.display().to_string(), "--key".into(), k.display().to_string()]);
    }
    args
}

/// A device with its own session store: connects, CONNECTs, waits for the CONNACK (which also
/// delivers the ticket), disconnects; returns how the handshake went.
pub async fn mqtt_session(port: u16, client: Arc<rustls::ClientConfig>) -> std::io::Result<rustls::HandshakeKind> {
    let mut tls = tls_connect(port, client).await?;
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.write_all(&packet::connect(4, "resumer", None, None)).await?;
    let ack = read_exact_within(&mut tls, 4).await?;
    assert_eq!(ack, [0x20, 2, 0, 0]);
    tls.write_all(&packet::DISCONNECT).await?;
    read_to_close(&mut tls).await;
    Ok(kind)
}

/// Runs a command to completion within WAIT; returns (success, stdout, stderr).
pub async fn run_tool(program: &str, args: &[String]) -> (bool, String, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}; install the Debian package `mosquitto-clients`"));
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {WAIT:?}"))
        .expect("wait");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A device that stays connected: `mosquitto_sub` through mqtls with `leaf`'s certificate, subscribed
/// to `devices/CN/in` and leaving the will `devices/CN/will` = "gone". Killed when dropped.
pub struct Device {
    pub cn: String,
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Device {
    /// Connects and waits for the SUBACK.
    pub async fn connect(pki: &Pki, port: u16, cn: &str, leaf: &Leaf) -> Device {
        let program = require_tool("mosquitto_sub", "mosquitto-clients");
        let (cert, key) = leaf.write(pki.dir.path(), cn);
        let mut args = mosquitto_tls_args(pki, port, Some((&cert, &key)));
        let topic = format!("devices/{cn}/in");
        let will = format!("devices/{cn}/will");
        args.extend(
            ["-d", "-i", cn, "-k", "60", "-t", &topic, "--will-topic", &will, "--will-payload", "gone"]
                .map(String::from),
        );
        // Line-buffered: into a pipe, mosquitto_sub's stdio would hold its lines back.
        let mut child = tokio::process::Command::new("stdbuf")
            .arg("-oL")
            .arg(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto_sub");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        for out in [
            child.stdout.take().map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|e| Box::new(e) as _),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut reader = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut device = Device { cn: cn.to_string(), child, lines };
        device.expect_line("SUBACK").await;
        device
    }

    /// Waits (at most WAIT) for an output line containing `needle`; returns it.
    pub async fn expect_line(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{}: mosquitto_sub ended before printing {needle:?}", self.cn),
                Err(_) => panic!("{}: mosquitto_sub did not print {needle:?} within {WAIT:?}", self.cn),
            }
        }
    }

    /// A message published on the broker (as `monitor`) to `devices/CN/in` reaches the device.
    pub async fn round_trip(&mut self, broker: &Mosquitto, payload: &str) {
        let (ok, _, err) = run_tool(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "-u",
                "monitor",
                "-q",
                "1",
                "-t",
                &format!("devices/{}/in", self.cn),
                "-m",
                payload,
            ]
            .map(String::from),
        )
        .await;
        assert!(ok, "mosquitto_pub to the broker: {err}");
        self.expect_line(payload).await;
    }
}

/// A subscriber connected straight to the broker as `monitor` (who may read everything), so tests see
/// exactly what the ACL let through. Returns received (topic, payload) pairs via a channel.
pub struct Monitor {
    pub rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub async fn start(broker: &Mosquitto, filter: &str) -> Monitor {
        Self::on_port(broker.port, filter).await
    }

    /// A monitor on any broker listening on 127.0.0.1:`port`.
    pub async fn on_port(port: u16, filter: &str) -> Monitor {
        let mut opts = rumqttc::MqttOptions::new("monitor", "127.0.0.1", port);
        opts.set_credentials("monitor", "");
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 100);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _keep = client;
            let mut ready = Some(ready_tx);
            while let Ok(ev) = events.poll().await {
                match ev {
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(WAIT, ready_rx).await.expect("monitor SUBACK in time").expect("monitor alive");
        Monitor { rx, task }
    }

    /// The next message, or panic after WAIT.
    pub async fn next(&mut self) -> (String, Vec<u8>) {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("message in time").expect("monitor alive")
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Ok(Some((t, _))) = tokio::time::timeout(quiet, self.rx.recv()).await {
            panic!("unexpected message on {t}");
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// rumqttc (MQTT 3.1.1) options to reach mqtls over TLS.
pub fn rumqttc_options(pki: &Pki, port: u16, client_id: &str, leaf: Option<&Leaf>) -> rumqttc::MqttOptions {
    let mut opts = rumqttc::MqttOptions::new(client_id, "localhost", port);
    opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(client_tls(pki, leaf))));
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    opts
}

/// Waits for the CONNACK of a rumqttc event loop; returns its return code.
pub async fn rumqttc_connack(events: &mut rumqttc::EventLoop) -> Result<rumqttc::ConnectReturnCode, String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match tokio::time::timeout(WAIT, events.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => return Ok(ack.code),
            Ok(Ok(_)) => continue,
            Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => return Ok(code),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timeout".into()),
        }
    }
    Err("timeout".into())
}

/// GETs `path` from an HTTP server with hyper's client; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let fetch = async {
        let tcp = TcpStream::connect(addr).await.expect("connect admin");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("http handshake");
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", "localhost")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .expect("request");
        let res = sender.send_request(req).await.expect("response");
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(WAIT, fetch).await.expect("admin answered in time")
}

/// Polls `check` until it holds, or panics with `what` after WAIT.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(WAIT, || format!("never happened: {what}"), check).await;
}

/// Probes until `probe` succeeds; returns the time taken. Fails, with `what()`, only if a probe that
/// *began* after `limit` still saw the old state: on a slow machine one probe (a handshake, a process)
/// can itself take a while, and a probe begun in time that ends late proves nothing against the promise.
pub async fn within<F, Fut>(limit: Duration, what: impl Fn() -> String, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    // Bounded: each probe is itself bounded, and the loop ends once a probe begins after `limit`.
    loop {
        let begun = started.elapsed();
        if probe().await {
            return started.elapsed();
        }
        assert!(begun < limit, "not within {limit:?}: {}", what());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn write_file(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(text.as_bytes()).expect("write");
}

/// Replaces `path` the way editors and `cp`/`mv` deployments do: write a temporary file beside it,
/// then rename it over the old one (a new inode).
pub fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-new");
    write_file(&tmp, text);
    std::fs::rename(&tmp, path).expect("rename");
}

/// A volume laid out exactly as Kubernetes' AtomicWriter lays out a secret or configmap:
/// `..<timestamp>/` holds the files, `..data` -> `..<timestamp>`, and each visible name is a symlink
/// through `..data` (`tls.crt` -> `..data/tls.crt`). An update writes a new timestamped directory,
/// creates `..data_tmp` pointing at it, renames that over `..data`, then removes the old directory.
pub struct K8sVolume {
    pub dir: PathBuf,
    generation: u32,
}

impl K8sVolume {
    pub fn create(dir: &Path, files: &[(&str, &str)]) -> K8sVolume {
        std::fs::create_dir_all(dir).expect("volume dir");
        let mut v = K8sVolume { dir: dir.to_path_buf(), generation: 0 };
        v.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("user-visible symlink");
        }
        v
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ts_dir(&self, generation: u32) -> String {
        // The real writer uses the time (`..2006_01_02_15_04_05.000000000`); a counter keeps names unique.
        format!("..2026_11_27_21_00_{:02}.{:09}", generation % 60, 123_456_789 + generation)
    }

    pub fn update(&mut self, files: &[(&str, &str)]) {
        let old = self.dir.join("..data").read_link().ok();
        self.generation += 1;
        let ts = self.ts_dir(self.generation);
        let ts_path = self.dir.join(&ts);
        std::fs::create_dir(&ts_path).expect("timestamped dir");
        for (name, text) in files {
            write_file(&ts_path.join(name), text);
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).expect("remove old timestamped dir");
        }
    }
}

/// The server certificate mqtls presents to a client holding `client`, or the handshake error.
pub async fn presented_cert(port: u16, client: Arc<rustls::ClientConfig>) -> std::io::Result<CertificateDer<'static>> {
    let tls = tokio::time::timeout(WAIT, tls_connect(port, client))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
    leaf.ok_or_else(|| std::io::Error::other("server presented no certificate"))
}

/// Handshakes until the server presents `want`; returns how long that took. Panics after `limit`.
pub async fn wait_presented(
    port: u16,
    client: &Arc<rustls::ClientConfig>,
    want: &CertificateDer<'static>,
    limit: Duration,
) -> Duration {
    within(
        limit,
        || "the new certificate presented".into(),
        || async {
            match presented_cert(port, client.clone()).await {
                Ok(der) => der == *want,
                Err(e) => panic!("handshake failed while waiting for the new certificate: {e}"),
            }
        },
    )
    .await
}

/// Handshakes with `client`, sends a CONNECT and reports whether the broker's CONNACK came back: the
/// client certificate was accepted. A refused certificate fails the handshake or its first read.
pub async fn mqtt_accepted(port: u16, client: Arc<rustls::ClientConfig>) -> bool {
    let Ok(mut tls) = tls_connect(port, client).await else { return false };
    if tls.write_all(&packet::connect(4, "probe", None, None)).await.is_err() {
        return false;
    }
    matches!(read_exact_within(&mut tls, 4).await, Ok(ack) if ack == [0x20, 2, 0, 0])
}

/// Polls `mqtt_accepted` until it equals `want`; returns the time taken or panics after `limit`.
pub async fn wait_accepted(port: u16, client: &Arc<rustls::ClientConfig>, want: bool, limit: Duration) -> Duration {
    within(
        limit,
        || format!("client acceptance became {want}"),
        || async { mqtt_accepted(port, client.clone()).await == want },
    )
    .await
}

/// Reads one MQTT packet: (first header byte, body).
pub async fn read_packet<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    tokio::time::timeout(WAIT, async {
        let first = s.read_u8().await?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = s.read_u8().await?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        Ok((first, body))
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no packet"))?
}

/// The sum of the samples in the Prometheus exposition `text` that `query` selects: `name` or
/// `name{label="value",...}`, matching every series of that name carrying at least those labels.
pub fn sample(text: &str, query: &str) -> f64 {
    let (name, wanted) = series(query);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(s, _)| {
            let (n, labels) = series(s);
            n == name && wanted.iter().all(|w| labels.contains(w))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// A series' name and labels: `name{a="x",b="y"}` → (`name`, [(a, x), (b, y)]), with `\"` and `\\` unescaped.
fn series(s: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = s.split_once('{') else { return (s.trim(), Vec::new()) };
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String =
            chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim_start_matches(',').to_string();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key, value));
    }
    (name, labels)
}

#[test]
fn a_metric_query_sums_the_series_carrying_its_labels() {
    let text = "# TYPE x counter\nx_total{listener=\"a\",outcome=\"ok\"} 2\nx_total{listener=\"b\",outcome=\"ok\"} 3\n\
                x_total{listener=\"b\",outcome=\"limit\"} 5\ny{issuer=\"CN=a,O=\\\"b\\\"\"} 7\n";
    assert_eq!(sample(text, r#"x_total{outcome="ok"}"#), 5.0);
    assert_eq!(sample(text, r#"x_total{listener="b"}"#), 8.0);
    assert_eq!(sample(text, "x_total"), 10.0);
    assert_eq!(sample(text, r#"y{issuer="CN=a,O=\"b\""}"#), 7.0);
    assert_eq!(sample(text, r#"x_total{outcome="gone"}"#), 0.0);
}
