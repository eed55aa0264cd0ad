//! One connection's life: TLS handshake → read the CONNECT → map the certificate identity onto it →
//! connect the broker → forward the edited CONNECT and anything pipelined behind it → splice.
//! The allow rules and the client-id policy are applied before the broker is contacted.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{field, info, info_span, warn, Instrument, Span};

use crate::config::{Global, Listener};
use crate::conn::admission::{Admission, IdentityGuard, SourceGuard};
use crate::conn::budget::Share;
use crate::conn::busy_poll::BusyPoll;
use crate::conn::error::ConnError;
use crate::conn::handshake_threads;
use crate::conn::proxy_protocol::{self, ClientAddrs, InboundError, TlsFacts, UpstreamProxyProtocol};
use crate::conn::splice::{Splice, SpliceStats, Spliced};
use crate::conn::upstream::UpstreamStream;
use crate::conn::websocket::{self, client::ClientStream, ListenerProtocol};
use crate::crl::CrlCache;
use crate::mqtt::connect::{self, Connect, Edit, ProtocolVersion, Refusal};
use crate::ops::health::Health;
use crate::ops::metrics::{ListenerMetrics, Metrics};
use crate::recheck::{self, Event, PeerChain, Standing};
use crate::tls::{ClientAuth, TlsHandle};
use crate::x509::identity;
use crate::x509::policy::{ClientIdPolicy, ClientUsername, PasswordPolicy};
use crate::x509::rules::{self as authorize, Rules};
use crate::x509::ClientCert;

/// How long a refusal CONNACK may take to leave: a client that doesn't read must not hold the task.
const CONNACK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every connection of one listener shares: its settings and the process-wide ones, the current
/// TLS configuration, and the operator-facing state (metrics, health). Built by [`crate::app::App`].
pub struct Proxy {
    pub(crate) listener: Arc<Listener>,
    pub(crate) global: Arc<Global>,
    /// Shared with the [`crate::reload::Reloader`], which publishes rotated configurations into it.
    pub(crate) tls: Arc<TlsHandle>,
    /// This listener's counters in the process's one registry (shared with the reloaders).
    pub(crate) metrics: ListenerMetrics,
    /// This listener's part of readiness, read by the admin server.
    pub(crate) health: Arc<Health>,
    /// The allow rules every new connection is checked against; SIGHUP swaps in the file's new ones.
    pub(crate) rules: Arc<ArcSwap<Rules>>,
    /// With `busy_poll`, told of this listener's established traffic.
    pub(crate) busy_poll: Option<Arc<BusyPoll>>,
    /// The CRLs this listener fetches over HTTP (the loop runs in [`crate::app`]); with
    /// `crl_from_distribution_points`, told of each client certificate's distribution points.
    pub(crate) crls: Option<Arc<CrlCache>>,
    /// The process's admission limits, shared by every listener ([`crate::app`] sets the shared one).
    pub(crate) admission: Arc<Admission>,
}

impl Proxy {
    /// A proxy serving whatever configuration `tls` holds at each handshake.
    pub(crate) fn new(listener: Listener, global: Arc<Global>, tls: Arc<TlsHandle>, metrics: Arc<Metrics>) -> Proxy {
        let rules = Arc::new(ArcSwap::from_pointee(listener.authz.clone()));
        let busy_poll = global.busy_poll.map(|window| Arc::new(BusyPoll::new(window)));
        let health = Arc::new(Health::default());
        let admission = Admission::new(global.admission, global.limits.max_connections);
        let metrics = metrics.listener(&listener.metrics_label(), listener.websocket.protocol.as_str());
        Proxy { listener: Arc::new(listener), global, tls, metrics, health, rules, busy_poll, crls: None, admission }
    }

    /// The process's metrics (every listener's), e.g. to render them.
    pub fn all_metrics(&self) -> &Arc<Metrics> {
        self.metrics.root()
    }

    /// Counts a connection that ended before it was spliced, under every metric that describes why.
    fn count_failure(&self, err: &ConnError) {
        err.count(&self.metrics);
    }
}

