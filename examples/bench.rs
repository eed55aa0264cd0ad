//! The benchmark's own programs in one binary (driven by `bench/run`, see docs/benchmarks.md):
//!
//! - `certs DIR`: the benchmark PKI (ECDSA P-256): `ca.crt`, `server.crt`/`.key`/`.pem` (localhost,
//!   127.0.0.1), `client.crt`/`.key` (CN=device-1), and `empty.crl`/`revoked.crl` (the second revokes the
//!   client certificate).
//! - `sink ADDR [--unix PATH]`: the upstream. Plain MQTT framing: answers CONNECT with CONNACK and PINGREQ with PINGRESP,
//!   reads and discards everything else.
//! - `terminator ADDR --certs DIR [--upstream ADDR]`: the bare rustls ceiling. TLS 1.3/1.2 with client
//!   certificates required (rustls + aws-lc-rs, configured like mqtls), then the sink's behaviour, with
//!   no upstream; or, with `--upstream`, a copy both ways to a TCP connection opened per client (the
//!   least a TLS proxy does: no MQTT parsing, no identity).
//! - `forward ADDR --upstream ADDR`: that copy without TLS (`plain-fwd`), what moving the bytes costs
//!   one core, for the throughput bound.
//! - load generators, each printing one JSON line: `handshakes`, `resume`, `throughput`, `ping`, `idle`,
//!   `reconnect` (the storm), `noisy` (one source reconnecting in a tight loop).
//! - `chart DATA OUT`: one SVG bar chart from the driver's JSON (plotters, SVG backend only).
//!
//! Every client offers only TLS 1.3, X25519 and TLS_AES_128_GCM_SHA256, and presents the client
//! certificate; every server therefore negotiates the same handshake. Each program runs on a
//! current-thread runtime: the driver pins it to one core. Every loop is bounded in time or count.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, ServerConfig, SignatureScheme};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Longest any single connection step may take before it counts as an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on how long `idle` holds its connections if the hold file never appears.
const MAX_HOLD: Duration = Duration::from_secs(900);

#[derive(Parser)]
#[command(about = "mqtls benchmark: PKI, sink, rustls terminator and load generators")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Address of the TLS endpoint (or of the plain sink with --plain).
    addr: SocketAddr,
    /// Directory written by `certs`.
    #[arg(long, default_value = "bench-certs")]
    certs: PathBuf,
    /// Plain TCP, no TLS (the direct ceiling).
    #[arg(long)]
    plain: bool,
    /// Offer TLS 1.2 (ECDHE-ECDSA-AES128-GCM-SHA256) instead of TLS 1.3: many devices' TLS stacks
    /// stop there, and its session resumption skips the key exchange that TLS 1.3's keeps.
    #[arg(long)]
    tls12: bool,
    /// MQTT over secure WebSockets: after TLS, upgrade on this path (e.g. /mqtt) with the `mqtt`
    /// subprotocol, then send each write as one masked binary frame.
    #[arg(long, value_name = "PATH")]
    ws: Option<String>,
    /// Connect from this local address (any of 127.0.0.0/8 works on loopback): a source of its own for
    /// mqtls's per-source limits.
    #[arg(long)]
    source: Option<IpAddr>,
}

#[derive(Subcommand)]
enum Mode {
    /// Write the PKI into DIR.
    Certs { dir: PathBuf },
    /// Plain-TCP MQTT sink: CONNACK, PINGRESP, discard the rest.
    Sink {
        addr: SocketAddr,
        /// Also listen on this unix socket (for a broker reached as `unix:PATH`, as a sidecar would).
        #[arg(long)]
        unix: Option<PathBuf>,
    },
    /// TLS terminator with client certificates, answering like the sink, no upstream.
    Terminator {
        addr: SocketAddr,
        #[arg(long, default_value = "bench-certs")]
        certs: PathBuf,
        /// Instead of answering, open a TCP connection here per client and copy bytes both ways
        /// (tokio's `copy_bidirectional`): the least a TLS proxy does, with no MQTT and no identity.
        #[arg(long)]
        upstream: Option<SocketAddr>,
    },
    /// Plain TCP forwarder: a connection to `upstream` per client, bytes copied both ways (what
    /// `terminator --upstream` does, without TLS).
    Forward {
        addr: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
    /// Full handshakes: connect, TLS, CONNECT, CONNACK, close, from `concurrency` clients for `seconds`.
    Handshakes {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Like handshakes, but each client first gets a ticket and then reconnects with resumption.
    Resume {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// QoS 0 PUBLISH stream (one TLS record per PUBLISH) from `clients` connections for `seconds`.
    /// The client sockets keep Nagle's algorithm on, as libmosquitto's do by default: with TCP_NODELAY
    /// every small record is its own segment, and against a server that keeps up the one-core load
    /// generator, not the server, becomes the limit.
    Throughput {
        /// Set TCP_NODELAY on the client sockets anyway.
        #[arg(long)]
        nodelay: bool,
        #[command(flatten)]
        target: Target,
        /// PUBLISH payload bytes.
        #[arg(long, default_value_t = 16384)]
        size: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Sequential PINGREQ → PINGRESP round trips on one connection.
    Ping {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 20000)]
        count: usize,
        /// Round trips before the measured ones.
        #[arg(long, default_value_t = 1000)]
        warmup: usize,
    },
    /// Reconnect storm: `count` devices (each with its own session store) connect and hold; then all
    /// are dropped at once and reconnect at once, presenting their tickets. Meanwhile one established
    /// connection (its own thread) sends PINGREQs: its round trip before and during the storm.
    Reconnect {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 4000)]
        count: usize,
        /// Connections opened at once while the devices first connect (the storm itself is all at once).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Each device connects from its own loopback address (127.1.0.1, 127.1.0.2, …), as a fleet's
        /// devices do: per-source limits then see one source per device.
        #[arg(long)]
        spread_sources: bool,
    },
    /// One source reconnecting in a tight loop: `concurrency` loops of TCP, full TLS handshake,
    /// CONNECT, CONNACK, close, each starting again at once whatever happened, until `stop_file`
    /// exists (or `seconds` pass). Prints what it tried and what got through.
    Noisy {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 600.0)]
        seconds: f64,
        #[arg(long)]
        stop_file: Option<PathBuf>,
    },
    /// Writes one SVG bar chart (the driver's JSON: title, categories, series, baseline) to OUT.
    Chart { data: PathBuf, out: PathBuf },
    /// Opens `count` connections (TLS + CONNECT/CONNACK), prints when all are up, holds them until
    /// `hold_file` exists.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        hold_file: PathBuf,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    // Idle holds thousands of sockets; the sink and the terminator hold as many.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = match cli.mode {
        Mode::Certs { dir } => write_certs(&dir).map(|()| json!({"mode": "certs", "dir": dir})),
        Mode::Sink { addr, unix } => rt
            .block_on(async {
                let tcp = TcpListener::bind(addr).await?;
                match unix {
                    Some(path) => {
                        let _ = std::fs::remove_file(&path);
                        let unix = UnixListener::bind(&path)?;
                        tokio::try_join!(sink(tcp), sink_unix(unix)).map(|_| ())
                    }
                    None => sink(tcp).await,
                }
            })
            .map(|()| json!({})),
        Mode::Terminator { addr, certs, upstream } => rt
            .block_on(async { terminator(TcpListener::bind(addr).await?, &certs, upstream).await })
            .map(|()| json!({})),
        Mode::Forward { addr, upstream } => {
            rt.block_on(async { forwarder(TcpListener::bind(addr).await?, upstream).await }).map(|()| json!({}))
        }
        Mode::Handshakes { target, concurrency, seconds } => {
            rt.block_on(storm(target, concurrency, secs(seconds), false))
        }
        Mode::Resume { target, concurrency, seconds } => rt.block_on(storm(target, concurrency, secs(seconds), true)),
        Mode::Throughput { target, size, clients, seconds, nodelay } => {
            rt.block_on(throughput(target, size, clients, secs(seconds), nodelay))
        }
        Mode::Ping { target, count, warmup } => rt.block_on(ping(target, count, warmup)),
        Mode::Idle { target, count, concurrency, hold_file } => {
            rt.block_on(idle(target, count, concurrency, &hold_file))
        }
        Mode::Reconnect { target, count, concurrency, spread_sources } => {
            tokio::task::LocalSet::new().block_on(&rt, reconnect(target, count, concurrency, spread_sources))
        }
        Mode::Noisy { target, concurrency, seconds, stop_file } => {
            rt.block_on(noisy(target, concurrency, secs(seconds), stop_file.as_deref()))
        }
        Mode::Chart { data, out } => chart::write(&data, &out).map(|()| json!({})),
    };
    match result {
        Ok(v) => {
            if !v.as_object().is_some_and(|o| o.is_empty()) {
                println!("{v}");
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.1, 3600.0))
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

// ---------------------------------------------------------------------------------------------
// PKI

fn write_certs(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let err = |e: rcgen::Error| other(e.to_string());
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.distinguished_name.push(DnType::CommonName, "mqtls bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().map_err(err)?; // ECDSA P-256
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |name: &str, client: bool| -> io::Result<()> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if client {
            p.distinguished_name.push(DnType::CommonName, "device-1");
            p.serial_number = Some(SerialNumber::from(CLIENT_SERIAL));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            p.distinguished_name.push(DnType::CommonName, "localhost");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.subject_alt_names =
                vec![SanType::DnsName("localhost".try_into().map_err(err)?), SanType::IpAddress([127, 0, 0, 1].into())];
        }
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
        // HAProxy wants certificate and key in one file.
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem() + &key.serialize_pem())?;
        Ok(())
    };
    leaf("server", false)?;
    leaf("client", true)?;
    // For the `recheck` figure: a CRL revoking nothing, and one revoking the client certificate.
    for (name, revoked) in [("empty.crl", &[][..]), ("revoked.crl", &[CLIENT_SERIAL][..])] {
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
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
        std::fs::write(dir.join(name), crl.signed_by(&issuer).map_err(err)?.pem().map_err(err)?)?;
    }
    Ok(())
}

