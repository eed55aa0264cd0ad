//! The accept loop and the drain: every connection task is tracked so shutdown can wait for them; a
//! listener that hands its port over to a successor takes what its accept queue holds before closing.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::conn::admission::{Limited, SourceGuard};
use crate::conn::budget::ConnectBudget;
use crate::conn::handle::{self as proxy, Proxy};
use crate::conn::socket;

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

/// One connection's pre-splice phase, as the drivers hold it. On the handshake threads it ends with
/// the connection's own task (its splice, tracked), for the driver to hand to the main runtime.
type Unit = Pin<Box<dyn Future<Output = Option<Spliced>> + Send>>;

/// A connection's own task, once it has a splice to run.
type Spliced = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls of pre-splice phases one driver makes before it yields to the runtime.
const DRIVER_BUDGET: usize = 4;

/// The same on the handshake threads, where no established connection waits behind a driver's turn:
/// a longer turn hands more connections over to the main runtime at once (one wake-up of its threads
/// per turn, not per connection: in a 4,000-device storm, 1.99 s to all back with one per connection).
const HANDSHAKE_THREAD_BUDGET: usize = 32;

/// Where the pre-splice phases (TLS handshake, CONNECT, checks) of a listener's connections run: a few
/// tasks (one per worker thread), each driving many connections, instead of one task per connection.
///
/// In a reconnect storm thousands of handshakes become runnable at once, and tokio's run queue is first
/// in, first out: with a task each, an established connection woken by its broker's answer waits behind
/// every handshake step queued before it (a few hundred µs of key exchange and signatures each; a
/// PINGREQ round trip went from 2.6 ms to 834 ms). A driver is one entry of the run queue however many
/// handshakes it holds, and yields after [`DRIVER_BUDGET`] polls, so established traffic waits for at
/// most a few handshake steps per worker.
struct Drivers {
    queues: Vec<mpsc::UnboundedSender<Unit>>,
    next: usize,
}

impl Drivers {
    /// One driver per thread; with `splice_on`, on the handshake threads, handing connections over there.
    fn start(
        threads: usize,
        tracker: &TaskTracker,
        force_close: &CancellationToken,
        splice_on: Option<Handle>,
    ) -> Drivers {
        let queues = (0..threads.clamp(1, 256))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tracker.spawn(drive(rx, force_close.clone(), splice_on.clone()));
                tx
            })
            .collect();
        Drivers { queues, next: 0 }
    }

    /// Hands a connection to the drivers, round robin.
    fn push(&mut self, unit: Unit) {
        self.next = (self.next + 1) % self.queues.len().max(1);
        if let Some(queue) = self.queues.get(self.next) {
            // A driver only stops when force_close drops its connections, after the accept loop ended.
            let _ = queue.send(unit);
        }
    }
}

/// Runs the pre-splice phases handed to it until its queue is closed and they are all done, or until
/// `force_close`, which drops those still running. With `splice_on`, the connections that finished
/// in a turn start their own tasks there together, at the end of the turn.
async fn drive(mut queue: mpsc::UnboundedReceiver<Unit>, force_close: CancellationToken, splice_on: Option<Handle>) {
    let per_turn = if splice_on.is_some() { HANDSHAKE_THREAD_BUDGET } else { DRIVER_BUDGET };
    let budget = Arc::new(AtomicUsize::new(per_turn));
    let mut running = FuturesUnordered::new();
    let mut open = true;
    let mut finished: Vec<Spliced> = Vec::new();
    let work = std::future::poll_fn(|cx| {
        // A fresh budget each time the runtime polls this task.
        budget.store(per_turn, Ordering::Relaxed);
        while open {
            match queue.poll_recv(cx) {
                Poll::Ready(Some(unit)) => running.push(Budgeted { unit, budget: budget.clone() }),
                Poll::Ready(None) => open = false,
                Poll::Pending => break,
            }
        }
        let turn = loop {
            match running.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(spliced))) => finished.push(spliced),
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(None) if !open => break Poll::Ready(()),
                Poll::Ready(None) | Poll::Pending => break Poll::Pending,
            }
        };
        if let (Some(main), false) = (&splice_on, finished.is_empty()) {
            let batch = std::mem::take(&mut finished);
            main.spawn(async move {
                for spliced in batch {
                    tokio::spawn(spliced);
                }
            });
        }
        turn
    });
    tokio::select! {
        _ = force_close.cancelled() => {}
        _ = work => {}
    }
}