/// The first part of a connection's life: PROXY header, TLS handshake, CONNECT and every check, the
/// broker's connect and CONNACK, run by the listener's pre-splice drivers ([`crate::conn::accept`]).
/// Returns the rest of its life (the splice), to run as the connection's own task, or `None` when it
/// ended here (counted and logged once). `handshake` is this connection's place among the handshakes in flight, given
/// back once TLS is done; `connect_bytes` its share of the CONNECT budget. With `moves`, this runs on the
/// handshake threads and the splice's first step registers the sockets where it runs.
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: OwnedSemaphorePermit,
    connect_bytes: Share,
    moves: bool,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    // With a trusted load balancer in front, `peer` is the client its PROXY header names (recorded once
    // read) and `proxied_by` the balancer.
    let span = info_span!(
        "conn",
        peer = field::Empty,
        proxied_by = field::Empty,
        identity = field::Empty,
        client_id = field::Empty,
        proto = field::Empty,
        transport = field::Empty,
        listener = field::Empty
    );
    if proxy.listener.websocket.protocol != ListenerProtocol::Mqtt {
        span.record("transport", proxy.listener.websocket.protocol.as_str());
    }
    // With `[[listener]]` blocks, which one: the same name the metrics' `listener` label has.
    if let Some(name) = &proxy.listener.name {
        span.record("listener", name.as_str());
    }
    if !proxy.listener.proxy_protocol.trusts(peer.ip()) {
        span.record("peer", field::display(peer));
    }
    let started = Instant::now();
    let active = proxy.metrics.opened();
    let opened = async {
        let ready = prepare(&proxy, tcp, peer, handshake, connect_bytes).await?;
        open(&proxy, ready).await
    }
    .instrument(span.clone())
    .await;
    let opened = match opened {
        Ok(opened) => opened,
        Err(err) => {
            span.in_scope(|| {
                proxy.count_failure(&err);
                err.log();
            });
            // A WebSocket client's bad frame ends the CONNECT read with the close code it got.
            if let ConnError::ConnectIo(e) = &err {
                websocket::stream::count_violation(&proxy.metrics, e);
            }
            return None;
        }
    };
    span.in_scope(|| info!("open"));
    Some(
        async move {
            let _active = active;
            let opened = match moves {
                true => match opened.rehome() {
                    Ok(opened) => opened,
                    Err(err) => {
                        warn!(%err, "could not move the connection to the established connections' threads; closing it");
                        return;
                    }
                },
                false => opened,
            };
            let (stats, result) = splice_opened(&proxy, opened).await;
            let m = &proxy.metrics;
            m.spliced(started.elapsed().as_secs_f64(), stats.client_to_upstream, stats.upstream_to_client);
            let (bytes_in, bytes_out) = (stats.client_to_upstream, stats.upstream_to_client);
            let duration_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(()) => info!(bytes_in, bytes_out, duration_ms, "closed"),
                Err(err) => {
                    // A WebSocket client's bad frame ends the splice with the close code it got.
                    websocket::stream::count_violation(m, &err);
                    info!(bytes_in, bytes_out, duration_ms, %err, "closed");
                }
            }
        }
        .instrument(span),
    )
}

/// A client past every check, with the bytes to send the broker first.
struct Ready {
    client: ClientStream,
    /// PROXY header (if any), the edited CONNECT, and the packets pipelined behind it.
    first: Vec<u8>,
    version: ProtocolVersion,
    /// What the connection is held to once spliced.
    standing: Standing,
    /// Its places under the admission limits, released when it ends.
    held: Option<Box<Held>>,
}

