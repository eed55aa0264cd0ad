//! SIGTERM / SIGINT: the first starts a graceful drain, a second ends the process at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Waits for SIGTERM or SIGINT and cancels `shutdown`; on a second signal exits immediately.
pub async fn watch(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "shutting down: draining connections");
    crate::ops::service_manager::stopping();
    shutdown.cancel();
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    warn!(signal = name, "second signal: exiting without waiting for connections");
    std::process::exit(1);
}
