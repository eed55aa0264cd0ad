//! Readiness, one part per listener: set by the part of mqtls that knows it, read by `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::conn::upstream::Upstream;

/// What readiness is made of. Each flag is set by the part of mqtls that knows it.
#[derive(Debug, Default)]
pub(crate) struct Health {
    listening: AtomicBool,
    draining: AtomicBool,
    upstream_ok: AtomicBool,
}

impl Health {
    pub(crate) fn set_listening(&self, v: bool) {
        self.listening.store(v, Ordering::Relaxed);
    }
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    pub(crate) fn set_upstream_ok(&self, v: bool) {
        self.upstream_ok.store(v, Ordering::Relaxed);
    }
    pub(crate) fn upstream_ok(&self) -> bool {
        self.upstream_ok.load(Ordering::Relaxed)
    }
    /// Ready: listener bound (certificates are loaded before it is), broker reachable at the last
    /// check, and not draining.
    pub(crate) fn ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
            && self.upstream_ok.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
    }
}

/// Checks every `interval` that the broker accepts a TCP connection (within `timeout`), for `/readyz`
/// and the `ready` gauge.
pub(crate) async fn check_upstream(
    upstream: Upstream,
    interval: Duration,
    timeout: Duration,
    health: Arc<Health>,
    ready: Gauge,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = match upstream.connect(timeout).await {
            Ok(_) => true,
            Err(err) => {
                if health.upstream_ok() {
                    warn!(%err, "broker unreachable: not ready");
                }
                false
            }
        };
        if ok && !health.upstream_ok() {
            info!(upstream = %upstream, "broker reachable: ready");
        }
        health.set_upstream_ok(ok);
        ready.set(i64::from(ok));
    }
}