/// TLS handshake, CONNECT, allow rules, identity and client-id policies, and the CONNECT edit.
async fn prepare(
    proxy: &Proxy,
    mut tcp: TcpStream,
    peer: SocketAddr,
    handshake: OwnedSemaphorePermit,
    mut connect_bytes: Share,
) -> Result<Ready, ConnError> {
    let limits = proxy.global.limits;
    // Nagle would hold back PINGRESPs and small publishes behind a delayed ACK.
    let _ = tcp.set_nodelay(true);
    // The handshake deadline covers a load balancer's PROXY header too.
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    // Every listener looks at the first byte: a PROXY header from a source that may not send one (on a
    // listener without accept_proxy_protocol, from any source) is refused as such, not as a TLS error.
    let addrs = Box::pin(client_addrs(proxy, &mut tcp, peer, deadline)).await?;
    // A load balancer's connections are admitted per source on the client its header names (the
    // others were at accept); its own health checks (no client address) are not limited.
    let mut held = Held::default();
    if proxy.listener.proxy_protocol.trusts(peer.ip()) && addrs.source != peer {
        match proxy.admission.admit_source(addrs.source.ip()) {
            Ok(guard) => held.source = guard,
            Err(limited) => {
                proxy.admission.log_refusal(limited, addrs.source.ip());
                return Err(ConnError::RateLimited(limited));
            }
        }
    }
    // Registered before the configuration is taken, so a trust change published after it is seen; only
    // where there can be something to watch (a client certificate, or a lifetime).
    let watchable = proxy.listener.tls.client_auth != ClientAuth::None || proxy.listener.recheck.max_lifetime.is_some();
    let registration = watchable.then(|| proxy.tls.connections().register());
    let acceptor = proxy.tls.acceptor();
    let handshake_started = Instant::now();
    // The handshake future and the TLS stream (each over 1 KiB) live on the heap, so this task's own
    // state stays small: a task's future is as large as its largest state for its whole life, and
    // tens of thousands of idle connections each pay for it.
    let tls = Box::new(
        tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(tcp)))
            .await
            .map_err(|_| ConnError::HandshakeTimeout(limits.handshake_timeout))?
            .map_err(ConnError::Handshake)?,
    );
    proxy.metrics.handshake(tls.get_ref().1, handshake_started.elapsed().as_secs_f64());
    // A WebSocket listener's upgrade is part of the handshake: same deadline, same place in the cap.
    let mut client = match proxy.listener.websocket.protocol {
        ListenerProtocol::Mqtt => ClientStream::Tls(tls),
        ListenerProtocol::Websockets => {
            let upgrade = Box::pin(websocket::upgrade(*tls, &proxy.listener.websocket));
            let ws = tokio::time::timeout_at(deadline, upgrade)
                .await
                .map_err(|_| ConnError::WebSocket(websocket::UpgradeError::Timeout))?
                .map_err(ConnError::WebSocket)?;
            proxy.metrics.websocket_upgrade();
            ClientStream::WebSocket(Box::new(ws))
        }
    };
    drop(handshake);

    // Check the allow rules and map the identity now; refusing needs the CONNECT's version, so the
    // verdicts wait for it. A client without a certificate is subject to neither.
    let policy = proxy.listener.identity;
    // The leaf is parsed once for the rules, the identity and the PROXY header, in a block: the parse
    // is gone before the first await, so it does not stay in this future.
    let (allowed, identity, upstream_header, standing, leaf_sha256) = {
        let leaf = client.tls().peer_certificates().and_then(|chain| chain.first()).map(|der| ClientCert::parse(der));
        let parsed = leaf.as_ref().and_then(|leaf| leaf.parsed().ok());
        if let (Some(crls), Some(parsed)) = (&proxy.crls, parsed) {
            crls.saw_client_cert(parsed);
        }
        let not_after = parsed.map(|cert| cert.validity().not_after.timestamp());
        // Only hashed when max_conn_per_identity asks for it.
        let leaf_sha256 = match (proxy.global.admission.per_identity, &leaf) {
            (Some(_), Some(leaf)) => Some(<[u8; 32]>::from(Sha256::digest(leaf.der()))),
            _ => None,
        };
        let standing = Standing::new(&proxy.listener.recheck, registration, not_after);
        let allowed = leaf.as_ref().map(|leaf| authorize::admits_cert(&proxy.rules.load(), leaf));
        let identity = leaf.as_ref().map(|leaf| identity::username_of(leaf, policy.username_from));
        if let Some(Ok(id)) = &identity {
            Span::current().record("identity", id.as_str());
        }
        (allowed, identity, upstream_header(proxy, client.tls(), leaf.as_ref(), addrs), standing, leaf_sha256)
    };

    let (buf, connect) = match tokio::time::timeout(
        limits.connect_timeout,
        read_connect(&mut client, limits.max_connect_size, &mut connect_bytes),
    )
    .await
    {
        Err(_) => return Err(ConnError::ConnectTimeout(limits.connect_timeout)),
        Ok(Err(err @ ConnError::OverBudget { version, .. })) => {
            return Err(match version {
                Some(version) => refuse(&mut client, version, Refusal::ServerBusy, err).await,
                None => err,
            });
        }
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

    if let Some(Err(refused)) = allowed {
        return Err(refuse(&mut client, version, Refusal::NotAuthorized, refused.into()).await);
    }
    let (username, drop_password, client_id) = match identity {
        // No certificate (client_auth optional or none): the broker authenticates the client itself.
        None => (None, false, None),
        Some(Err(e)) => return Err(refuse(&mut client, version, Refusal::NotAuthorized, e.into()).await),
        Some(Ok(id)) => {
            if let Some(sha256) = leaf_sha256 {
                match proxy.admission.admit_identity(sha256) {
                    Ok(guard) => held.identity = guard,
                    Err(max) => {
                        let err = ConnError::IdentityLimit { identity: id, max };
                        return Err(refuse(&mut client, version, Refusal::QuotaExceeded, err).await);
                    }
                }
            }
            if policy.client_username == ClientUsername::Reject {
                if let Some(sent) = connect.username(&buf).filter(|sent| *sent != id) {
                    let err = ConnError::UsernameMismatch { sent: sent.to_string(), identity: id };
                    return Err(refuse(&mut client, version, Refusal::NotAuthorized, err).await);
                }
            }
            let client_id = match policy.client_id {
                ClientIdPolicy::Keep => None,
                ClientIdPolicy::FromIdentity => Some(id.clone()),
                ClientIdPolicy::RequirePrefix => {
                    let sent = connect.client_id(&buf);
                    if !sent.starts_with(id.as_str()) {
                        let err = ConnError::ClientIdRejected { client_id: sent.to_string(), identity: id };
                        return Err(refuse(&mut client, version, Refusal::IdentifierRejected, err).await);
                    }
                    None
                }
            };
            (Some(id), policy.password == PasswordPolicy::Drop, client_id)
        }
    };
    // Without the rewrite the broker takes the identity from the PROXY v2 header's CN, and the CONNECT
    // goes on byte for byte (a `reject` policy above still refuses a CONNECT naming someone else).
    let edit = if proxy.listener.proxy_protocol.rewrite_connect {
        Edit { username: username.as_deref(), drop_password, client_id: client_id.as_deref() }
    } else {
        Edit::default()
    };
    let edited = match connect::edit(&buf, &connect, &edit) {
        Ok(bytes) => bytes,
        Err(e) => return Err(refuse(&mut client, version, Refusal::BadUsernameOrPassword, e.into()).await),
    };
    // The PROXY header goes first (the broker reads it before any MQTT), then the CONNECT, then the
    // packets the client pipelined behind it, in order.
    let pipelined = buf.get(connect.packet_len()..).unwrap_or_default();
    let first = [upstream_header.as_slice(), &edited, pipelined].concat();
    let held = (held.source.is_some() || held.identity.is_some()).then(|| Box::new(held));
    Ok(Ready { client, first, version, standing, held })
}

