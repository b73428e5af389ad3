//! A core's memory budget for request bytes being read and response bytes
//! waiting to be written (Kafka's `queued.max.request.bytes` and channel
//! muting are the model). Lives on one shard (`Rc`, `Cell`).
//!
//! - Request frames take their first step from the budget before it is
//!   read, and the rest of a large frame at once when that step has arrived
//!   (`acquire`, which waits when the budget is spent: reads stop, nothing is
//!   buffered; a waiting frame holds one step, never half a frame, so frames
//!   cannot starve each other for good), and give them back when their
//!   handler is done.
//! - Fetch responses are granted bytes up front, never waiting
//!   (`grant_response`): at most what is left of the response share, so a
//!   fetch answers with fewer bytes rather than more memory. A connection
//!   with nothing unwritten may take a small floor past that share, so a
//!   consumer that reads its responses is served even while slow connections
//!   hold the rest.
//! - Every response is charged to its connection until it is written; the
//!   connection's reader stops reading while too much is unwritten.
//!
//! Bounds: responses granted from the budget stay under `RESPONSE_SHARE` of
//! it, floors under `FLOOR_SHARE`, requests under the whole; a response may
//! pass its grant by at most one batch (Kafka returns the first batch whole
//! even over `max_bytes`).

use sluice_storage::event::Event;
use std::cell::Cell;
use std::rc::Rc;

/// Responses are granted bytes only while the budget is used below this
/// fraction (in 1/8ths), so requests can always be read.
const RESPONSE_SHARE_EIGHTHS: usize = 4;
/// Floor grants (to connections with nothing unwritten) up to this fraction.
const FLOOR_SHARE_EIGHTHS: usize = 7;
/// The rest of a large frame (after its first step) up to this fraction:
/// above it, floors of fetches and the first steps of frames (the whole of
/// every small request) still go, so large frames starve neither.
const CONTINUATION_SHARE_EIGHTHS: usize = 5;
/// What a fetch on a connection with nothing unwritten gets even when the
/// response share is spent.
pub const FETCH_FLOOR_BYTES: usize = 1 << 20;
/// The smallest budget a core may have (config validation).
pub const MEMORY_BUDGET_BYTES_MIN: usize = 16 << 20;

const _: () = assert!(RESPONSE_SHARE_EIGHTHS < FLOOR_SHARE_EIGHTHS && FLOOR_SHARE_EIGHTHS < 8);
const _: () = assert!(
    RESPONSE_SHARE_EIGHTHS < CONTINUATION_SHARE_EIGHTHS
        && CONTINUATION_SHARE_EIGHTHS < FLOOR_SHARE_EIGHTHS
);

/// Which step of a request frame asks for bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStep {
    /// Its first (and for small requests only) step.
    First,
    /// The rest of a large frame, once its first step has arrived.
    Continuation,
}
const _: () = assert!(FETCH_FLOOR_BYTES * 8 <= MEMORY_BUDGET_BYTES_MIN);

pub struct MemoryBudget {
    capacity: usize,
    used: Cell<usize>,
    /// Notified whenever bytes are given back.
    released: Event,
}

