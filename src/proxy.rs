//! One connection's life: TLS handshake → read the CONNECT → map the certificate identity onto it →
//! connect the broker → forward the edited CONNECT and anything pipelined behind it → splice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{field, info, info_span, warn, Instrument, Span};

use crate::config::{ClientUsername, Config, PasswordPolicy};
use crate::connect::{self, Connect, ConnectError, Edit, ProtocolVersion, Refusal};
use crate::identity::{self, IdentityError};
use crate::splice::{splice, SpliceStats};
use crate::tls::{self, TlsError, TlsHandle};
use crate::upstream::{UpstreamError, UpstreamStream};

/// How long a refusal CONNACK may take to leave: a client that doesn't read must not hold the task.
const CONNACK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every connection shares: the validated configuration and the current TLS configuration.
pub struct Proxy {
    pub config: Arc<Config>,
    /// Shared with the [`crate::reload::Reloader`], which publishes rotated configurations into it.
    pub tls: Arc<TlsHandle>,
}

impl Proxy {
    /// Builds the TLS configuration once from the files the config names (no reloading).
    pub fn new(config: Config) -> Result<Proxy, TlsError> {
        let server_config = tls::build_server_config(&config.tls)?;
        Ok(Proxy::with_tls(config, Arc::new(TlsHandle::new(server_config))))
    }

    /// A proxy serving whatever configuration `tls` holds at each handshake.
    pub fn with_tls(config: Config, tls: Arc<TlsHandle>) -> Proxy {
        Proxy { config: Arc::new(config), tls }
    }
}

/// Why a connection ended before or instead of being spliced. Variants double as bounded outcome labels.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("client closed before sending a complete CONNECT")]
    ClosedBeforeConnect,
    #[error("reading CONNECT: {0}")]
    ConnectIo(std::io::Error),
    #[error("refused CONNECT: {0}")]
    BadConnect(#[from] ConnectError),
    #[error("certificate identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("CONNECT username {sent:?} differs from certificate identity {identity:?} (client_username = reject)")]
    UsernameMismatch { sent: String, identity: String },
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("forwarding CONNECT to broker: {0}")]
    UpstreamWrite(std::io::Error),
}

impl ConnError {
    /// Bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ConnError::HandshakeTimeout(_) => "tls_timeout",
            ConnError::Handshake(_) => "tls_failed",
            ConnError::ConnectTimeout(_) => "connect_timeout",
            ConnError::ClosedBeforeConnect | ConnError::ConnectIo(_) => "connect_eof",
            ConnError::BadConnect(_) => "connect_refused",
            ConnError::Identity(_) | ConnError::UsernameMismatch { .. } => "not_authorized",
            ConnError::Upstream(_) | ConnError::UpstreamWrite(_) => "upstream_failed",
        }
    }
}

/// Runs one client connection to its end, logging its outcome once.
pub async fn handle(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr) {
    let span = info_span!("conn", %peer, identity = field::Empty, client_id = field::Empty, proto = field::Empty);
    async move {
        let started = Instant::now();
        match serve_connection(&proxy, tcp).await {
            Ok((stats, Ok(()))) => info!(
                bytes_in = stats.client_to_upstream,
                bytes_out = stats.upstream_to_client,
                duration_ms = started.elapsed().as_millis() as u64,
                "closed"
            ),
            Ok((stats, Err(err))) => info!(
                bytes_in = stats.client_to_upstream,
                bytes_out = stats.upstream_to_client,
                duration_ms = started.elapsed().as_millis() as u64,
                %err,
                "closed"
            ),
            Err(err) => {
                let detail = match &err {
                    ConnError::Handshake(e) => tls::handshake_failure_label(e),
                    ConnError::BadConnect(e) => e.label(),
                    ConnError::Identity(e) => e.label(),
                    ConnError::Upstream(e) => e.label(),
                    _ => "",
                };
                warn!(outcome = err.label(), reason = detail, %err, "refused")
            }
        }
    }
    .instrument(span)
    .await
}