/// The client certificate's serial, which `revoked.crl` lists.
const CLIENT_SERIAL: u64 = 0x1001;

fn read_cert(path: &Path) -> io::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(path).map_err(|e| other(format!("{}: {e}", path.display())))
}

fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| other(format!("{}: {e}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// TLS configurations

/// What every client offers: TLS 1.3 with X25519 and AES-128-GCM only.
fn client_provider(tls12: bool) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    p.cipher_suites = vec![if tls12 {
        rustls::crypto::aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    } else {
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
    }];
    Arc::new(p)
}

/// The load generator pins the server certificate (byte comparison) instead of walking the chain, but
/// still checks the handshake signature: this keeps the client's CPU per handshake below the server's,
/// so that a one-core client can saturate a one-core server.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("server certificate is not the benchmark's".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(target: &Target) -> io::Result<ClientConfig> {
    let certs = &target.certs;
    let provider = client_provider(target.tls12);
    let verifier = Pinned { cert: read_cert(&certs.join("server.crt"))?, provider: provider.clone() };
    let version = if target.tls12 { &rustls::version::TLS12 } else { &rustls::version::TLS13 };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .map_err(|e| other(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![read_cert(&certs.join("client.crt"))?], read_key(&certs.join("client.key"))?)
        .map_err(|e| other(e.to_string()))?;
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The terminator's configuration: what mqtls builds (aws-lc-rs, TLS 1.3 and 1.2, client certificates
/// required through webpki, server suite order, session tickets), with nothing behind it.
fn server_config(certs: &Path) -> io::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(read_cert(&certs.join("ca.crt"))?).map_err(|e| other(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| other(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| other(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![read_cert(&certs.join("server.crt"))?], read_key(&certs.join("server.key"))?)
        .map_err(|e| other(e.to_string()))?;
    config.ignore_client_order = true;
    // Session tickets, as mqtls issues them: the default stateful cache holds 256 sessions, fewer than
    // a storm's devices.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| other(e.to_string()))?;
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// MQTT framing

fn push_len(out: &mut Vec<u8>, mut n: usize) {
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

/// MQTT 3.1.1 CONNECT: clean session, keep-alive 0 (so idle connections are never timed out).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10];
    push_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

fn publish_packet(payload: usize) -> Vec<u8> {
    let topic = b"bench/t";
    let mut p = vec![0x30];
    push_len(&mut p, 2 + topic.len() + payload);
    p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    p.extend_from_slice(topic);
    p.resize(p.len() + payload, 0x5a);
    p
}

const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const PINGREQ: [u8; 2] = [0xc0, 0x00];
const PINGRESP: [u8; 2] = [0xd0, 0x00];

/// Walks a stream of MQTT packets without buffering their bodies: the answers the sink owes
/// (CONNACK to CONNECT, PINGRESP to PINGREQ) are appended to `out`.
#[derive(Default)]
struct Framer {
    header: Vec<u8>,
    skip: usize,
}

impl Framer {
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while let Some((&first, rest)) = data.split_first() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            self.header.push(first);
            data = rest;
            if self.header.len() < 2 || first & 0x80 != 0 {
                if self.header.len() > 5 {
                    return Err(other("bad MQTT remaining length"));
                }
                continue;
            }
            let mut len = 0usize;
            for (i, b) in self.header.iter().skip(1).enumerate() {
                len |= ((b & 0x7f) as usize) << (7 * i);
            }
            match self.header.first().map(|t| t >> 4) {
                Some(1) => out.extend_from_slice(&CONNACK),
                Some(12) => out.extend_from_slice(&PINGRESP),
                _ => {}
            }
            self.skip = len;
            self.header.clear();
        }
        Ok(())
    }
}

thread_local! {
    /// The one read buffer of this (single-threaded) sink or terminator: a connection holds no buffer
    /// while it waits, as mqtls' splice holds none, so idle connections cost only TLS and socket state.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 64 * 1024]);
}

/// Reads MQTT packets until end of stream, answering CONNECT and PINGREQ.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> io::Result<()> {
    let mut framer = Framer::default();
    let mut out = Vec::new();
    loop {
        // Read and parse inside one poll, so the shared buffer is never held across a wait.
        let n = std::future::poll_fn(|cx| {
            READ_BUF.with_borrow_mut(|buf| {
                let mut rb = tokio::io::ReadBuf::new(buf);
                std::task::ready!(Pin::new(&mut s).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                framer.feed(rb.filled(), &mut out)?;
                std::task::Poll::Ready(Ok::<_, io::Error>(n))
            })
        })
        .await?;
        if n == 0 {
            return Ok(());
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            s.flush().await?;
            out = Vec::new();
        }
    }
}

async fn sink(listener: TcpListener) -> io::Result<()> {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = answer(tcp).await;
        });
    }
}

async fn sink_unix(listener: UnixListener) -> io::Result<()> {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = answer(stream).await;
        });
    }
}

