//! Optional busy polling (`busy_poll`): for a short window after established traffic moves, a worker
//! keeps asking the kernel for events instead of sleeping in it.
//!
//! Why: a request/response exchange through the proxy (PINGREQ/PINGRESP, QoS 1 PUBLISH/PUBACK) crosses
//! it twice, and each crossing that finds the proxy's CPU asleep pays that CPU's wake-up, which in a
//! virtual machine without halt polling is tens of microseconds. Spinning for the window after each
//! piece of traffic catches the answer while the CPU is still awake. The price is CPU time: up to one
//! window of one core per burst of traffic, and none while the connections idle, unlike HAProxy's
//! `busy-polling`, which never sleeps. Off by default.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One per listener: shared between its splices, which report traffic, and the task that spins.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    window: Duration,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the latest traffic.
    last: AtomicU64,
    /// Set while the spinning task waits for traffic, so that only then does traffic have to wake it.
    sleeping: AtomicBool,
    wake: Notify,
}

impl BusyPoll {
    pub(crate) fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            sleeping: AtomicBool::new(true),
            wake: Notify::new(),
        }
    }

    /// Nanoseconds since `epoch`, plus one: `last == 0` means "no traffic yet".
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Traffic moved: spin for the next window. A clock read and a store; a wake-up only when asleep.
    pub(crate) fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    #[cfg(test)]
    /// True while the spinning task is inside a window.
    pub(crate) fn is_spinning(&self) -> bool {
        !self.sleeping.load(Ordering::SeqCst)
    }

    fn within_window(&self) -> bool {
        let window = u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        last != 0 && self.now().saturating_sub(last) < window
    }

    /// The spinning task: until `stop`, spins through each window and sleeps between them. Each spin
    /// is a `yield_now`, after which tokio polls the I/O driver without blocking before it runs the
    /// task again, so other tasks and new events go first.
    pub(crate) async fn run(&self, stop: CancellationToken) {
        loop {
            if self.within_window() {
                self.sleeping.store(false, Ordering::SeqCst);
                while self.within_window() {
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }
            self.sleeping.store(true, Ordering::SeqCst);
            // Traffic between the window check and the flag left a permit in `wake` (or will see the
            // flag): either way the wait below ends at once.
            if !self.within_window() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "current_thread")]
    async fn spins_after_traffic_and_sleeps_when_the_window_has_passed() {
        let bp = Arc::new(BusyPoll::new(Duration::from_millis(50)));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (bp, stop) = (bp.clone(), stop.clone());
            async move { bp.run(stop).await }
        });
        tokio::task::yield_now().await;
        assert!(!bp.is_spinning(), "no traffic yet");
        bp.touch();
        tokio::task::yield_now().await;
        assert!(bp.is_spinning(), "traffic starts a window");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!bp.is_spinning(), "the window ended with no more traffic");
        bp.touch();
        tokio::task::yield_now().await;
        assert!(bp.is_spinning(), "new traffic starts a new window");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").expect("no panic");
    }
}
