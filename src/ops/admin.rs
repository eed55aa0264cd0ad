//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/certs`. Off unless `admin` is set.
//!
//! It keeps serving while the proxy drains, so the orchestrator sees `/readyz` turn 503 for the whole
//! drain, and it stops after the drain.

use std::convert::Infallible;
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
use crate::tls::TlsHandle;

/// How long one admin request may take end to end; probes must never pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoints read: the metrics, each listener's readiness and certificates. Read-only
/// views, so the admin server depends on nothing of the connection path.
pub(crate) struct View {
    pub(crate) metrics: Arc<Metrics>,
    /// Per listener: its name (or address) for `/certs`, its readiness, its TLS configuration.
    pub(crate) listeners: Vec<(String, Arc<Health>, Arc<TlsHandle>)>,
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, view: View, shutdown: CancellationToken) {
    let view = Arc::new(view);
    if let Ok(addr) = listener.local_addr() {
        info!(admin = %addr, "admin endpoints: /metrics /healthz /readyz /certs");
    }
    let tracker = TaskTracker::new();
    loop {
        let (tcp, _) = tokio::select! {
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
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let view = view.clone();
                async move { Ok::<_, Infallible>(route(&view, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn route<B>(view: &View, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let Some((_, _, first_tls)) = view.listeners.first() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no listeners\n".into());
    };
    match req.uri().path() {
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

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