/// The admission places a connection holds for its whole life (boxed, and only when some limit is on).
#[derive(Default)]
struct Held {
    source: Option<SourceGuard>,
    identity: Option<IdentityGuard>,
}

/// The client's addresses: the TCP connection's, or, from a trusted load balancer (with
/// `accept_proxy_protocol`), those its PROXY header carries. Records the span's `peer` (and `proxied_by`) when they were left for the header.
async fn client_addrs(
    proxy: &Proxy,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<ClientAddrs, ConnError> {
    let settings = &proxy.listener.proxy_protocol;
    let own = own_addrs(proxy, tcp, peer);
    if !settings.trusts(peer.ip()) {
        return match tokio::time::timeout_at(deadline, proxy_protocol::refuse_untrusted_header(tcp)).await {
            Ok(Err(e)) => Err(ConnError::ProxyProtocol(e)),
            // A silent client: the handshake that follows times out at the same deadline.
            Ok(Ok(())) | Err(_) => Ok(own),
        };
    }
    let read = tokio::time::timeout_at(deadline, proxy_protocol::read_inbound(tcp)).await;
    let span = Span::current();
    match read {
        Ok(Ok(Some(addrs))) => {
            span.record("peer", field::display(addrs.source));
            span.record("proxied_by", field::display(peer));
            Ok(addrs)
        }
        // LOCAL / UNKNOWN: the balancer's own connection (a health check); its addresses are the real ones.
        Ok(Ok(None)) => {
            span.record("peer", field::display(peer));
            Ok(own)
        }
        Ok(Err(e)) => {
            span.record("peer", field::display(peer));
            Err(ConnError::ProxyProtocol(e))
        }
        Err(_) => {
            span.record("peer", field::display(peer));
            Err(ConnError::ProxyProtocol(InboundError::Timeout))
        }
    }
}

/// The connection's own addresses. The local one is asked of the kernel only when a header to the
/// broker will carry it (otherwise nothing reads it).
fn own_addrs(proxy: &Proxy, tcp: &TcpStream, peer: SocketAddr) -> ClientAddrs {
    let destination = match proxy.listener.proxy_protocol.upstream {
        UpstreamProxyProtocol::Off => peer,
        _ => tcp.local_addr().unwrap_or(peer),
    };
    ClientAddrs { source: peer, destination }
}

/// The PROXY header for the broker (empty when `upstream_proxy_protocol` is off).
fn upstream_header(
    proxy: &Proxy,
    tls: &rustls::ServerConnection,
    leaf: Option<&ClientCert<'_>>,
    addrs: ClientAddrs,
) -> Vec<u8> {
    let version = proxy.listener.proxy_protocol.upstream;
    let cn = match version {
        UpstreamProxyProtocol::Off => return Vec::new(),
        UpstreamProxyProtocol::V1 => None,
        // The header's CN is the certificate's CN whatever username_from says (HAProxy's meaning), and
        // only one that is usable as a username.
        UpstreamProxyProtocol::V2 => leaf.and_then(|leaf| identity::username_of(leaf, identity::UsernameFrom::Cn).ok()),
    };
    proxy_protocol::outbound_header(version, addrs, &TlsFacts::of(tls, cn))
}

/// Connects the broker, sends it the prepared bytes, then splices.
/// A connection whose broker has answered its CONNECT: all that the splice needs.
struct Opened {
    client: ClientStream,
    upstream: UpstreamStream,
    standing: Standing,
    /// Its places under the admission limits, released when it ends.
    _held: Option<Box<Held>>,
    /// Bytes already moved each way (the CONNECT and what came with it, the CONNACK).
    sent: SpliceStats,
}

impl Opened {
    /// Moves both sockets to the runtime this is called in ([`handshake_threads`]).
    fn rehome(mut self) -> std::io::Result<Opened> {
        handshake_threads::rehome(self.client.tcp_mut())?;
        self.upstream = match self.upstream {
            UpstreamStream::Tcp(s) => UpstreamStream::Tcp(TcpStream::from_std(s.into_std()?)?),
            UpstreamStream::Unix(s) => UpstreamStream::Unix(tokio::net::UnixStream::from_std(s.into_std()?)?),
        };
        Ok(self)
    }
}

/// Connects the broker, sends it the prepared bytes, and passes its answer (the CONNACK) on.
async fn open(proxy: &Proxy, ready: Ready) -> Result<Opened, ConnError> {
    let Ready { mut client, first, version, standing, held } = ready;
    let limits = proxy.global.limits;
    let mut upstream = match proxy.listener.upstream.connect(limits.upstream_connect_timeout).await {
        Ok(u) => u,
        Err(e) => return Err(refuse(&mut client, version, Refusal::ServerUnavailable, e.into()).await),
    };
    upstream.write_all(&first).await.map_err(ConnError::UpstreamWrite)?;
    // The broker's first bytes (its CONNACK) must come within the deadline: a broker that accepts TCP
    // and then hangs would otherwise hold the device in limbo until its own timer fires.
    let connack_timeout = limits.connack_timeout;
    let mut reply = vec![0u8; 512];
    let n = match tokio::time::timeout(connack_timeout, upstream.read(&mut reply)).await {
        Err(_) => {
            let err = ConnError::NoConnack(connack_timeout);
            return Err(refuse(&mut client, version, Refusal::ServerUnavailable, err).await);
        }
        Ok(Err(e)) => {
            return Err(refuse(&mut client, version, Refusal::ServerUnavailable, ConnError::UpstreamWrite(e)).await)
        }
        Ok(Ok(0)) => return Err(ConnError::UpstreamClosed),
        Ok(Ok(n)) => n,
    };
    let answer = reply.get(..n).unwrap_or_default();
    client.write_all(answer).await.map_err(ConnError::ClientWrite)?;
    client.flush().await.map_err(ConnError::ClientWrite)?;
    let sent = SpliceStats { client_to_upstream: first.len() as u64, upstream_to_client: n as u64 };
    Ok(Opened { client, upstream, standing, _held: held, sent })
}

/// The connection's life once open: the splice, under its standing.
async fn splice_opened(proxy: &Proxy, opened: Opened) -> (SpliceStats, std::io::Result<()>) {
    let Opened { mut client, upstream, standing, _held, sent } = opened;
    let (mut stats, result) = match upstream {
        UpstreamStream::Tcp(mut s) => splice_while_trusted(proxy, &mut client, &mut s, standing).await,
        UpstreamStream::Unix(mut s) => splice_while_trusted(proxy, &mut client, &mut s, standing).await,
    };
    stats.client_to_upstream += sent.client_to_upstream;
    stats.upstream_to_client += sent.upstream_to_client;
    (stats, result)
}

/// Splices until the session ends or the connection must close: its certificate refused by a
/// re-check after a trust change, expired, or its lifetime over. A closed connection's client gets
/// close_notify; dropping the broker's side then ends the session there without a DISCONNECT, so the
/// broker delivers the client's will.
async fn splice_while_trusted<C, U>(
    proxy: &Proxy,
    client: &mut C,
    upstream: &mut U,
    mut standing: Standing,
) -> (SpliceStats, std::io::Result<()>)
where
    C: AsyncRead + AsyncWrite + Unpin + PeerChain,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut splice = Splice::default();
    let result = loop {
        let spread = proxy.listener.recheck.spread;
        let next = pin!(std::future::poll_fn(|cx| standing.poll_event(cx, spread)));
        let event = match splice.run(client, upstream, proxy.busy_poll.as_deref(), next).await {
            Spliced::Done(result) => break result,
            Spliced::Interrupted(event) => event,
        };
        let reason = match event {
            Event::Recheck => {
                let verdict = match client.peer_chain() {
                    Some(chain) => recheck::verdict(&*proxy.tls.verifier().0, &proxy.rules.load(), chain),
                    None => Ok(()),
                };
                let Err(refused) = verdict else { continue };
                warn!(reason = refused.reason.as_str(), detail = %refused.detail, "closing the connection: the re-check after a trust change refused its certificate");
                refused.reason
            }
            Event::Close(reason) => {
                warn!(reason = reason.as_str(), why = reason.describe(), "closing the connection");
                reason
            }
        };
        proxy.metrics.closed(reason.as_str());
        // Boxed: its timer would otherwise take room in every idle connection's task.
        let _ = Box::pin(tokio::time::timeout(CONNACK_WRITE_TIMEOUT, client.shutdown())).await;
        break Ok(());
    };
    (splice.stats(), result)
}

