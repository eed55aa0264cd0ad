//! Telling a service manager (systemd's `Type=notify`) when mqtls is ready and when it starts to
//! drain, so `systemctl start` returns once every listener accepts and the SIGHUP handler is in
//! place, and `systemctl reload` sent right after a start is never the signal's default (exit).
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd, or `Type=exec`) every call does nothing.

use sd_notify::NotifyState;
use tracing::warn;

/// Every listener is bound and accepting, and SIGHUP reloads instead of ending the process.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("accepting connections")], "READY");
}

/// The drain has begun: no new connections, established sessions run on until the drain timeout.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining connections")], "STOPPING");
}

fn send(state: &[NotifyState], what: &str) {
    // `false`: keep the variable, so the later STOPPING reaches the manager too.
    if let Err(err) = sd_notify::notify(false, state) {
        warn!(%err, state = what, "could not notify the service manager ($NOTIFY_SOCKET)");
    }
}
