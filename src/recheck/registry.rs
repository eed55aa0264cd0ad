//! The established connections of one listener that a trust change or a deadline must reach.
//!
//! Tens of thousands of connections idle for weeks, so what each one holds for this is kept small: a
//! slot in one map with its waker, two flags and its next deadline, which one task per listener scans
//! every [`SCAN`], instead of a timer and a channel subscription inside every connection's task. A
//! scan reads one atomic per connection (a hundred thousand connections, a few hundred microseconds);
//! a deadline is met within a scan period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the deadlines are scanned: how late a close may come after its time.
pub(crate) const SCAN: Duration = Duration::from_millis(250);

/// A slot's deadline when it has none.
const NEVER: u64 = u64::MAX;

/// Flag: client trust changed since the connection last looked.
pub(crate) const RECHECK: u8 = 1;
/// Flag: the connection's deadline has come.
pub(crate) const DUE: u8 = 2;

pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Deadlines are kept as milliseconds since this instant.
    epoch: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { inner: Mutex::default(), epoch: Instant::now() }
    }
}

#[derive(Default)]
struct Inner {
    next_key: u64,
    slots: HashMap<u64, Arc<Slot>>,
}

/// What the registry shares with one connection.
struct Slot {
    waker: Mutex<Option<Waker>>,
    flags: AtomicU8,
    /// Milliseconds since the registry's epoch; [`NEVER`] for none.
    deadline: AtomicU64,
}

impl Slot {
    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }
}

impl Registry {
    /// Registers a connection; it is removed when the returned entry is dropped.
    pub(crate) fn register(self: &Arc<Self>) -> Entry {
        let slot = Arc::new(Slot { waker: Mutex::new(None), flags: AtomicU8::new(0), deadline: AtomicU64::new(NEVER) });
        let mut inner = lock(&self.inner);
        let key = inner.next_key;
        inner.next_key += 1;
        inner.slots.insert(key, slot.clone());
        Entry { registry: self.clone(), slot, key }
    }

    /// Tells every registered connection that client trust changed.
    pub(crate) fn recheck_all(&self) {
        let inner = lock(&self.inner);
        for slot in inner.slots.values() {
            slot.raise(RECHECK);
        }
    }

    /// Connections registered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).slots.len()
    }

    /// Every [`SCAN`], raises `DUE` on each connection whose deadline has come, until `stop`.
    pub(crate) async fn run_timer(self: Arc<Self>, stop: CancellationToken) {
        let mut scan = tokio::time::interval(SCAN);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = scan.tick() => {}
            }
            let now = self.millis(Instant::now());
            for slot in lock(&self.inner).slots.values() {
                if slot.deadline.load(Ordering::Acquire) <= now {
                    slot.deadline.store(NEVER, Ordering::Release);
                    slot.raise(DUE);
                }
            }
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(NEVER - 1)
    }
}

/// One connection's registration.
pub(crate) struct Entry {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
    key: u64,
}

impl Entry {
    /// The flags raised since the last call; the task is woken when new ones are raised.
    pub(crate) fn take_flags(&self, cx: &mut Context<'_>) -> u8 {
        {
            let mut waker = lock(&self.slot.waker);
            match waker.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
        }
        // After the waker is in place, so a flag raised from here on wakes the task.
        self.slot.flags.swap(0, Ordering::AcqRel)
    }

    /// Makes `at` this connection's one deadline (rounded up to the millisecond, never early).
    pub(crate) fn arm(&self, at: Option<Instant>) {
        let millis = at.map_or(NEVER, |at| self.registry.millis(at).saturating_add(1));
        self.slot.deadline.store(millis, Ordering::Release);
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        lock(&self.registry.inner).slots.remove(&self.key);
    }
}

/// A panic while a lock was held leaves nothing half-done here worth refusing to go on over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