async fn terminator(listener: TcpListener, certs: &Path, upstream: Option<SocketAddr>) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(certs)?));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(STEP_TIMEOUT, acceptor.accept(tcp)).await else {
                return;
            };
            match upstream {
                None => {
                    let _ = answer(tls).await;
                }
                Some(upstream) => relay(tls, upstream).await,
            }
        });
    }
}

/// `plain-fwd`: the forwarding terminator without TLS.
async fn forwarder(listener: TcpListener, upstream: SocketAddr) -> io::Result<()> {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(relay(tcp, upstream));
    }
}

/// A TCP connection to `upstream` for this client, then bytes copied both ways (tokio's
/// `copy_bidirectional`, 8 KiB buffers) until either side ends.
async fn relay<S: AsyncRead + AsyncWrite + Unpin>(mut client: S, upstream: SocketAddr) {
    let Ok(Ok(mut up)) = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(upstream)).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
}

// ---------------------------------------------------------------------------------------------
// Clients

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}
type Conn = Box<dyn Io>;

/// Where and how clients connect. `tls` is `None` for the plain-TCP ceiling.
#[derive(Clone)]
struct Dialer {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    /// TCP_NODELAY on the client socket (everything but the bulk senders).
    nodelay: bool,
    /// The WebSocket path, for MQTT over wss://.
    ws: Option<String>,
    /// The local address to connect from (the system's choice when `None`).
    source: Option<IpAddr>,
}

impl Dialer {
    fn new(target: &Target, config: Option<ClientConfig>) -> io::Result<Dialer> {
        let tls = match (target.plain, config) {
            (true, _) => None,
            (false, Some(c)) => Some(TlsConnector::from(Arc::new(c))),
            (false, None) => Some(TlsConnector::from(Arc::new(client_config(target)?))),
        };
        Ok(Dialer { addr: target.addr, tls, nodelay: true, ws: target.ws.clone(), source: target.source })
    }

    async fn tcp(&self) -> io::Result<TcpStream> {
        let Some(source) = self.source else { return TcpStream::connect(self.addr).await };
        let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(self.addr).await
    }

    /// TCP, TLS, CONNECT, CONNACK. Returns the stream and whether the TLS session was resumed.
    async fn open(&self, client_id: &str) -> io::Result<(Conn, bool)> {
        let fut = async {
            let tcp = self.tcp().await?;
            tcp.set_nodelay(self.nodelay)?;
            let (mut conn, resumed): (Conn, bool) = match &self.tls {
                None => (Box::new(tcp), false),
                Some(c) => {
                    let name = ServerName::try_from("localhost").map_err(|e| other(e.to_string()))?;
                    let tls = c.connect(name, tcp).await?;
                    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
                    match &self.ws {
                        Some(path) => (Box::new(ws_upgrade(tls, path).await?), resumed),
                        None => (Box::new(tls), resumed),
                    }
                }
            };
            conn.write_all(&connect_packet(client_id)).await?;
            conn.flush().await?;
            let mut ack = [0u8; 4];
            conn.read_exact(&mut ack).await?;
            if ack.first() != Some(&0x20) || ack.get(3) != Some(&0) {
                return Err(other(format!("CONNACK refused: {ack:02x?}")));
            }
            Ok((conn, resumed))
        };
        tokio::time::timeout(STEP_TIMEOUT, fut).await.map_err(|_| other("timed out"))?
    }
}

/// The client's side of the upgrade: request, then the server's 101 head.
async fn ws_upgrade<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, path: &str) -> io::Result<WsConn<S>> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await?;
    s.flush().await?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 4096 {
            return Err(other("upgrade answer too long"));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(other("closed during the upgrade"));
        }
        head.extend_from_slice(&chunk[..n]);
    };
    if !head.starts_with(b"HTTP/1.1 101 ") {
        return Err(other(format!("upgrade refused: {}", String::from_utf8_lossy(&head))));
    }
    Ok(WsConn { inner: s, rbuf: head.split_off(end), left: 0, wbuf: Vec::new(), closed: false })
}