/// A pre-splice phase polled only while its driver has budget left this turn; otherwise it asks to
/// be polled again (after the driver has yielded to the runtime).
struct Budgeted {
    unit: Unit,
    budget: Arc<AtomicUsize>,
}

impl Future for Budgeted {
    type Output = Option<Spliced>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Spliced>> {
        let spent = self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_err();
        if spent {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.unit.as_mut().poll(cx)
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

/// A connection's own task: its splice (`rest`) until it ends or the drain's deadline (`force_close`),
/// holding its places under the caps and limits until then. A panic in one connection ends only its
/// task: tokio catches it at the task boundary.
async fn splice_until<H>(held: H, force_close: CancellationToken, rest: impl Future<Output = ()>) {
    let _held = held;
    tokio::select! {
        _ = force_close.cancelled() => {}
        _ = rest => {}
    }
}

/// What a listener does with its socket when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Close it at once: nobody else serves the address (or, for a socket systemd passed, the socket
    /// stays open in systemd and what arrives waits in its queue for the next process).
    Close,
    /// Hand the address over to a successor bound with `SO_REUSEPORT`: refuse new handshakes, accept
    /// for [`socket::HANDOVER`] the ones under way and what the accept queue holds, then close.
    HandOver,
}

/// What a new connection goes through at accept: the admission limits and the process-wide caps,
/// then the pre-splice drivers and the drain's tracker.
struct Acceptor {
    proxy: Arc<Proxy>,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    connect_bytes: ConnectBudget,
    drivers: Drivers,
    tracker: TaskTracker,
    force_close: CancellationToken,
    /// Where connections' own tasks (their splices) run when not here: see [`crate::conn::handshake_threads`].
    splice_on: Option<Handle>,
}

impl Acceptor {
    fn take(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let proxy = &self.proxy;
        // The rate limits first, before any TLS work; a trusted load balancer's clients are
        // admitted per source once its header names them (see `handle`).
        let source = match admit(proxy, peer.ip()) {
            Ok(source) => source,
            Err(limited) => {
                proxy.metrics.outcome("rate_limited");
                proxy.admission.log_refusal(limited, peer.ip());
                return;
            }
        };
        // Past the limit, close at once: no TLS handshake, the cheapest answer when the
        // process is saturated (a CONNACK would cost a full handshake first).
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            proxy.metrics.outcome("limit");
            debug!(%peer, "connection limit reached; closed at accept");
            return;
        };
        let Ok(handshake) = self.handshakes.clone().try_acquire_owned() else {
            proxy.metrics.outcome("handshake_limit");
            debug!(%peer, "handshake limit reached; closed at accept");
            return;
        };
        let proxy = proxy.clone();
        let force_close = self.force_close.clone();
        let connect_bytes = self.connect_bytes.share();
        // Its places under the caps and limits, held until the connection ends.
        let held = (permit, source);
        let unit: Unit = match self.splice_on.is_some() {
            // On the handshake threads: the connection's own task is made once there is a splice to
            // run, and its driver starts it on the main runtime with the others of the same turn.
            true => {
                let tracker = self.tracker.clone();
                Box::pin(async move {
                    let rest = proxy::handle(proxy, tcp, peer, handshake, connect_bytes, true).await?;
                    let spliced: Spliced = Box::pin(tracker.track_future(splice_until(held, force_close, rest)));
                    Some(spliced)
                })
            }
            // The connection's own task is made first and waits for its splice: long-lived
            // allocations before the short-lived pre-splice phase, so that phase's memory is
            // reused by the next connection's instead of leaving holes between idle ones.
            false => {
                let (rest_tx, rest_rx) = oneshot::channel();
                self.tracker.spawn(async move {
                    let Ok(rest) = rest_rx.await else { return };
                    splice_until(held, force_close, rest).await
                });
                Box::pin(async move {
                    if let Some(rest) = proxy::handle(proxy, tcp, peer, handshake, connect_bytes, false).await {
                        let _ = rest_tx.send(rest);
                    }
                    None
                })
            }
        };
        self.drivers.push(Box::pin(unit));
    }

    /// Accepts until `until` resolves. An accept error (e.g. out of file descriptors) backs off.
    async fn accept_until(&mut self, listener: &TcpListener, until: impl Future<Output = ()>) {
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.take(tcp, peer),
                    Err(err) => {
                        warn!(%err, "accept failed; backing off");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
            }
        }
    }