/// Reads until the buffer starts with a complete CONNECT; returns the buffer (CONNECT plus whatever
/// arrived behind it) and the CONNECT's offsets. The buffer grows only as far as `budget` covers.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_len: usize,
    budget: &mut Share,
) -> Result<(Vec<u8>, Connect), ConnError> {
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
            let more = buf.len().clamp(512, 64 * 1024);
            if !budget.cover(buf.len() + more) {
                return Err(ConnError::OverBudget { held: buf.len(), version: connect::partial_version(&buf) });
            }
            buf.reserve_exact(more);
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{self, TlsFiles};

    /// Tens of thousands of idle connections each hold one of these futures for their whole life; the
    /// TLS stream lives behind a box and the checks before the splice run elsewhere (the listener's
    /// drivers), so it holds only what the splice needs, the re-check's standing included.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(dir.path().join("c.pem"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).expect("write");
        let settings = crate::config::Layer {
            cert: Some(dir.path().join("c.pem")),
            key: Some(dir.path().join("k.pem")),
            client_auth: Some(crate::tls::ClientAuth::None),
            ..Default::default()
        };
        let config = crate::config::Config::from_layers(&settings, None).expect("config");
        let listener = config.listeners.into_iter().next().expect("listener");
        let loaded = tls::build(&listener.tls, &TlsFiles::read(&listener.tls).expect("files")).expect("tls");
        let tls = Arc::new(TlsHandle::new(&loaded));
        let proxy = Arc::new(Proxy::new(listener, Arc::new(config.global), tls, Arc::new(Metrics::new())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (tcp, peer) = listener.accept().await.expect("accept");
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().expect("permit");
        let prepare = handle(proxy, tcp, peer, permit, crate::conn::budget::ConnectBudget::new(0).share(), true);
        /// The size of the connection's own task: the future `handle` returns when the checks pass.
        fn rest_size<F: Future<Output = Option<G>>, G>(_: &F) -> usize {
            std::mem::size_of::<G>()
        }
        let size = rest_size(&prepare);
        assert!(size <= 1300, "connection task future is {size} bytes");
    }
}
