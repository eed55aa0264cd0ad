//! Telling a service manager (systemd's `Type=notify`) when mqtls is ready and when it starts to
//! drain, so `systemctl start` returns once every listener accepts and the SIGHUP handler is in
//! place, and `systemctl reload` sent right after a start is never the signal's default (exit).
//!
//! With `WatchdogSec=` set, systemd also expects a sign of life within each period; a runtime that
//! stopped scheduling tasks (a stuck worker) then gets restarted instead of silently refusing devices.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd, or `Type=exec`) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Every listener is bound and accepting, and SIGHUP reloads instead of ending the process.
pub(crate) fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("accepting connections")], "READY");
}

/// The drain has begun: no new connections, established sessions run on until the drain timeout.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining connections")], "STOPPING");
}

fn send(state: &[NotifyState], what: &str) {
    // `false`: keep the variable, so the later STOPPING reaches the manager too.
    if let Err(err) = sd_notify::notify(false, state) {
        warn!(%err, state = what, "could not notify the service manager ($NOTIFY_SOCKET)");
    }
}

/// How often to tell systemd we are alive: half its `WatchdogSec`, or `None` when no watchdog is set
/// for this process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// Feeds systemd's watchdog every `every` from a runtime task (so a runtime that stops scheduling
/// stops feeding it) until `stop`.
pub(crate) async fn feed_watchdog(every: Duration, stop: CancellationToken) {
    info!(every = ?every, "feeding the systemd watchdog");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => send(&[NotifyState::Watchdog], "WATCHDOG"),
        }
    }
}
