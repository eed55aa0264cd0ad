//! The process-wide budget for CONNECT bytes held before the splice.
//!
//! Each connection may buffer a CONNECT up to `max_connect_size`, for up to `connect_timeout`; without
//! a total, a thousand clients trickling CONNECTs just under the cap would pin a thousand times the
//! cap (measured: +250 MB RSS for 1,000 such clients at 256 KiB) and get the pod OOM-killed, with
//! every device on it. So the bytes a CONNECT buffer holds beyond a small free allowance are drawn
//! from one budget shared by all listeners (`connect_buffer_budget`). A CONNECT that needs more than
//! is left is refused at once (CONNACK "server busy" / "server unavailable"), counted and logged;
//! established connections, which hold no CONNECT buffer, are never touched.
//!
//! The free allowance keeps ordinary devices out of it entirely: a CONNECT with a JWT password and
//! MQTT 5 properties is a few KiB, so a flood of large CONNECTs can't stop a normal device from
//! connecting. What an allowance costs in total is bounded by the connections open at once
//! (`max_connections`), like every other per-connection byte; TLS handshakes in flight are bounded
//! by `max_handshakes`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// CONNECT bytes every connection may buffer without drawing on the budget.
pub(crate) const FREE_CONNECT_BYTES: usize = 4096;

/// One budget shared by every listener of the process; the permits are bytes.
#[derive(Debug, Clone)]
pub(crate) struct ConnectBudget {
    bytes: Arc<Semaphore>,
}

impl ConnectBudget {
    pub(crate) fn new(bytes: usize) -> ConnectBudget {
        ConnectBudget { bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))) }
    }

    /// A connection's share, empty until its CONNECT buffer outgrows the free allowance; given back
    /// when dropped.
    pub(crate) fn share(&self) -> Share {
        Share { bytes: self.bytes.clone(), held: None }
    }
}

/// The bytes one connection holds of the budget.
#[derive(Debug)]
pub(crate) struct Share {
    bytes: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Share {
    /// Makes this share cover a buffer of `capacity` bytes. `false` (and nothing taken) when the
    /// budget has too little left.
    pub(crate) fn cover(&mut self, capacity: usize) -> bool {
        let want = capacity.saturating_sub(FREE_CONNECT_BYTES);
        let held = self.held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        let Some(more) = want.checked_sub(held).filter(|n| *n > 0) else {
            return true;
        };
        let Ok(more) = u32::try_from(more) else {
            return false;
        };
        match (self.bytes.clone().try_acquire_many_owned(more), &mut self.held) {
            (Err(_), _) => false,
            (Ok(permit), Some(held)) => {
                held.merge(permit);
                true
            }
            (Ok(permit), None) => {
                self.held = Some(permit);
                true
            }
        }
    }

    #[cfg(test)]
    /// Bytes of the budget this share holds.
    pub(crate) fn held(&self) -> usize {
        self.held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_within_the_free_allowance_cost_nothing() {
        let budget = ConnectBudget::new(0);
        let mut share = budget.share();
        assert!(share.cover(FREE_CONNECT_BYTES));
        assert_eq!(share.held(), 0);
        assert!(!share.cover(FREE_CONNECT_BYTES + 1), "an empty budget refuses any growth past it");
    }

    #[test]
    fn shares_draw_on_one_budget_and_give_back_when_dropped() {
        let budget = ConnectBudget::new(10_000);
        let mut a = budget.share();
        assert!(a.cover(FREE_CONNECT_BYTES + 6_000));
        assert!(a.cover(FREE_CONNECT_BYTES + 8_000), "growing takes only the difference");
        assert_eq!(a.held(), 8_000);
        let mut b = budget.share();
        assert!(!b.cover(FREE_CONNECT_BYTES + 3_000), "2,000 left");
        assert_eq!(b.held(), 0, "a refused growth takes nothing");
        assert!(b.cover(FREE_CONNECT_BYTES + 2_000));
        drop(a);
        assert!(b.cover(FREE_CONNECT_BYTES + 10_000));
    }
}
