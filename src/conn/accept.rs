//! The accept loop and the drain: every connection task is tracked so shutdown can wait for them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::conn::admission::{Limited, SourceGuard};
use crate::conn::budget::ConnectBudget;
use crate::conn::handle::{self as proxy, Proxy};

/// Pause after an accept error (e.g. out of file descriptors) so the loop backs off instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The process-wide caps on open connections, handshakes in flight and CONNECT bytes held
/// (`max_connections`, `max_handshakes`, `connect_buffer_budget`): several listeners share one, since
/// what they protect (file descriptors, memory) belongs to the process.
#[derive(Clone)]
pub(crate) struct Caps {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    connect_bytes: ConnectBudget,
}

impl Caps {
    pub(crate) fn new(limits: &super::Limits) -> Caps {
        Caps {
            connections: Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS))),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes.min(Semaphore::MAX_PERMITS))),
            connect_bytes: ConnectBudget::new(limits.connect_buffer_budget),
        }
    }
}

/// The process-wide rate, then (unless `peer` is a trusted load balancer) the per-source limits.
fn admit(proxy: &Proxy, peer: IpAddr) -> Result<Option<SourceGuard>, Limited> {
    proxy.admission.admit_any()?;
    if proxy.listener.proxy_protocol.trusts(peer) {
        return Ok(None);
    }
    proxy.admission.admit_source(peer)
}

/// Serves `listener` until `shutdown` is cancelled, then stops accepting and lets established
/// connections finish for up to the drain timeout before closing the rest. `caps` are shared with the
/// process's other listeners.
pub(crate) async fn serve(listener: TcpListener, proxy: Arc<Proxy>, caps: Caps, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let force_close = CancellationToken::new();
    let Caps { connections, handshakes, connect_bytes } = caps;
    proxy.health.set_listening(true);
    if let Ok(addr) = listener.local_addr() {
        // `listener` is left out for the unnamed (single) listener.
        let name = proxy.listener.name.as_deref();
        info!(listen = %addr, listener = name, upstream = %proxy.listener.upstream, "accepting connections");
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // The rate limits first, before any TLS work; a trusted load balancer's clients are
                    // admitted per source once its header names them (see `handle`).
                    let source = match admit(&proxy, peer.ip()) {
                        Ok(source) => source,
                        Err(limited) => {
                            proxy.metrics.outcome("rate_limited");
                            proxy.admission.log_refusal(limited, peer.ip());
                            continue;
                        }
                    };
                    // Past the limit, close at once: no TLS handshake, the cheapest answer when the
                    // process is saturated (a CONNACK would cost a full handshake first).
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        proxy.metrics.outcome("limit");
                        debug!(%peer, "connection limit reached; closed at accept");
                        continue;
                    };
                    let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                        proxy.metrics.outcome("handshake_limit");
                        debug!(%peer, "handshake limit reached; closed at accept");
                        continue;
                    };
                    let proxy = proxy.clone();
                    let force_close = force_close.clone();
                    let connect_bytes = connect_bytes.share();
                    // A panic in one connection ends only that task: tokio catches it at the task boundary.
                    tracker.spawn(async move {
                        let _permit = permit;
                        let _source = source;
                        tokio::select! {
                            _ = force_close.cancelled() => {}
                            _ = proxy::handle(proxy, tcp, peer, handshake, connect_bytes) => {}
                        }
                    });
                }
                Err(err) => {
                    warn!(%err, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }
    proxy.health.set_draining();
    drop(listener);
    tracker.close();
    let drain = proxy.global.drain_timeout;
    info!(connections = tracker.len(), deadline = ?drain, "listener closed; draining");
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        warn!(connections = tracker.len(), "drain deadline passed; closing remaining connections");
        force_close.cancel();
        tracker.wait().await;
    }
    info!("drained");
}
