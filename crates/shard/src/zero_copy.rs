//! io_uring `SEND_ZC` for large response buffers, on a small ring of the
//! core's own (glommio does not offer SEND_ZC). The kernel sends straight
//! from the buffer and posts a second completion (a notification) once it
//! no longer needs it; the buffer (`Bytes`) is held until then.
//!
//! Completions are reaped by one task per core that waits on an eventfd the
//! ring signals (`sluice_storage::io::uring`, shared with the read ring).
//!
//! Whether it pays depends on the path: to a local peer (loopback, veth) the
//! kernel copies the pages anyway when the receiver takes them, and says so
//! in the notification (`copied_notifications`). See benches/RESULTS.md for
//! the measured CPU per byte and the threshold.

use bytes::Bytes;
use io_uring::{cqueue, opcode, types, IoUring};
use sluice_storage::event::Event;
use sluice_storage::io::uring;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::unix::io::RawFd;
use std::rc::Rc;

/// Entries of the ring (the completion queue has twice as many).
const RING_ENTRIES: u32 = 256;
/// Sends in flight at once: each posts up to two completions, so the
/// completion queue never overflows.
const IN_FLIGHT_MAX: usize = 96;

/// Counters, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroCopyStats {
    pub sends: u64,
    pub bytes: u64,
    /// Notifications saying the kernel copied the data after all.
    pub copied_notifications: u64,
    pub notifications: u64,
}

struct Pending {
    /// Held until the kernel's notification.
    _buf: Bytes,
    result: Option<i32>,
    /// The send's own completion is in; a notification is still to come.
    awaiting_notification: bool,
    /// Its sender gave up waiting (the connection is closing): the entry
    /// goes as soon as the kernel is done with the buffer.
    abandoned: bool,
}

pub struct ZeroCopy {
    ring: RefCell<IoUring>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_id: Cell<u64>,
    completed: Event,
    stats: Cell<ZeroCopyStats>,
    /// A submission failed: entries may be stuck in the ring, so it is never
    /// submitted to again and responses use sendmsg.
    broken: Cell<bool>,
}

impl ZeroCopy {
    /// A ring for this core with its reaper task; `None` (logged) where the
    /// kernel refuses (no SEND_ZC before Linux 6.0, ring limits).
    pub fn start(shard: usize, threshold: usize) -> Option<Rc<ZeroCopy>> {
        let (ring, efd) = match uring::ring_with_eventfd(RING_ENTRIES) {
            Ok(made) => made,
            Err(e) => {
                tracing::warn!(shard, error = %e, "no io_uring for send_zc: responses use sendmsg only");
                return None;
            }
        };
        let mut probe = io_uring::Probe::new();
        if ring.submitter().register_probe(&mut probe).is_err()
            || !probe.is_supported(opcode::SendZc::CODE)
        {
            tracing::warn!(
                shard,
                "the kernel has no IORING_OP_SEND_ZC: responses use sendmsg only"
            );
            // SAFETY: ours, not handed to a reaper.
            unsafe { libc::close(efd) };
            return None;
        }
        let zc = Rc::new(ZeroCopy {
            ring: RefCell::new(ring),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            completed: Event::default(),
            stats: Cell::new(ZeroCopyStats::default()),
            broken: Cell::new(false),
        });
        uring::spawn_reaper(efd, Rc::downgrade(&zc), ZeroCopy::reap);
        tracing::info!(
            shard,
            threshold,
            "send_zc on for response buffers of at least {threshold} bytes"
        );
        Some(zc)
    }

    pub fn stats(&self) -> ZeroCopyStats {
        self.stats.get()
    }

    /// False once a submission failed.
    pub fn usable(&self) -> bool {
        !self.broken.get()
    }

