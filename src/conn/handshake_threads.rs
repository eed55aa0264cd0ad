//! Handshakes on threads of their own, at a lower scheduling priority than established traffic
//! (`handshake_nice`).
//!
//! In a reconnect storm a core's worth of handshakes is runnable at once. On the threads that carry
//! established connections each handshake step — a key exchange, a signature, a chain verification,
//! up to a few hundred µs that no yield can split — can sit between a PINGREQ and its answer: the
//! pre-splice drivers ([`crate::conn::accept`]) bound how many, not how long. On threads of their own
//! at a higher nice value the kernel preempts a handshake as soon as an established connection's
//! thread has work, so established latency stays near its quiet value however many handshakes run.
//!
//! The handshake threads are a runtime of their own (its own event loop and timers): the accept loops
//! and everything before the splice run there, so a handshake's socket events never wake the
//! established connections' threads. A connection moves once, when its splice starts: its two
//! sockets are registered with the main runtime ([`rehome`]) and its task lives there.
//! What the kernel gives a thread at nice 10 while one at 0 keeps its core busy is about a tenth of
//! it: established traffic first, handshakes slower but never stopped.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;

use tokio::net::TcpStream;
use tokio::runtime::{Handle, Runtime};
use tracing::warn;

/// The handshake threads' nice value when the setting is absent. Against a busy thread at nice 0 a
/// thread at 10 gets about a tenth of the core (weights 110 and 1024): established connections first,
/// yet handshakes keep going when other processes load the machine (at 19, about 1.5 %). In a
/// 4,000-device storm 10 and 19 kept established round trips equally short.
pub(crate) const DEFAULT_HANDSHAKE_NICE: u8 = 10;

/// Where the listeners' accept loops and pre-splice phases run.
pub(crate) struct HandshakeThreads {
    /// `None` with `handshake_nice = 0` (or if the threads could not start): beside established
    /// connections, on the main runtime.
    runtime: Option<Runtime>,
}

impl HandshakeThreads {
    /// `threads` threads at `nice` (0: none).
    pub(crate) fn start(threads: usize, nice: u8) -> HandshakeThreads {
        if nice == 0 {
            return HandshakeThreads { runtime: None };
        }
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("mqtls-handshake")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build();
        let runtime = built
            .inspect_err(|err| {
                warn!(%err, "could not start the handshake threads; handshakes share the established connections' threads")
            })
            .ok();
        HandshakeThreads { runtime }
    }

    /// Runs a listener's accept loop (`serve`) on the handshake threads, or here. It is given where
    /// its connections' splices run: `Some` the runtime this is called in when that is another one.
    pub(crate) fn spawn<F, S>(&self, serve: S)
    where
        S: FnOnce(Option<Handle>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => {
                runtime.spawn(serve(Some(Handle::current())));
            }
            None => {
                tokio::spawn(serve(None));
            }
        }
    }
}

impl Drop for HandshakeThreads {
    /// Without waiting: by then every accept loop and driver has ended (the drain waited for them).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Registers a socket with the runtime this is called in, in place (a TLS stream only lends its
/// socket): a second descriptor of it joins this runtime's event loop, then the first leaves the
/// other's and is closed. Four system calls, once per connection (the broker's socket, owned, moves
/// with two: `into_std` and `from_std`).
pub(crate) fn rehome(socket: &mut TcpStream) -> io::Result<()> {
    let moved = std::net::TcpStream::from(socket.as_fd().try_clone_to_owned()?);
    *socket = TcpStream::from_std(moved)?;
    Ok(())
}

/// Sets the calling thread's nice value (Linux's is per thread). A refusal (a seccomp profile, an
/// exotic kernel) leaves the thread at its priority: handshakes still run, only without the preference.
fn lower_priority(nice: u8) {
    let tid = rustix::thread::gettid();
    if let Err(err) = rustix::process::setpriority_process(Some(tid), i32::from(nice)) {
        warn!(%err, nice, "could not lower the handshake thread's priority");
    }
}