impl MemoryBudget {
    pub fn new(capacity: usize) -> Rc<MemoryBudget> {
        assert!(capacity >= MEMORY_BUDGET_BYTES_MIN);
        Rc::new(MemoryBudget {
            capacity,
            used: Cell::new(0),
            released: Event::default(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Takes `bytes` for a request frame, waiting while they do not fit. A
    /// frame's first step may use the whole budget; the rest of a larger
    /// frame only up to `CONTINUATION_SHARE_EIGHTHS`, so big frames that stop
    /// arriving cannot keep small requests from being read. More than the
    /// whole budget waits for an empty budget instead of forever.
    pub async fn acquire(self: &Rc<Self>, bytes: usize, step: FrameStep) -> Charge {
        let limit = match step {
            FrameStep::First => self.capacity,
            FrameStep::Continuation => self.capacity / 8 * CONTINUATION_SHARE_EIGHTHS,
        };
        loop {
            let used = self.used.get();
            if used + bytes <= limit || used == 0 {
                return self.charge(bytes, None);
            }
            self.released.listen().await;
        }
    }

    /// Bytes for a response of at most `wanted`, without waiting; 0 when none
    /// can be had. `connection` is charged too.
    pub fn grant_response(
        self: &Rc<Self>,
        wanted: usize,
        connection: &Rc<ConnectionMemory>,
    ) -> Charge {
        let used = self.used.get();
        let share = self.capacity / 8 * RESPONSE_SHARE_EIGHTHS;
        let mut granted = wanted.min(share.saturating_sub(used));
        if granted < wanted.min(FETCH_FLOOR_BYTES) && connection.unwritten() == 0 {
            let floor_share = self.capacity / 8 * FLOOR_SHARE_EIGHTHS;
            if used + FETCH_FLOOR_BYTES <= floor_share {
                granted = wanted.min(FETCH_FLOOR_BYTES);
            }
        }
        self.charge(granted, Some(connection.clone()))
    }

    /// Charges `bytes` unconditionally (responses already built).
    pub fn charge(
        self: &Rc<Self>,
        bytes: usize,
        connection: Option<Rc<ConnectionMemory>>,
    ) -> Charge {
        self.used.set(self.used.get() + bytes);
        if let Some(connection) = &connection {
            connection.unwritten.set(connection.unwritten.get() + bytes);
        }
        Charge {
            budget: self.clone(),
            bytes,
            connection,
        }
    }

    /// Completes at the next release of bytes.
    pub async fn released(&self) {
        self.released.listen().await
    }

    fn give_back(&self, bytes: usize) {
        debug_assert!(bytes <= self.used.get());
        self.used.set(self.used.get() - bytes);
        if bytes > 0 {
            self.released.notify();
        }
    }
}

/// What one connection holds of its core's budget in responses not yet written.
#[derive(Default)]
pub struct ConnectionMemory {
    unwritten: Cell<usize>,
    /// Notified whenever a response's bytes are given back.
    written: Event,
}

impl ConnectionMemory {
    pub fn unwritten(&self) -> usize {
        self.unwritten.get()
    }

    /// Waits until at most `bytes` are unwritten.
    pub async fn drained_to(&self, bytes: usize) {
        while self.unwritten.get() > bytes {
            self.written.listen().await;
        }
    }
}

/// Bytes held from a budget; given back on drop.
pub struct Charge {
    budget: Rc<MemoryBudget>,
    bytes: usize,
    connection: Option<Rc<ConnectionMemory>>,
}

impl Charge {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `other` to this charge (they must be of the same budget and connection).
    pub fn absorb(&mut self, mut other: Charge) {
        debug_assert!(Rc::ptr_eq(&self.budget, &other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
        if let (Some(mine), Some(theirs)) = (&self.connection, &other.connection) {
            debug_assert!(Rc::ptr_eq(mine, theirs));
        }
    }

    fn release_bytes(&self, bytes: usize) {
        if let Some(connection) = &self.connection {
            debug_assert!(bytes <= connection.unwritten.get());
            connection.unwritten.set(connection.unwritten.get() - bytes);
            if bytes > 0 {
                connection.written.notify();
            }
        }
        self.budget.give_back(bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release_bytes(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn responses_stay_within_their_share_and_floors_within_theirs() {
        let budget = MemoryBudget::new(64 * MIB);
        let slow = Rc::new(ConnectionMemory::default());
        // 4/8 of 64 MiB = 32 MiB for responses.
        let a = budget.grant_response(20 * MIB, &slow);
        assert_eq!(a.bytes(), 20 * MIB);
        let b = budget.grant_response(20 * MIB, &slow);
        assert_eq!(b.bytes(), 12 * MIB);
        // Spent: a connection with something unwritten gets nothing.
        assert_eq!(budget.grant_response(40 * MIB, &slow).bytes(), 0);
        // One with nothing unwritten gets the floor, up to 7/8 of the budget.
        let mut floors = Vec::new();
        for _ in 0..30 {
            let fresh = Rc::new(ConnectionMemory::default());
            let charge = budget.grant_response(40 * MIB, &fresh);
            floors.push((fresh, charge));
        }
        let granted: Vec<usize> = floors.iter().map(|(_, c)| c.bytes()).collect();
        assert_eq!(
            granted.iter().filter(|b| **b == FETCH_FLOOR_BYTES).count(),
            24
        );
        assert!(budget.used() <= 56 * MIB);
        drop(floors);
        assert_eq!(slow.unwritten(), 32 * MIB);
        drop((a, b));
        assert_eq!((budget.used(), slow.unwritten()), (0, 0));
    }

    #[test]
    fn charges_and_absorb_keep_the_books() {
        let budget = MemoryBudget::new(16 * MIB);
        let connection = Rc::new(ConnectionMemory::default());
        let grant = budget.grant_response(4 * MIB, &connection);
        assert_eq!((budget.used(), connection.unwritten()), (4 * MIB, 4 * MIB));
        // What the connection does once the response is built: the grant goes,
        // the response's real size is charged.
        drop(grant);
        let charge = budget.charge(MIB, Some(connection.clone()));
        assert_eq!((budget.used(), connection.unwritten()), (MIB, MIB));
        let mut request = budget.charge(100, None);
        request.absorb(budget.charge(50, None));
        assert_eq!(request.bytes(), 150);
        drop(charge);
        assert_eq!((budget.used(), connection.unwritten()), (150, 0));
        drop(request);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn acquire_waits_for_a_release() {
        glommio::LocalExecutor::default().run(async {
            let budget = MemoryBudget::new(16 * MIB);
            let held = budget.acquire(9 * MIB, FrameStep::Continuation).await;
            // Continuations stop at 5/8 (10 MiB); a first step may still go.
            let continuation = {
                let budget = budget.clone();
                glommio::spawn_local(async move {
                    budget
                        .acquire(2 * MIB, FrameStep::Continuation)
                        .await
                        .bytes()
                })
            };
            let first = budget.acquire(2 * MIB, FrameStep::First).await;
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(budget.used(), 11 * MIB, "the continuation must wait");
            drop(first);
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(budget.used(), 9 * MIB, "still over 5/8 with it");
            drop(held);
            assert_eq!(continuation.await, 2 * MIB);
            // Larger than the whole budget: waits for an empty budget, then goes.
            assert_eq!(
                budget.acquire(32 * MIB, FrameStep::First).await.bytes(),
                32 * MIB
            );
        });
    }
}
