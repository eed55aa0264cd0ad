//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/certs`. Off unless `admin` is set.
//!
//! It keeps serving while the proxy drains, so the orchestrator sees `/readyz` turn 503 for the whole
//! drain, and it stops after the drain.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::conn::handle::Proxy;

/// How long one admin request may take end to end; probes must never pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What readiness is made of. Each flag is set by the part of mqtls that knows it.
#[derive(Debug, Default)]
pub struct Health {
    listening: AtomicBool,
    draining: AtomicBool,
    upstream_ok: AtomicBool,
}

impl Health {
    pub fn set_listening(&self, v: bool) {
        self.listening.store(v, Ordering::Relaxed);
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    pub fn set_upstream_ok(&self, v: bool) {
        self.upstream_ok.store(v, Ordering::Relaxed);
    }
    pub fn upstream_ok(&self) -> bool {
        self.upstream_ok.load(Ordering::Relaxed)
    }
    /// Ready: listener bound (certificates are loaded before it is), broker reachable at the last
    /// check, and not draining.
    pub fn ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
            && self.upstream_ok.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
    }
}

/// Checks every `interval` that the broker accepts a TCP connection, for `/readyz`.
pub async fn check_upstream(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(proxy.config.upstream_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = match proxy.config.upstream.connect(proxy.config.limits.upstream_connect_timeout).await {
            Ok(_) => true,
            Err(err) => {
                if proxy.health.upstream_ok() {
                    warn!(%err, "broker unreachable: not ready");
                }
                false
            }
        };
        if ok && !proxy.health.upstream_ok() {
            info!(upstream = %proxy.config.upstream, "broker reachable: ready");
        }
        proxy.health.set_upstream_ok(ok);
    }
}

/// Serves the admin endpoints on `listener` until `shutdown`.
/// `proxies` are every listener's; metrics and `/certs` come from them, readiness needs all of them.
pub async fn serve(listener: TcpListener, proxies: Vec<Arc<Proxy>>, shutdown: CancellationToken) {
    let proxies: Arc<[Arc<Proxy>]> = proxies.into();
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
        let proxies = proxies.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let proxies = proxies.clone();
                async move { Ok::<_, Infallible>(route(&proxies, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn route<B>(proxies: &[Arc<Proxy>], req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let Some(proxy) = proxies.first() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no listeners\n".into());
    };
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, proxy.metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if proxies.iter().all(|p| p.health.ready()) => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/certs" => {
            // One listener: its certificates, as always; several: an object keyed by listener name.
            let body = if proxies.len() == 1 {
                serde_json::to_string_pretty(&*proxy.tls.certificates())
            } else {
                let by_name: serde_json::Map<String, serde_json::Value> = proxies
                    .iter()
                    .map(|p| {
                        let name = p.config.name.clone().unwrap_or_else(|| p.config.listen.to_string());
                        (name, serde_json::to_value(&*p.tls.certificates()).unwrap_or_default())
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
