//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/certs`, and `POST /reload` (what
//! `mqtls reload` asks). Off unless `admin` is set.
//!
//! It keeps serving while the proxy drains, so the orchestrator sees `/readyz` turn 503 for the whole
//! drain, and it stops after the drain.
//!
//! `/reload` is the one route that changes anything, so it answers only requests from this host: the
//! admin address is often bound to every address for probes and scrapes (a pod's), and whoever can
//! reach those must not be able to make the process re-read its files at will.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::health::Health;
use super::metrics::Metrics;
use crate::reload::{ProcessReload, ReloadReason};
use crate::tls::TlsHandle;

/// How long one admin request may take end to end; probes must never pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoints read: the metrics, each listener's readiness and certificates. Read-only
/// views, so the admin server depends on nothing of the connection path.
pub(crate) struct View {
    pub(crate) metrics: Arc<Metrics>,
    /// What `POST /reload` runs: the same reload as SIGHUP, with its outcome.
    pub(crate) reload: Arc<ProcessReload>,
    /// Per listener: its name (or address) for `/certs`, its readiness, its TLS configuration.
    pub(crate) listeners: Vec<(String, Arc<Health>, Arc<TlsHandle>)>,
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, view: View, shutdown: CancellationToken) {
    let view = Arc::new(view);
    if let Ok(addr) = listener.local_addr() {
        info!(admin = %addr, "admin endpoints: /metrics /healthz /readyz /certs, POST /reload from this host");
    }
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    debug!(%err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let view = view.clone();
        let local = tcp.local_addr().unwrap_or(peer);
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let view = view.clone();
                let (method, path) = (req.method().clone(), req.uri().path().to_string());
                async move { Ok::<_, Infallible>(route(&view, &method, &path, peer, local).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn route(view: &View, method: &Method, path: &str, peer: SocketAddr, local: SocketAddr) -> Response<Full<Bytes>> {
    if path == "/reload" {
        return reload(view, method, peer, local).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let Some((_, _, first_tls)) = view.listeners.first() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no listeners\n".into());
    };
    match path {
        "/metrics" => {
            let mut r = text(StatusCode::OK, view.metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if view.listeners.iter().all(|(_, h, _)| h.ready()) => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/certs" => {
            // One listener: its certificates, as always; several: an object keyed by listener name.
            let body = if view.listeners.len() == 1 {
                serde_json::to_string_pretty(&*first_tls.certificates())
            } else {
                let by_name: serde_json::Map<String, serde_json::Value> = view
                    .listeners
                    .iter()
                    .map(|(name, _, tls)| {
                        (name.clone(), serde_json::to_value(&*tls.certificates()).unwrap_or_default())
                    })
                    .collect();
                serde_json::to_string_pretty(&by_name)
            }
            .unwrap_or_default();
            let mut r = text(StatusCode::OK, body + "\n");
            r.headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics /healthz /readyz /certs\n".into()),
    }
}

/// `POST /reload`: reloads as SIGHUP does and answers when it is over: 200 with what is in service,
/// or 422 with the refusal on one line (what was in service stays).
async fn reload(view: &View, method: &Method, peer: SocketAddr, local: SocketAddr) -> Response<Full<Bytes>> {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into());
    }
    if !from_this_host(peer.ip(), local.ip()) {
        debug!(%peer, "POST /reload refused: not from this host");
        return text(StatusCode::FORBIDDEN, "reload is answered only for clients on this host\n".into());
    }
    info!(%peer, "reload requested (mqtls reload): reloading the configuration file and the TLS files");
    let report = view.reload.run(ReloadReason::Command).await;
    if report.refused() {
        text(StatusCode::UNPROCESSABLE_ENTITY, format!("{}\n", report.refusals()))
    } else {
        text(StatusCode::OK, format!("{}\n", report.summary()))
    }
}

/// Whether a peer is on this host: a loopback address, or the very address it connected to (Linux
/// drops packets from outside that claim a local source address, unless `accept_local` is set).
fn from_this_host(peer: IpAddr, local: IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || peer == local.to_canonical()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::from_this_host;

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn reload_is_answered_for_loopback_and_same_address_peers_only() {
        assert!(from_this_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(from_this_host(ip("127.0.0.1"), ip("10.0.0.5")), "loopback peer, admin on every address");
        assert!(from_this_host(ip("::1"), ip("::1")));
        assert!(from_this_host(ip("::ffff:127.0.0.1"), ip("::ffff:127.0.0.1")), "IPv4 on an IPv6 socket");
        assert!(from_this_host(ip("10.0.0.5"), ip("10.0.0.5")), "admin bound to the host's own address");
        assert!(!from_this_host(ip("10.0.0.7"), ip("10.0.0.5")));
        assert!(!from_this_host(ip("::ffff:10.0.0.7"), ip("::ffff:10.0.0.5")));
        assert!(!from_this_host(ip("2001:db8::7"), ip("2001:db8::5")));
    }
}