/// A WebSocket client as a byte stream: each write one masked binary frame (mask key 0, which the
/// server still applies), reads the payloads of the server's frames. Enough for the load generators.
struct WsConn<S> {
    inner: S,
    /// Bytes read and not yet consumed: frame headers and payload.
    rbuf: Vec<u8>,
    /// Payload bytes of the current frame not yet handed out.
    left: usize,
    /// Framed bytes not yet written.
    wbuf: Vec<u8>,
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    fn poll_drain(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return std::task::Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.drain(..n);
        }
        std::task::Poll::Ready(Ok(()))
    }

    /// A server frame header at the front of `rbuf`: (opcode, header length, payload length).
    fn header(&self) -> Option<(u8, usize, usize)> {
        let b = &self.rbuf;
        let (len, at) = match *b.get(1)? & 0x7f {
            126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
            127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
            n => (n as usize, 2),
        };
        Some((b[0] & 0x0f, at, len))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsConn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.left > 0 && !this.rbuf.is_empty() {
                let n = this.left.min(this.rbuf.len()).min(buf.remaining());
                buf.put_slice(&this.rbuf[..n]);
                this.rbuf.drain(..n);
                this.left -= n;
                return std::task::Poll::Ready(Ok(()));
            }
            if this.left == 0 {
                if let Some((opcode, at, len)) = this.header() {
                    if opcode == 8 {
                        return std::task::Poll::Ready(Ok(()));
                    }
                    this.rbuf.drain(..at);
                    // Binary and continuation payloads are the stream; control frames are skipped.
                    if opcode <= 2 {
                        this.left = len;
                    } else if this.rbuf.len() >= len {
                        this.rbuf.drain(..len);
                    } else {
                        return std::task::Poll::Ready(Err(other("split control frame")));
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = tokio::io::ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return std::task::Poll::Ready(Ok(()));
            }
            this.rbuf.extend_from_slice(rb.filled());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsConn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        this.wbuf.push(0x82);
        match data.len() {
            n if n < 126 => this.wbuf.push(0x80 | n as u8),
            n if n <= 0xffff => {
                this.wbuf.push(0x80 | 126);
                this.wbuf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                this.wbuf.push(0x80 | 127);
                this.wbuf.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        this.wbuf.extend_from_slice(&[0; 4]);
        this.wbuf.extend_from_slice(data);
        // Start writing now; what doesn't fit goes with the next write or flush.
        if let std::task::Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return std::task::Poll::Ready(Err(e));
        }
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// A close frame (1000), then TLS close_notify and FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            this.closed = true;
            this.wbuf.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
        }
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

async fn close(mut conn: Conn) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.shutdown()).await;
}

/// Runs the futures concurrently on this thread and returns their results in order.
async fn join_all<T, F: Future<Output = T>>(futs: Vec<F>) -> Vec<T> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

#[derive(Default)]
struct Tally {
    ok: u64,
    resumed: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.resumed += other.resumed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn error(&mut self, e: io::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// Handshake storm. With `resume`, each client has its own session store, is given a ticket by one
/// full handshake before the clock starts, and then reconnects presenting its latest ticket.
async fn storm(target: Target, concurrency: usize, duration: Duration, resume: bool) -> io::Result<serde_json::Value> {
    let concurrency = concurrency.clamp(1, 4096);
    let base = client_config(&target)?;
    let mut dialers = Vec::new();
    for _ in 0..concurrency {
        let mut c = base.clone();
        if resume {
            c.resumption = Resumption::in_memory_sessions(8);
        }
        dialers.push(Dialer::new(&target, Some(c))?);
    }
    let mut warm = Tally::default();
    if resume {
        let results = join_all(dialers.iter().enumerate().map(|(w, d)| d.open_and_close(w, 0)).collect()).await;
        for r in results {
            match r {
                Ok(_) => warm.ok += 1,
                Err(e) => warm.error(e),
            }
        }
    }
    let start = Instant::now();
    let deadline = start + duration;
    let workers = dialers.iter().enumerate().map(|(w, d)| async move {
        let mut t = Tally::default();
        let mut n = 1u64;
        while Instant::now() < deadline {
            match d.open_and_close(w, n).await {
                Ok(resumed) => {
                    t.ok += 1;
                    t.resumed += u64::from(resumed);
                }
                Err(e) => {
                    t.error(e);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            n += 1;
        }
        t
    });
    let mut total = Tally::default();
    for t in join_all(workers.collect()).await {
        total.add(t);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(json!({
        "mode": if resume { "resume" } else { "handshakes" },
        "ok": total.ok,
        "resumed": total.resumed,
        "errors": total.errors,
        "warmup_errors": warm.errors,
        "first_error": total.first_error.or(warm.first_error),
        "seconds": elapsed,
        "rate": total.ok as f64 / elapsed,
    }))
}

impl Dialer {
    async fn open_and_close(&self, worker: usize, n: u64) -> io::Result<bool> {
        let (conn, resumed) = self.open(&format!("hs-{}-{worker}-{n}", std::process::id())).await?;
        close(conn).await;
        Ok(resumed)
    }
}

async fn throughput(
    target: Target,
    size: usize,
    clients: usize,
    duration: Duration,
    nodelay: bool,
) -> io::Result<serde_json::Value> {
    let mut dialer = Dialer::new(&target, None)?;
    dialer.nodelay = nodelay;
    let packet = publish_packet(size.clamp(1, 256 * 1024 * 1024));
    let mut conns = Vec::new();
    for i in 0..clients.clamp(1, 1024) {
        conns.push(dialer.open(&format!("tp-{}-{i}", std::process::id())).await?.0);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let packet = &packet;
    let results = join_all(
        conns
            .into_iter()
            .map(|mut conn| async move {
                let mut bytes = 0u64;
                let mut error = None;
                while Instant::now() < deadline {
                    // One write per PUBLISH, as an MQTT client library does: one TLS record each.
                    if let Err(e) = conn.write_all(packet).await {
                        error = Some(e.to_string());
                        break;
                    }
                    bytes += packet.len() as u64;
                }
                let _ = conn.flush().await;
                close(conn).await;
                (bytes, error)
            })
            .collect(),
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let bytes: u64 = results.iter().map(|r| r.0).sum();
    let first_error = results.into_iter().find_map(|r| r.1);
    Ok(json!({
        "mode": "throughput",
        "nodelay": nodelay,
        "size": size,
        "clients": clients,
        "bytes": bytes,
        "seconds": elapsed,
        "mb_per_s": bytes as f64 / elapsed / 1e6,
        "error": first_error,
    }))
}

async fn ping(target: Target, count: usize, warmup: usize) -> io::Result<serde_json::Value> {
    let dialer = Dialer::new(&target, None)?;
    let (mut conn, _) = dialer.open(&format!("ping-{}", std::process::id())).await?;
    let count = count.clamp(1, 10_000_000);
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup.min(1_000_000) + count {
        let t = Instant::now();
        let step = async {
            conn.write_all(&PINGREQ).await?;
            conn.flush().await?;
            let mut resp = [0u8; 2];
            conn.read_exact(&mut resp).await?;
            if resp != PINGRESP {
                return Err(other(format!("expected PINGRESP, got {resp:02x?}")));
            }
            Ok(())
        };
        tokio::time::timeout(STEP_TIMEOUT, step).await.map_err(|_| other("ping timed out"))??;
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    close(conn).await;
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&samples, p);
    let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    Ok(json!({
        "mode": "ping",
        "count": samples.len(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "mean_us": mean,
        "max_us": samples.last().copied().unwrap_or(0.0),
    }))
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank; 0 when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0)
}

/// How long a device of the reconnect storm keeps trying before it counts as not back.
const STORM_DEADLINE: Duration = Duration::from_secs(120);

/// The loopback address device `i` of a fleet connects from with `--spread-sources`: 127.1.0.1 onwards
/// (127.0.0.0/8 is all loopback, so no set-up is needed), away from 127.0.0.1 and 127.0.0.2.
fn fleet_source(i: usize) -> IpAddr {
    let base = u32::from(Ipv4Addr::new(127, 1, 0, 1));
    IpAddr::V4(Ipv4Addr::from(base.saturating_add(u32::try_from(i).unwrap_or(u32::MAX))))
}

/// 0..n in a random order (Fisher–Yates with xorshift, seeded from the clock: no statistics rest on it).
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
    let mut x = (nanos as u64) | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

async fn reconnect(
    target: Target,
    count: usize,
    concurrency: usize,
    spread_sources: bool,
) -> io::Result<serde_json::Value> {
    let count = count.clamp(1, 1_000_000);
    let base = client_config(&target)?;
    let mut dialers = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = base.clone();
        c.resumption = Resumption::in_memory_sessions(2);
        let mut d = Dialer::new(&target, Some(c))?;
        if spread_sources {
            d.source = Some(fleet_source(i));
        }
        dialers.push(std::rc::Rc::new(d));
    }
    // Connect every device (a bounded number at a time) and hold it: each now has a ticket.
    let gate = std::rc::Rc::new(tokio::sync::Semaphore::new(concurrency.clamp(1, 4096)));
    let mut first = tokio::task::JoinSet::new();
    for (i, d) in dialers.iter().enumerate() {
        let (d, gate) = (d.clone(), gate.clone());
        first.spawn_local(async move {
            let _turn = gate.acquire().await;
            d.open(&format!("storm-{}-{i}", std::process::id())).await.map(|(c, _)| c)
        });
    }
    let mut held = Vec::with_capacity(count);
    let mut setup = Tally::default();
    while let Some(r) = first.join_next().await {
        match r.map_err(|e| other(e.to_string()))? {
            Ok(c) => {
                held.push(c);
                setup.ok += 1;
            }
            Err(e) => setup.error(e),
        }
    }
    // The established connection whose round trip is watched, on its own thread and runtime.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (target, stop) = (target.clone(), stop.clone());
        std::thread::spawn(move || -> io::Result<Vec<(Instant, f64)>> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let (mut conn, _) = Dialer::new(&target, None)?.open("storm-watch").await?;
                let mut samples = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && samples.len() < 10_000_000 {
                    let t = Instant::now();
                    conn.write_all(&PINGREQ).await?;
                    conn.flush().await?;
                    let mut resp = [0u8; 2];
                    tokio::time::timeout(STEP_TIMEOUT, conn.read_exact(&mut resp))
                        .await
                        .map_err(|_| other("ping timed out"))??;
                    samples.push((t, t.elapsed().as_nanos() as f64 / 1000.0));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                close(conn).await;
                Ok(samples)
            })
        })
    };
    // This thread's storm of client handshakes shares the core with the watcher (and the sink): at the
    // lowest priority it can't delay the watched round trip, which then shows what the server does.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        eprintln!("could not lower the storm generator's priority: {e}");
    }
    // Quiet samples first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Devices come back in no particular order: behind a round-robin balancer, the order they first
    // connected in would otherwise send every one back to the same replica (or every one to the other).
    let order = shuffled(count);
    // Every device drops at once, then all reconnect at once with their tickets.
    drop(held);
    let start = Instant::now();
    let mut storm = tokio::task::JoinSet::new();
    let retries = std::rc::Rc::new(std::cell::Cell::new(0u64));
    for i in order {
        let (d, retries) = (dialers[i].clone(), retries.clone());
        storm.spawn_local(async move {
            loop {
                match d.open(&format!("storm-{}-{i}", std::process::id())).await {
                    Ok((c, resumed)) => return Ok((start.elapsed(), resumed, c)),
                    Err(e) if start.elapsed() > STORM_DEADLINE => return Err(e),
                    // A refused or timed-out device retries soon, as device firmware does.
                    Err(_) => {
                        retries.set(retries.get() + 1);
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
            }
        });
    }
    let mut back = Vec::with_capacity(count);
    let mut tally = Tally::default();
    let mut again = Vec::with_capacity(count);
    while let Some(r) = storm.join_next().await {
        match r.map_err(|e| other(e.to_string()))? {
            Ok((t, resumed, c)) => {
                back.push(t.as_secs_f64() * 1000.0);
                tally.ok += 1;
                tally.resumed += u64::from(resumed);
                again.push(c);
            }
            Err(e) => tally.error(e),
        }
    }
    let all_back = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = watcher.join().map_err(|_| other("watcher panicked"))??;
    drop(again);
    back.sort_by(f64::total_cmp);
    let pct = percentile;
    let mut quiet: Vec<f64> = samples.iter().filter(|(t, _)| *t < start).map(|(_, us)| *us).collect();
    let mut during: Vec<f64> =
        samples.iter().filter(|(t, _)| *t >= start && *t <= start + all_back).map(|(_, us)| *us).collect();
    quiet.sort_by(f64::total_cmp);
    during.sort_by(f64::total_cmp);
    Ok(json!({
        "mode": "reconnect",
        "devices": count,
        "connected_before": setup.ok,
        "setup_errors": setup.errors,
        "back": tally.ok,
        "retries": retries.get(),
        "sources": if spread_sources { count } else { 1 },
        "errors": tally.errors,
        "first_error": tally.first_error.or(setup.first_error),
        "all_back_s": all_back.as_secs_f64(),
        "connack_p50_ms": pct(&back, 0.5),
        "connack_p99_ms": pct(&back, 0.99),
        "resumed_share": tally.resumed as f64 / tally.ok.max(1) as f64,
        "ping_quiet_p99_us": pct(&quiet, 0.99),
        "ping_storm_p99_us": pct(&during, 0.99),
        "ping_storm_samples": during.len(),
    }))
}

/// How often `noisy` looks for its stop file.
const STOP_POLL: Duration = Duration::from_millis(50);

async fn noisy(
    target: Target,
    concurrency: usize,
    duration: Duration,
    stop_file: Option<&Path>,
) -> io::Result<serde_json::Value> {
    // Resumption off (client_config's default): every attempt that gets in costs a full handshake.
    let dialer = Dialer::new(&target, None)?;
    let stop = std::cell::Cell::new(false);
    let start = Instant::now();
    let deadline = start + duration;
    let (stop, dialer) = (&stop, &dialer);
    let watch = async move {
        while !stop.get() && Instant::now() < deadline {
            if stop_file.is_some_and(Path::exists) {
                stop.set(true);
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        stop.set(true);
        Tally::default()
    };
    let loops = (0..concurrency.clamp(1, 1024)).map(|w| {
        Box::pin(async move {
            let mut t = Tally::default();
            let mut n = 0u64;
            while !stop.get() && Instant::now() < deadline {
                match dialer.open_and_close(w, n).await {
                    Ok(_) => t.ok += 1,
                    // At once again, whatever went wrong: that is what makes it noisy.
                    Err(e) => t.error(e),
                }
                n += 1;
                // A refusal can come back without a wait; let the stop watch run.
                tokio::task::yield_now().await;
            }
            t
        }) as Pin<Box<dyn Future<Output = Tally> + '_>>
    });
    let mut futs: Vec<Pin<Box<dyn Future<Output = Tally> + '_>>> = vec![Box::pin(watch)];
    futs.extend(loops);
    let mut total = Tally::default();
    for t in join_all(futs).await {
        total.add(t);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let attempts = total.ok + total.errors;
    Ok(json!({
        "mode": "noisy",
        "source": target.source,
        "concurrency": concurrency,
        "attempts": attempts,
        "ok": total.ok,
        "refused": total.errors,
        "first_error": total.first_error,
        "seconds": elapsed,
        "attempt_rate": attempts as f64 / elapsed,
        "ok_rate": total.ok as f64 / elapsed,
    }))
}

async fn idle(target: Target, count: usize, concurrency: usize, hold_file: &Path) -> io::Result<serde_json::Value> {
    let dialer = Dialer::new(&target, None)?;
    let count = count.clamp(1, 1_000_000);
    let concurrency = concurrency.clamp(1, count);
    let start = Instant::now();
    let per_worker = count.div_ceil(concurrency);
    let dialer = &dialer;
    let results = join_all(
        (0..concurrency)
            .map(|w| async move {
                let mut held = Vec::new();
                let mut t = Tally::default();
                for i in 0..per_worker {
                    if w * per_worker + i >= count {
                        break;
                    }
                    match dialer.open(&format!("idle-{}-{w}-{i}", std::process::id())).await {
                        Ok((c, _)) => {
                            held.push(c);
                            t.ok += 1;
                        }
                        Err(e) => t.error(e),
                    }
                }
                (held, t)
            })
            .collect(),
    )
    .await;
    let mut total = Tally::default();
    let mut held = Vec::new();
    for (h, t) in results {
        held.extend(h);
        total.add(t);
    }
    let line = json!({
        "mode": "idle",
        "connected": total.ok,
        "errors": total.errors,
        "first_error": total.first_error,
        "seconds": start.elapsed().as_secs_f64(),
    });
    // The driver reads this line, measures the proxy's RSS, then creates the hold file.
    println!("{line}");
    let held_since = Instant::now();
    while !hold_file.exists() && held_since.elapsed() < MAX_HOLD {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    Ok(json!({}))
}

// ---------------------------------------------------------------------------------------------
// Charts

/// The benchmark's charts: one per figure group, a block of horizontal bars per figure, each target's
/// bar its value divided by the baseline target's (`terminator-fwd`, the line at 1). Drawn with
/// plotters' SVG backend in pixel coordinates: horizontal bars keep forty target names readable.
mod chart {
    use std::io;
    use std::path::Path;

    use plotters::element::DashedPathElement;
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    use serde::Deserialize;

    /// What the driver writes for one chart.
    #[derive(Deserialize)]
    pub struct Data {
        pub title: String,
        /// A line under the title: what the bars are, which way is better, the conditions.
        #[serde(default)]
        pub note: String,
        /// The target every bar is divided by.
        pub baseline: String,
        pub groups: Vec<Group>,
    }

    /// One figure: a block of bars.
    #[derive(Deserialize)]
    pub struct Group {
        pub name: String,
        pub bars: Vec<Bar>,
        /// Other references in the same units, e.g. the single-core throughput bound.
        #[serde(default)]
        pub markers: Vec<Marker>,
    }

    #[derive(Deserialize)]
    pub struct Bar {
        pub target: String,
        /// The target's value divided by the baseline's.
        pub ratio: f64,
        /// The value itself, as the table prints it.
        pub label: String,
    }

    #[derive(Deserialize)]
    pub struct Marker {
        pub ratio: f64,
        pub label: String,
    }

    const WIDTH: i32 = 980;
    /// Right edge of the target names.
    const NAMES: i32 = 200;
    /// Where a bar of ratio 0 starts and where the longest one ends (its label goes right of it).
    const LEFT: i32 = 210;
    const RIGHT: i32 = 740;
    const ROW: i32 = 18;
    const BAR: i32 = 13;
    const HEAD: i32 = 24;
    const GAP: i32 = 10;
    const TOP: i32 = 70;
    const FOOT: i32 = 34;
    /// Each line of the note below its first.
    const NOTE_LINE: i32 = 16;

    const MQTLS: RGBColor = RGBColor(31, 119, 180);
    const HAPROXY: RGBColor = RGBColor(214, 39, 40);
    const BASE: RGBColor = RGBColor(40, 40, 40);
    const OTHER: RGBColor = RGBColor(175, 175, 175);
    const MARK: RGBColor = RGBColor(255, 127, 14);
    const NOTE: RGBColor = RGBColor(90, 90, 90);

    pub fn write(data: &Path, out: &Path) -> io::Result<()> {
        let text = std::fs::read_to_string(data)?;
        let d: Data = serde_json::from_str(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", data.display())))?;
        std::fs::write(out, render(&d)?)
    }

    fn failed<E: std::fmt::Debug>(e: E) -> io::Error {
        io::Error::other(format!("drawing the chart: {e:?}"))
    }

    fn style(size: i32, color: RGBColor, bold: bool, h: HPos) -> TextStyle<'static> {
        let font = ("sans-serif", size).into_font();
        let font = if bold { font.style(FontStyle::Bold) } else { font };
        TextStyle { font, color: color.to_backend_color(), pos: Pos::new(h, VPos::Center) }
    }

    pub fn render(d: &Data) -> io::Result<String> {
        let rows: i32 = d.groups.iter().map(|g| HEAD + ROW * g.bars.len() as i32 + GAP).sum();
        let notes: Vec<&str> = d.note.lines().collect();
        let top = TOP + NOTE_LINE * notes.len().saturating_sub(1) as i32;
        let height = top + rows + FOOT;
        let max = d
            .groups
            .iter()
            .flat_map(|g| g.bars.iter().map(|b| b.ratio).chain(g.markers.iter().map(|m| m.ratio)))
            .filter(|r| r.is_finite())
            .fold(1.0f64, f64::max)
            * 1.02;
        let x = |r: f64| LEFT + (r.clamp(0.0, max) / max * f64::from(RIGHT - LEFT)).round() as i32;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH as u32, height as u32)).into_drawing_area();
            root.fill(&WHITE).map_err(failed)?;
            root.draw(&Text::new(d.title.clone(), (12, 18), style(18, BASE, true, HPos::Left))).map_err(failed)?;
            for (i, line) in notes.iter().enumerate() {
                let at = (12, 42 + NOTE_LINE * i as i32);
                root.draw(&Text::new(line.to_string(), at, style(12, NOTE, false, HPos::Left))).map_err(failed)?;
            }
            // The baseline: a dashed line at 1 through every group, under the bars and their labels.
            let one = x(1.0);
            root.draw(&Text::new(format!("{} = 1", d.baseline), (one, top - 10), style(12, BASE, false, HPos::Center)))
                .map_err(failed)?;
            root.draw(&DashedPathElement::new(vec![(one, top - 2), (one, top + rows)], 4, 3, BASE.stroke_width(1)))
                .map_err(failed)?;
            let mut y = top;
            for g in &d.groups {
                root.draw(&Text::new(g.name.clone(), (12, y + HEAD / 2), style(14, BASE, true, HPos::Left)))
                    .map_err(failed)?;
                let top = y + HEAD;
                for (i, b) in g.bars.iter().enumerate() {
                    let mid = top + ROW * i as i32 + ROW / 2;
                    let (color, bold) = match b.target.as_str() {
                        "mqtls" => (MQTLS, true),
                        "haproxy" => (HAPROXY, true),
                        t if t == d.baseline => (BASE, false),
                        _ => (OTHER, false),
                    };
                    let name = if b.target == "haproxy" { "HAProxy ◆".to_string() } else { b.target.clone() };
                    root.draw(&Text::new(
                        name,
                        (NAMES, mid),
                        style(12, if bold { color } else { BASE }, bold, HPos::Right),
                    ))
                    .map_err(failed)?;
                    let end = x(b.ratio).max(LEFT + 1);
                    root.draw(&Rectangle::new([(LEFT, mid - BAR / 2), (end, mid + BAR / 2)], color.filled()))
                        .map_err(failed)?;
                    let value = format!("{:.2}×  {}", b.ratio, b.label);
                    let label = style(11, BASE, bold, HPos::Left);
                    // A white ground, so that the baseline or a marker does not run through the text.
                    let (w, _) = root.estimate_text_size(&value, &label).map_err(failed)?;
                    let ground = [(end + 4, mid - ROW / 2 + 2), (end + 8 + w as i32, mid + ROW / 2 - 2)];
                    root.draw(&Rectangle::new(ground, WHITE.filled())).map_err(failed)?;
                    root.draw(&Text::new(value, (end + 6, mid), label)).map_err(failed)?;
                }
                let bottom = top + ROW * g.bars.len() as i32;
                for m in &g.markers {
                    let at = x(m.ratio);
                    root.draw(&PathElement::new(vec![(at, top), (at, bottom)], MARK.stroke_width(2)))
                        .map_err(failed)?;
                    root.draw(&Text::new(m.label.clone(), (at + 4, bottom + 5), style(11, MARK, true, HPos::Left)))
                        .map_err(failed)?;
                }
                y = bottom + GAP;
            }
            let legend = format!(
                "Each bar: the target's figure ÷ {}'s in the same run. Blue: mqtls. Red ◆: HAProxy. Dark: {}.",
                d.baseline, d.baseline
            );
            root.draw(&Text::new(legend, (12, height - FOOT / 2), style(12, NOTE, false, HPos::Left)))
                .map_err(failed)?;
            root.present().map_err(failed)?;
        }
        Ok(svg)
    }
}

/// The integration tests' real parts (Mosquitto on a free port, mqtls in-process), for the tests below.
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(test)]
mod tests {
    use super::*;
    use mqtls::config::{Config, Layer, RunArgs};
    use tokio_util::sync::CancellationToken;

    /// The benchmark PKI in a temporary directory (kept while the first value lives) and a running sink.
    async fn certs_and_sink() -> (tempfile::TempDir, PathBuf, SocketAddr, tokio::task::JoinHandle<io::Result<()>>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().to_path_buf();
        write_certs(&certs).expect("certs");
        let sink_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink_addr = sink_listener.local_addr().expect("addr");
        (dir, certs, sink_addr, tokio::spawn(sink(sink_listener)))
    }

    /// The load generator against an in-process mqtls in front of the sink, briefly: a check that the
    /// benchmark's programs work (handshakes complete, tickets resume, bytes and pings flow), not a
    /// measurement.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_generator_drives_mqtls_and_the_sink() {
        let (_dir, certs, sink_addr, sink_task) = certs_and_sink().await;

        let args = RunArgs {
            settings: Layer {
                listen: Some("127.0.0.1:0".into()),
                upstream: Some(sink_addr.to_string()),
                cert: Some(certs.join("server.crt")),
                key: Some(certs.join("server.key")),
                client_ca: Some(certs.join("ca.crt")),
                ..Layer::default()
            },
            ..RunArgs::default()
        };
        // Built as the binary builds it.
        let app = mqtls::App::bind(Config::load(&args).expect("config"), None).await.expect("app");
        let addr = *app.listen_addrs().first().expect("listener");
        let target = Target { addr, certs: certs.clone(), plain: false, tls12: false, ws: None, source: None };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run(shutdown.clone()));

        let full = storm(target.clone(), 4, Duration::from_secs(1), false).await.expect("handshakes");
        assert!(full["ok"].as_u64().unwrap_or(0) > 0, "{full}");
        assert_eq!(full["errors"], 0, "{full}");
        assert_eq!(full["resumed"], 0, "{full}");

        let resumed = storm(target.clone(), 4, Duration::from_secs(1), true).await.expect("resume");
        assert!(resumed["resumed"].as_u64().unwrap_or(0) > 0, "{resumed}");

        let tls12 = Target { tls12: true, ..target.clone() };
        let resumed = storm(tls12, 2, Duration::from_millis(500), true).await.expect("TLS 1.2 resume");
        assert!(resumed["resumed"].as_u64().unwrap_or(0) > 0, "{resumed}");
        assert_eq!(resumed["errors"], 0, "{resumed}");

        let tp = throughput(target.clone(), 1024, 2, Duration::from_millis(300), false).await.expect("throughput");
        assert!(tp["bytes"].as_u64().unwrap_or(0) > 0, "{tp}");

        let p = ping(target.clone(), 20, 2).await.expect("ping");
        assert_eq!(p["count"], 20, "{p}");

        let plain = Target { addr: sink_addr, certs, plain: true, tls12: false, ws: None, source: None };
        let direct = storm(plain, 2, Duration::from_millis(300), false).await.expect("plain");
        assert!(direct["ok"].as_u64().unwrap_or(0) > 0, "{direct}");

        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        sink_task.abort();
    }

    /// The load generator over wss:// against an in-process mqtls with `protocol = websockets`: the
    /// WSS rows of the benchmark run the same programs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_generator_drives_mqtls_over_websockets() {
        let (_dir, certs, sink_addr, sink_task) = certs_and_sink().await;
        let args = RunArgs {
            settings: Layer {
                listen: Some("127.0.0.1:0".into()),
                upstream: Some(sink_addr.to_string()),
                cert: Some(certs.join("server.crt")),
                key: Some(certs.join("server.key")),
                client_ca: Some(certs.join("ca.crt")),
                protocol: Some(mqtls::config::ListenerProtocol::Websockets),
                ..Layer::default()
            },
            ..RunArgs::default()
        };
        let app = mqtls::App::bind(Config::load(&args).expect("config"), None).await.expect("app");
        let addr = *app.listen_addrs().first().expect("listener");
        let target = Target { addr, certs, plain: false, tls12: false, ws: Some("/mqtt".into()), source: None };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run(shutdown.clone()));

        let full = storm(target.clone(), 4, Duration::from_secs(1), false).await.expect("handshakes");
        assert!(full["ok"].as_u64().unwrap_or(0) > 0, "{full}");
        assert_eq!(full["errors"], 0, "{full}");
        let tp = throughput(target.clone(), 16384, 2, Duration::from_millis(300), false).await.expect("throughput");
        assert!(tp["bytes"].as_u64().unwrap_or(0) > 0, "{tp}");
        assert!(tp["error"].is_null(), "{tp}");
        let p = ping(target.clone(), 20, 2).await.expect("ping");
        assert_eq!(p["count"], 20, "{p}");

        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        sink_task.abort();
    }

    /// The forwarding terminator relays the sink's answers: a check that the ceiling with an upstream
    /// really goes through one, not a measurement.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwarding_terminator_relays_through_the_sink() {
        let (_dir, certs, sink_addr, sink_task) = certs_and_sink().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind terminator");
        let target = Target {
            addr: listener.local_addr().expect("addr"),
            certs: certs.clone(),
            plain: false,
            tls12: false,
            ws: None,
            source: None,
        };
        let term_certs = certs.clone();
        let term = tokio::spawn(async move { terminator(listener, &term_certs, Some(sink_addr)).await });

        let full = storm(target.clone(), 2, Duration::from_millis(300), false).await.expect("handshakes");
        assert!(full["ok"].as_u64().unwrap_or(0) > 0, "{full}");
        assert_eq!(full["errors"], 0, "{full}");
        let orphaned = answers_came_through(target, sink_task).await;
        assert!(orphaned["errors"].as_u64().unwrap_or(0) > 0, "{orphaned}");
        term.abort();
    }

    /// Pings get their answers through `target`; then, with the sink gone, no CONNECT is answered any
    /// more: the answers came through the sink. Returns that last attempt's result.
    async fn answers_came_through(
        target: Target,
        sink_task: tokio::task::JoinHandle<std::io::Result<()>>,
    ) -> serde_json::Value {
        let p = ping(target.clone(), 20, 2).await.expect("ping");
        assert_eq!(p["count"], 20, "{p}");
        sink_task.abort();
        let _ = sink_task.await;
        let orphaned = storm(target, 1, Duration::from_millis(200), false).await.expect("handshakes");
        assert_eq!(orphaned["ok"], 0, "{orphaned}");
        orphaned
    }

    /// mqtls in this runtime, with the benchmark PKI, in front of `upstream`, with `edit`'s settings.
    async fn mqtls_with(certs: &Path, upstream: String, edit: impl FnOnce(&mut Layer)) -> common::Mqtls {
        let mut settings = Layer {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some(upstream),
            cert: Some(certs.join("server.crt")),
            key: Some(certs.join("server.key")),
            client_ca: Some(certs.join("ca.crt")),
            ..Layer::default()
        };
        edit(&mut settings);
        let args = RunArgs { settings, ..RunArgs::default() };
        common::Mqtls::start(Config::load(&args).expect("config")).await
    }

    fn tls_target(addr: SocketAddr, certs: &Path) -> Target {
        Target { addr, certs: certs.to_path_buf(), plain: false, tls12: false, ws: None, source: None }
    }

    /// The `storm` figure's program at a tiny N against mqtls and a real Mosquitto: every device is
    /// back, with its ticket, and the figures it prints hang together.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnect_storm_brings_every_device_back_resumed() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_certs(dir.path()).expect("certs");
        let broker = common::Mosquitto::start();
        let proxy = mqtls_with(dir.path(), format!("127.0.0.1:{}", broker.port), |_| {}).await;
        let target = tls_target(proxy.addr, dir.path());

        let r = tokio::task::LocalSet::new().run_until(reconnect(target, 8, 4, false)).await.expect("reconnect");
        assert_eq!(r["connected_before"], 8, "{r}");
        assert_eq!(r["back"], 8, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["resumed_share"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        let all_back_ms = r["all_back_s"].as_f64().unwrap_or(0.0) * 1000.0;
        let (p50, p99) = (r["connack_p50_ms"].as_f64().unwrap_or(-1.0), r["connack_p99_ms"].as_f64().unwrap_or(-1.0));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= all_back_ms && all_back_ms < 60_000.0, "{r}");
        assert!(r["ping_quiet_p99_us"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        proxy.stop().await;
    }

    /// The `noisy` figure's premise: with `max_conn_rate_per_source`, the noisy source (127.0.0.2) is
    /// refused at accept beyond its rate, while a fleet spread over its own addresses is never refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_source_rate_refuses_the_noisy_source_but_not_a_spread_fleet() {
        let (_dir, certs, sink_addr, sink_task) = certs_and_sink().await;
        let rate = 2;
        let proxy = mqtls_with(&certs, sink_addr.to_string(), |l| l.max_conn_rate_per_source = Some(rate)).await;
        let fleet = tls_target(proxy.addr, &certs);
        let noise = Target { source: Some("127.0.0.2".parse().expect("ip")), ..fleet.clone() };

        let local = tokio::task::LocalSet::new();
        let seconds = 3.0;
        let noisy = local.spawn_local(async move { noisy(noise, 4, secs(seconds), None).await });
        let storm = local.run_until(reconnect(fleet, 6, 3, true)).await.expect("reconnect");
        let noisy = local.run_until(noisy).await.expect("join").expect("noisy");

        assert_eq!(storm["back"], 6, "{storm}");
        assert_eq!(storm["retries"], 0, "{storm}");
        assert_eq!(storm["sources"], 6, "{storm}");
        assert!(noisy["refused"].as_u64().unwrap_or(0) > 0, "{noisy}");
        // The bucket starts full (`rate` tokens) and refills at `rate` a second.
        let most = u64::from(rate) + (f64::from(rate) * noisy["seconds"].as_f64().unwrap_or(0.0)).ceil() as u64;
        assert!(noisy["ok"].as_u64().unwrap_or(u64::MAX) <= most, "{noisy}");
        proxy.stop().await;
        sink_task.abort();
    }

    /// `plain-fwd` really forwards: the sink's answers come back through it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_forwarder_relays_through_the_sink() {
        let (_dir, certs, sink_addr, sink_task) = certs_and_sink().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind forwarder");
        let target = Target { plain: true, ..tls_target(listener.local_addr().expect("addr"), &certs) };
        let fwd = tokio::spawn(forwarder(listener, sink_addr));
        let tp = throughput(target.clone(), 16384, 2, Duration::from_millis(200), false).await.expect("throughput");
        assert!(tp["bytes"].as_u64().unwrap_or(0) > 0 && tp["error"].is_null(), "{tp}");
        answers_came_through(target, sink_task).await;
        fwd.abort();
    }

    /// A chart names every target, marks HAProxy, draws the baseline and the markers.
    #[test]
    fn chart_draws_every_bar_the_baseline_and_the_markers() {
        let data: chart::Data = serde_json::from_value(json!({
            "title": "Throughput",
            "note": "higher is better",
            "baseline": "terminator-fwd",
            "groups": [
                {"name": "16 KiB", "bars": [
                    {"target": "terminator-fwd", "ratio": 1.0, "label": "600 MB/s"},
                    {"target": "mqtls", "ratio": 1.25, "label": "750 MB/s"},
                    {"target": "haproxy", "ratio": 1.05, "label": "630 MB/s"}],
                 "markers": [{"ratio": 1.6, "label": "single-core bound"}]},
                {"name": "1 KiB", "bars": [{"target": "stunnel", "ratio": 0.3, "label": "201 MB/s"}]}
            ]
        }))
        .expect("chart data");
        let svg = chart::render(&data).expect("render");
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in ["Throughput", "terminator-fwd = 1", "mqtls", "HAProxy ◆", "stunnel", "1.25×", "single-core bound"]
        {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
        // The background, and per bar the bar and its label's ground.
        assert_eq!(svg.matches("<rect").count(), 1 + 2 * 4, "{svg}");
    }

    #[test]
    fn framer_answers_connect_and_pingreq_across_split_reads() {
        let mut stream = connect_packet("x");
        stream.extend_from_slice(&publish_packet(20_000));
        stream.extend_from_slice(&PINGREQ);
        for split in [1, 2, 3, 7, 100, stream.len()] {
            let mut f = Framer::default();
            let mut out = Vec::new();
            for chunk in stream.chunks(split) {
                f.feed(chunk, &mut out).expect("valid stream");
            }
            assert_eq!(out, [&CONNACK[..], &PINGRESP[..]].concat(), "split {split}");
        }
    }
}
