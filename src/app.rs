//! The application: everything a configuration asks for, built once and run until shut down.
//!
//! [`App::bind`] loads every listener's TLS files (through its [`Reloader`]), builds one metrics
//! registry, one [`Proxy`] per listener and binds every socket; [`App::run`] serves them with the
//! process-wide caps, one SIGHUP handler, the reloaders' watch loops, the admin endpoints (with
//! `POST /reload`, which reloads as SIGHUP does and answers with the outcome) and the broker checks
//! behind `/readyz`, until `shutdown` is cancelled and every listener's drain is over.
//! The binary, the tests and the benchmark all start mqtls this way.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::{Config, RunArgs};
use crate::conn::accept::{self, Caps, Stop};
use crate::conn::admission::Admission;
use crate::conn::handle::Proxy;
use crate::conn::handshake_threads::HandshakeThreads;
use crate::conn::socket::{self, PassedError, PassedSockets};
use crate::crl::CrlCache;
use crate::ops::health::check_upstream;
use crate::ops::metrics::Metrics;
use crate::ops::{admin, service_manager};
use crate::reload::{ConfigReload, ProcessReload, ReloadReason, Reloader};
use crate::tls::TlsError;

/// Why the application could not start. Each names the setting and where it was set.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{err} (settings from {origin})")]
    Tls { err: TlsError, origin: String },
    /// Not a `#[source]`: the message already ends with it, and the binary prints the chain.
    #[error("{setting}: cannot bind {addr} (in {origin}): {err}")]
    Bind { setting: &'static str, addr: SocketAddr, origin: String, err: std::io::Error },
    #[error("installing the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Passed(#[from] PassedError),
}

/// One listener, ready to serve.
struct Served {
    socket: TcpListener,
    /// What the listener does with `socket` when it stops.
    stop: Stop,
    proxy: Arc<Proxy>,
    reloader: Arc<Reloader>,
}

/// A configuration, built and bound.
pub struct App {
    config: Config,
    /// The command line the configuration came from, for SIGHUP's re-read of the file.
    args: Option<RunArgs>,
    metrics: Arc<Metrics>,
    listeners: Vec<Served>,
    admin: Option<TcpListener>,
}

impl App {
    /// Loads every listener's TLS files and binds every socket (`listen`, and `admin` if set).
    /// With `args`, SIGHUP re-reads the file they name and swaps in its allow rules.
    pub async fn bind(config: Config, args: Option<RunArgs>) -> Result<App, AppError> {
        App::bind_with(config, args, PassedSockets::default()).await
    }