async fn serve_connection(proxy: &Proxy, tcp: TcpStream) -> Result<(SpliceStats, std::io::Result<()>), ConnError> {
    let limits = proxy.config.limits;
    // Nagle would hold back PINGRESPs and small publishes behind a delayed ACK.
    let _ = tcp.set_nodelay(true);
    let acceptor = proxy.tls.acceptor();
    let mut client = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| ConnError::HandshakeTimeout(limits.handshake_timeout))?
        .map_err(ConnError::Handshake)?;

    // Map the identity now; refusing needs the CONNECT's version, so the verdict waits for it.
    let policy = proxy.config.identity;
    let identity = client
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| identity::username(leaf, policy.username_from));
    if let Some(Ok(id)) = &identity {
        Span::current().record("identity", id.as_str());
    }

    let (mut buf, connect) =
        match tokio::time::timeout(limits.connect_timeout, read_connect(&mut client, limits.max_connect_size)).await {
            Err(_) => return Err(ConnError::ConnectTimeout(limits.connect_timeout)),
            Ok(Err(ConnError::BadConnect(e))) => {
                if let Some(ack) = e.connack() {
                    send_and_close(&mut client, &ack).await;
                }
                return Err(e.into());
            }
            Ok(r) => r?,
        };
    let version = connect.version();
    Span::current().record("proto", version.as_str());
    Span::current().record("client_id", connect.client_id(&buf));

    let (username, drop_password) = match identity {
        // No certificate (client_auth optional or none): the broker authenticates the client itself.
        None => (None, false),
        Some(Err(e)) => return Err(refuse(&mut client, version, Refusal::NotAuthorized, e.into()).await),
        Some(Ok(id)) => {
            if policy.client_username == ClientUsername::Reject {
                if let Some(sent) = connect.username(&buf).filter(|sent| *sent != id) {
                    let err = ConnError::UsernameMismatch { sent: sent.to_string(), identity: id };
                    return Err(refuse(&mut client, version, Refusal::NotAuthorized, err).await);
                }
            }
            (Some(id), policy.password == PasswordPolicy::Drop)
        }
    };
    forward(proxy, client, &mut buf, &connect, username.as_deref(), drop_password).await
}

/// Edits the CONNECT, connects the broker, sends the CONNECT and any pipelined bytes, then splices.
async fn forward<C>(
    proxy: &Proxy,
    mut client: C,
    buf: &mut Vec<u8>,
    connect: &Connect,
    username: Option<&str>,
    drop_password: bool,
) -> Result<(SpliceStats, std::io::Result<()>), ConnError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let version = connect.version();
    let edit = Edit { username, drop_password };
    let mut first = match connect::edit(buf, connect, &edit) {
        Ok(bytes) => bytes,
        Err(e) => return Err(refuse(&mut client, version, Refusal::BadUsernameOrPassword, e.into()).await),
    };
    // Packets the client pipelined behind its CONNECT go out right after it, in order.
    first.extend_from_slice(buf.get(connect.packet_len()..).unwrap_or_default());
    *buf = Vec::new();

    let upstream = match proxy.config.upstream.connect(proxy.config.limits.upstream_connect_timeout).await {
        Ok(u) => u,
        Err(e) => return Err(refuse(&mut client, version, Refusal::ServerUnavailable, e.into()).await),
    };
    match upstream {
        UpstreamStream::Tcp(mut s) => start_splice(&mut client, &mut s, &first).await,
        UpstreamStream::Unix(mut s) => start_splice(&mut client, &mut s, &first).await,
    }
}

async fn start_splice<C, U>(
    client: &mut C,
    upstream: &mut U,
    first: &[u8],
) -> Result<(SpliceStats, std::io::Result<()>), ConnError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    upstream.write_all(first).await.map_err(ConnError::UpstreamWrite)?;
    info!("open");
    let (mut stats, result) = splice(client, upstream).await;
    stats.client_to_upstream += first.len() as u64;
    Ok((stats, result))
}

/// Reads until the buffer starts with a complete CONNECT; returns the buffer (CONNECT plus whatever
/// arrived behind it) and the CONNECT's offsets.
async fn read_connect<S: AsyncRead + Unpin>(stream: &mut S, max_len: usize) -> Result<(Vec<u8>, Connect), ConnError> {
    let mut buf = Vec::with_capacity(512);
    // The reader walks the packet from its start; re-run it only when it can decide something new:
    // while the header and protocol name are arriving, then when the announced length is here, and in
    // between whenever the buffer has doubled (which still catches malformed fields early).
    let mut parsed_at = 0;
    loop {
        let complete = connect::announced_len(&buf).is_some_and(|total| buf.len() >= total);
        if buf.len() < 64 || complete || buf.len() >= parsed_at * 2 {
            parsed_at = buf.len();
            if let Some(connect) = connect::read_connect(&buf, max_len)? {
                return Ok((buf, connect));
            }
        }
        if buf.len() == buf.capacity() {
            // Grow geometrically but never far past the cap: the reader refuses oversize headers early.
            buf.reserve(buf.len().clamp(512, 64 * 1024));
        }
        if stream.read_buf(&mut buf).await.map_err(ConnError::ConnectIo)? == 0 {
            return Err(ConnError::ClosedBeforeConnect);
        }
    }
}

/// Answers with a CONNACK in the client's protocol version (where MQTT has a code for the reason), then closes.
async fn refuse<C: AsyncWrite + Unpin>(
    client: &mut C,
    version: ProtocolVersion,
    why: Refusal,
    err: ConnError,
) -> ConnError {
    if let Some(ack) = connect::connack(version, why) {
        send_and_close(client, &ack).await;
    }
    err
}

async fn send_and_close<C: AsyncWrite + Unpin>(client: &mut C, bytes: &[u8]) {
    let _ = tokio::time::timeout(CONNACK_WRITE_TIMEOUT, async {
        client.write_all(bytes).await?;
        client.shutdown().await
    })
    .await;
}