    /// Takes every connection the kernel has queued for `listener` (at most [`socket::MAX_QUEUED`]),
    /// without waiting: asked of the socket itself, not of the runtime's last readiness event, so
    /// nothing that completed its handshake a moment ago is left to be reset by the close.
    fn take_queued(&mut self, listener: TcpListener) -> usize {
        let listener = match listener.into_std() {
            Ok(l) => l,
            Err(err) => {
                warn!(%err, "could not take the accept queue; closing");
                return 0;
            }
        };
        let mut taken = 0;
        while taken < socket::MAX_QUEUED {
            match listener.accept() {
                Ok((tcp, peer)) => {
                    taken += 1;
                    match tcp.set_nonblocking(true).and_then(|()| TcpStream::from_std(tcp)) {
                        Ok(tcp) => self.take(tcp, peer),
                        Err(err) => debug!(%peer, %err, "queued connection lost at handover"),
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    warn!(%err, "accept failed while emptying the accept queue");
                    break;
                }
            }
        }
        taken
    }
}

/// Serves `listener` until `shutdown` is cancelled, then stops accepting (as `stop` says) and lets
/// established connections finish for up to the drain timeout before closing the rest. `caps` are
/// shared with the process's other listeners. With `splice_on`, this runs on the handshake threads
/// and connections are spliced there ([`crate::conn::handshake_threads`]).
pub(crate) async fn serve(
    listener: TcpListener,
    stop: Stop,
    proxy: Arc<Proxy>,
    caps: Caps,
    splice_on: Option<Handle>,
    shutdown: CancellationToken,
) {
    // Accepted sockets join the event loop of the runtime that accepts them: this one.
    let listener = match splice_on {
        Some(_) => match listener.into_std().and_then(TcpListener::from_std) {
            Ok(listener) => listener,
            Err(err) => {
                warn!(%err, "could not move the listening socket to the handshake threads; not serving it");
                return;
            }
        },
        None => listener,
    };
    let tracker = TaskTracker::new();
    let force_close = CancellationToken::new();
    let drivers = Drivers::start(proxy.global.threads, &tracker, &force_close, splice_on.clone());
    let Caps { connections, handshakes, connect_bytes } = caps;
    proxy.health.set_listening(true);
    if let Ok(addr) = listener.local_addr() {
        // `listener` is left out for the unnamed (single) listener.
        let name = proxy.listener.name.as_deref();
        info!(listen = %addr, listener = name, upstream = %proxy.listener.upstream, "accepting connections");
    }
    let mut acceptor = Acceptor {
        proxy: proxy.clone(),
        connections,
        handshakes,
        connect_bytes,
        drivers,
        tracker: tracker.clone(),
        force_close: force_close.clone(),
        splice_on,
    };
    acceptor.accept_until(&listener, shutdown.cancelled()).await;
    proxy.health.set_draining();
    let drain = proxy.global.drain_timeout;
    if stop == Stop::HandOver {
        match socket::refuse_new_handshakes(&listener) {
            Ok(()) => info!(within = ?socket::HANDOVER.min(drain), "handing the port over: no new handshakes"),
            Err(err) => warn!(%err, "could not stop new handshakes; closing the listener now"),
        }
        acceptor.accept_until(&listener, tokio::time::sleep(socket::HANDOVER.min(drain))).await;
        let queued = acceptor.take_queued(listener);
        debug!(queued, "accept queue emptied");
    } else {
        drop(listener);
    }
    // The drivers end once their pending connections have (or been dropped by force_close).
    drop(acceptor);
    tracker.close();
    info!(connections = tracker.len(), deadline = ?drain, "listener closed; draining");
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        warn!(connections = tracker.len(), "drain deadline passed; closing remaining connections");
        force_close.cancel();
        tracker.wait().await;
    }
    info!("drained");
}