    /// Sends `buf` on socket `fd` from the buffer itself; completes with the
    /// bytes sent (the kernel waits for room in the socket first).
    pub async fn send(&self, fd: RawFd, buf: Bytes) -> io::Result<usize> {
        loop {
            if self.broken.get() {
                return Err(io::Error::other("send_zc ring broken"));
            }
            if self.pending.borrow().len() < IN_FLIGHT_MAX {
                break;
            }
            let listen = self.completed.listen();
            self.reap();
            if self.pending.borrow().len() < IN_FLIGHT_MAX {
                break;
            }
            listen.await;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let entry = opcode::SendZc::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            // IORING_SEND_ZC_REPORT_USAGE: the notification says if it copied.
            .zc_flags(1 << 3)
            .build()
            .user_data(id);
        self.pending.borrow_mut().insert(
            id,
            Pending {
                _buf: buf,
                result: None,
                awaiting_notification: false,
                abandoned: false,
            },
        );
        {
            let mut ring = self.ring.borrow_mut();
            // SAFETY: the buffer lives in `pending` until the kernel is done
            // with it (IN_FLIGHT_MAX keeps the queue from filling).
            let pushed = unsafe { ring.submission().push(&entry) }.is_ok();
            let submitted = if pushed {
                ring.submit()
            } else {
                Err(io::Error::other("submission queue full"))
            };
            if let Err(e) = submitted {
                // The entry may still sit in the queue, naming an fd that a
                // later connection could reuse: never submit again.
                self.broken.set(true);
                tracing::error!(error = %e, "send_zc submission failed: this core's responses use sendmsg from now on");
                return Err(e);
            }
        }
        // Dropped before the result is in (timeout): the entry is abandoned.
        let guard = Abandon { zc: self, id };
        loop {
            let listen = self.completed.listen();
            self.reap();
            if let Some(result) = self.take_result(id) {
                std::mem::forget(guard);
                return if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    let mut stats = self.stats.get();
                    stats.sends += 1;
                    stats.bytes += result as u64;
                    self.stats.set(stats);
                    Ok(result as usize)
                };
            }
            listen.await;
        }
    }

    fn abandon(&self, id: u64) {
        let mut pending = self.pending.borrow_mut();
        let Some(entry) = pending.get_mut(&id) else {
            return;
        };
        if entry.result.is_some() && !entry.awaiting_notification {
            pending.remove(&id);
            return;
        }
        entry.abandoned = true;
        drop(pending);
        // Ask the kernel to give up on it (a send waiting for room).
        let cancel = opcode::AsyncCancel::new(id).build().user_data(0);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: a cancel carries no buffer.
        if unsafe { ring.submission().push(&cancel) }.is_ok() {
            let _ = ring.submit();
        }
    }

    fn take_result(&self, id: u64) -> Option<i32> {
        let mut pending = self.pending.borrow_mut();
        let entry = pending.get_mut(&id)?;
        let result = entry.result.take()?;
        if !entry.awaiting_notification {
            pending.remove(&id);
        }
        Some(result)
    }

    /// Drains the completion queue: results to their senders, buffers freed
    /// at their notifications.
    fn reap(&self) {
        let mut any = false;
        let mut ring = self.ring.borrow_mut();
        let mut pending = self.pending.borrow_mut();
        let mut stats = self.stats.get();
        for cqe in ring.completion() {
            any = true;
            let id = cqe.user_data();
            if cqueue::notif(cqe.flags()) {
                stats.notifications += 1;
                // IORING_NOTIF_USAGE_ZC_COPIED: the kernel copied after all.
                if cqe.result() as u32 & (1 << 31) != 0 {
                    stats.copied_notifications += 1;
                }
                if let Some(entry) = pending.get_mut(&id) {
                    entry.awaiting_notification = false;
                    if entry.result.is_none() || entry.abandoned {
                        pending.remove(&id);
                    }
                }
            } else if let Some(entry) = pending.get_mut(&id) {
                entry.result = Some(cqe.result());
                entry.awaiting_notification = cqueue::more(cqe.flags());
                if entry.abandoned && !entry.awaiting_notification {
                    pending.remove(&id);
                }
            }
        }
        self.stats.set(stats);
        drop((ring, pending));
        if any {
            self.completed.notify();
        }
    }
}

/// Marks a send abandoned if its future is dropped before the result.
struct Abandon<'a> {
    zc: &'a ZeroCopy,
    id: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.zc.abandon(self.id);
    }
}
