//! The established connections of one listener that a trust change or a deadline must reach.
//!
//! Tens of thousands of connections idle for weeks, so what each one holds for this is kept small: a
//! slot (its waker and two flags) in one map, and its next deadline in one ordered set that a single
//! timer task per listener walks, instead of a timer and a channel subscription inside every
//! connection's task.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Flag: client trust changed since the connection last looked.
pub(crate) const RECHECK: u8 = 1;
/// Flag: the connection's deadline has come.
pub(crate) const DUE: u8 = 2;

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Wakes the timer task when a deadline earlier than the ones it waits for is added.
    timer: Notify,
}

#[derive(Default)]
struct Inner {
    next_key: u64,
    slots: HashMap<u64, Arc<Slot>>,
    deadlines: BTreeSet<(Instant, u64)>,
}

/// What the registry shares with one connection.
#[derive(Default)]
struct Slot {
    waker: Mutex<Option<Waker>>,
    flags: AtomicU8,
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
        let slot = Arc::new(Slot::default());
        let mut inner = lock(&self.inner);
        let key = inner.next_key;
        inner.next_key += 1;
        inner.slots.insert(key, slot.clone());
        Entry { registry: self.clone(), slot, key, armed: None }
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

    /// Raises `DUE` on each connection whose deadline has come, until `stop`.
    pub(crate) async fn run_timer(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let next = lock(&self.inner).deadlines.first().map(|(at, _)| *at);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.timer.notified() => continue,
                _ = sleep_until(next) => {}
            }
            let now = Instant::now();
            let mut inner = lock(&self.inner);
            while let Some(&(at, key)) = inner.deadlines.first() {
                if at > now {
                    break;
                }
                inner.deadlines.pop_first();
                if let Some(slot) = inner.slots.get(&key) {
                    slot.raise(DUE);
                }
            }
        }
    }
}

/// One connection's registration.
pub(crate) struct Entry {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
    key: u64,
    /// The deadline in the registry's set, if any.
    armed: Option<Instant>,
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

    /// Makes `at` this connection's one deadline in the registry.
    pub(crate) fn arm(&mut self, at: Option<Instant>) {
        if self.armed == at {
            return;
        }
        let mut inner = lock(&self.registry.inner);
        if let Some(old) = self.armed.take() {
            inner.deadlines.remove(&(old, self.key));
        }
        if let Some(at) = at {
            let earliest = inner.deadlines.first().map_or(true, |(first, _)| at < *first);
            inner.deadlines.insert((at, self.key));
            if earliest {
                self.registry.timer.notify_one();
            }
        }
        self.armed = at;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut inner = lock(&self.registry.inner);
        inner.slots.remove(&self.key);
        if let Some(at) = self.armed {
            inner.deadlines.remove(&(at, self.key));
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A panic while a lock was held leaves nothing half-done here worth refusing to go on over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