    /// Like [`App::bind`], serving on the sockets systemd `passed` (socket activation) the listeners
    /// whose `listen` is their address; the other listeners bind their own. A passed socket that no
    /// listener takes is an error.
    pub async fn bind_with(config: Config, args: Option<RunArgs>, mut passed: PassedSockets) -> Result<App, AppError> {
        let metrics = Arc::new(Metrics::new());
        metrics.max_connections.set(config.global.limits.max_connections as i64);
        let global = Arc::new(config.global.clone());
        // One for the process: its limits count every listener's connections.
        let admission = Admission::new(global.admission, global.limits.max_connections);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let origin = config.origin_of(listener);
            // Fetched before the first build, so the listener never serves without the CRLs it could get.
            // A failed fetch is a warning (and retried), not a reason not to start.
            let crls = match listener.tls.crl_fetch.enabled() {
                true => {
                    let cache =
                        CrlCache::new(listener.tls.crl_fetch.clone(), listener.tls.client_ca.clone(), metrics.clone());
                    cache.fetch_all_once().await;
                    Some(cache)
                }
                false => None,
            };
            let reloader = Reloader::with_crls(listener.tls.clone(), global.reload, metrics.clone(), crls.clone())
                .map_err(|err| AppError::Tls { err, origin: origin.clone() })?;
            let bind_error =
                |err| AppError::Bind { setting: "listen", addr: listener.listen, origin: origin.clone(), err };
            let (socket, stop) = match passed.take(listener.listen) {
                Some(socket) => {
                    info!(listen = %listener.listen, "serving the socket systemd passed (socket activation)");
                    (socket, Stop::Close)
                }
                None => {
                    let socket = socket::bind(listener.listen, listener.reuse_port).map_err(bind_error)?;
                    (socket, if listener.reuse_port { Stop::HandOver } else { Stop::Close })
                }
            };
            let socket = TcpListener::from_std(socket).map_err(bind_error)?;
            let mut proxy = Proxy::new(listener.clone(), global.clone(), reloader.handle(), metrics.clone());
            proxy.crls = crls;
            proxy.admission = admission.clone();
            listeners.push(Served { socket, stop, proxy: Arc::new(proxy), reloader: Arc::new(reloader) });
        }
        if let Some(addr) = passed.leftover() {
            return Err(PassedError::Unmatched { addr, origin: config.origin() }.into());
        }
        let admin = match global.admin {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|err| AppError::Bind {
                setting: "admin",
                addr,
                origin: config.origin(),
                err,
            })?),
            None => None,
        };
        Ok(App { config, args, metrics, listeners, admin })
    }

    /// The address each listener is bound to, in configuration order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.socket.local_addr().ok()).collect()
    }

    /// The admin endpoints' address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Each listener's proxy, in configuration order.
    pub fn proxies(&self) -> Vec<Arc<Proxy>> {
        self.listeners.iter().map(|l| l.proxy.clone()).collect()
    }

    /// Each listener's reloader, in configuration order.
    pub fn reloaders(&self) -> Vec<Arc<Reloader>> {
        self.listeners.iter().map(|l| l.reloader.clone()).collect()
    }

    /// Serves until `shutdown` is cancelled and every listener's drain is over; the admin endpoints
    /// stay up until then, so probes see the drain. Fails only if the SIGHUP handler can't be installed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let App { config, args, metrics, listeners, admin } = self;
        // Installed before the first connection is accepted (and before systemd hears READY=1), so a
        // SIGHUP from then on reloads instead of killing the process.
        let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
        let side_tasks = TaskTracker::new();
        let side_stop = CancellationToken::new();
        let reloaders: Vec<Arc<Reloader>> = listeners.iter().map(|l| l.reloader.clone()).collect();
        for reloader in &reloaders {
            let task = reloader.clone().start(side_stop.clone());
            side_tasks.spawn(async move {
                let _ = task.await;
            });
        }
        for l in &listeners {
            // One timer for every deadline of the listener's connections (expiry, lifetime, spread closes).
            side_tasks.spawn(l.proxy.tls.connections().clone().run_timer(side_stop.clone()));
            if let Some(crls) = l.proxy.crls.clone() {
                side_tasks.spawn(crls.run(l.reloader.clone(), side_stop.clone()));
            }
        }
        let rules = listeners.iter().map(|l| (l.proxy.rules.clone(), l.proxy.tls.clone())).collect();
        let config_reload = args.map(|args| Arc::new(ConfigReload::new(args, config.clone(), rules, metrics.clone())));
        let labels = listeners.iter().map(|l| l.proxy.listener.label());
        let reload = Arc::new(ProcessReload::new(config_reload, labels.zip(reloaders).collect()));
        let stop = side_stop.clone();
        let on_hup = reload.clone();
        side_tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = hup.recv() => {}
                }
                info!("SIGHUP: reloading the configuration file and the TLS files");
                // Each part logs its own outcome; SIGHUP has no one to answer.
                let report = on_hup.run(ReloadReason::Sighup).await;
                if report.refused() {
                    error!(reason = %report.refusals(), "SIGHUP reload refused; what is in service stays");
                }
            }
        });
        if let Some(admin) = admin {
            let view = admin::View {
                metrics: metrics.clone(),
                reload,
                listeners: listeners
                    .iter()
                    .map(|l| (l.proxy.listener.label(), l.proxy.health.clone(), l.proxy.tls.clone()))
                    .collect(),
            };
            side_tasks.spawn(admin::serve(admin, view, side_stop.clone()));
            for l in &listeners {
                let settings = &l.proxy.listener;
                side_tasks.spawn(check_upstream(
                    settings.upstream.clone(),
                    config.global.upstream_check_interval,
                    config.global.limits.upstream_connect_timeout,
                    l.proxy.health.clone(),
                    metrics.upstream_ready(&settings.metrics_label()),
                    side_stop.clone(),
                ));
            }
        }
        // With busy_poll, each listener's task spins after that listener's traffic.
        for bp in listeners.iter().filter_map(|l| l.proxy.busy_poll.clone()) {
            let stop = side_stop.clone();
            side_tasks.spawn(async move { bp.run(stop).await });
        }
        if let Some(every) = service_manager::watchdog_interval() {
            side_tasks.spawn(service_manager::feed_watchdog(every, side_stop.clone()));
        }
        side_tasks.close();
        let servers = TaskTracker::new();
        // The caps belong to the process: every listener draws on the same ones.
        let caps = Caps::new(&config.global.limits);
        // Accept loops and handshakes on threads of lower priority than established connections.
        let handshake_threads = HandshakeThreads::start(config.global.threads, config.global.handshake_nice);
        for l in listeners {
            let (caps, shutdown) = (caps.clone(), shutdown.clone());
            handshake_threads.spawn(|splice_on| {
                servers.track_future(accept::serve(l.socket, l.stop, l.proxy, caps, splice_on, shutdown))
            });
        }
        servers.close();
        // Listeners bound, handlers installed: a supervisor may send traffic and SIGHUP from here on.
        service_manager::ready();
        servers.wait().await;
        side_stop.cancel();
        side_tasks.wait().await;
        Ok(())
    }
}
