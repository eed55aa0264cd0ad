//! mqtls: terminates MQTT-over-TLS, maps the client certificate onto the MQTT CONNECT's username, and
//! splices the rest of the connection to a plain-TCP broker untouched.
//!
//! The folders follow a connection's life and what surrounds it:
//! - [`config`]: the command line and the file, merged once into validated settings;
//! - [`tls`]: the rustls server configuration built from the files on disk, and resumption that never
//!   outlives a client certificate;
//! - [`conn`]: one connection, stage by stage: accept, PROXY header, TLS handshake, CONNECT, identity,
//!   broker, splice;
//! - [`mqtt`]: the CONNECT reader/editor (where the username is rewritten) and the CONNACKs;
//! - [`x509`]: certificate → username, allow rules, certificate descriptions;
//! - [`reload`]: rotated TLS files and SIGHUP;
//! - [`ops`]: admin endpoints, metrics, logging, signals, systemd.
#![forbid(unsafe_code)]
// Nothing reachable from the network may panic: no unwrap/expect/indexing/panic outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod config;
pub mod conn;
pub mod mqtt;
pub mod ops;
pub mod reload;
pub mod tls;
pub mod x509;

pub use conn::accept::serve;
pub use conn::handle::Proxy;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use conn::accept as server;
use ops::{admin, service_manager};

/// One listener as [`run`] takes it: the bound socket, its proxy, and (optionally) the reloader that
/// rotates its TLS files.
pub type Listener = (TcpListener, Arc<Proxy>, Option<Arc<reload::Reloader>>);

/// Runs everything: a proxy on each listener; with its reloader, certificate rotation (file watch,
/// SIGHUP, periodic re-check); with `admin`, the admin endpoints (metrics of the first proxy, which the
/// binary shares between all; ready when every listener is) and the broker checks behind `/readyz`.
/// Returns once `shutdown` is cancelled and every listener's drain is over; the admin endpoints stay
/// up until then, so probes see the drain. Fails only if the SIGHUP handler can't be installed.
pub async fn run(
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let side_tasks = TaskTracker::new();
    let side_stop = CancellationToken::new();
    let proxies: Vec<Arc<Proxy>> = listeners.iter().map(|(_, proxy, _)| proxy.clone()).collect();
    for reloader in listeners.iter().filter_map(|(_, _, r)| r.clone()) {
        // Installs the SIGHUP handler before the first connection is accepted.
        let task = match reloader.start(side_stop.clone()) {
            Ok(task) => task,
            Err(err) => {
                side_stop.cancel();
                return Err(err);
            }
        };
        side_tasks.spawn(async move {
            let _ = task.await;
        });
    }
    if let Some(admin) = admin {
        side_tasks.spawn(admin::serve(admin, proxies.clone(), side_stop.clone()));
        for proxy in &proxies {
            side_tasks.spawn(admin::check_upstream(proxy.clone(), side_stop.clone()));
        }
    }
    // With busy_poll, each listener's task spins after that listener's traffic.
    for bp in proxies.iter().filter_map(|p| p.busy_poll.clone()) {
        let stop = side_stop.clone();
        side_tasks.spawn(async move { bp.run(stop).await });
    }
    if let Some(every) = service_manager::watchdog_interval() {
        side_tasks.spawn(service_manager::feed_watchdog(every, side_stop.clone()));
    }
    side_tasks.close();
    let servers = TaskTracker::new();
    // Global settings: every listener's copy holds the same limits, so the first one's serve all.
    let caps = proxies.first().map(|p| server::Caps::new(&p.config.limits));
    for ((listener, proxy, _), caps) in listeners.into_iter().zip(caps.into_iter().cycle()) {
        servers.spawn(server::serve_with(listener, proxy, caps, shutdown.clone()));
    }
    servers.close();
    // Listeners bound, handlers installed: a supervisor may send traffic and SIGHUP from here on.
    service_manager::ready();
    servers.wait().await;
    side_stop.cancel();
    side_tasks.wait().await;
    Ok(())
}
