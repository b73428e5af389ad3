//! A small io_uring of the core's own, next to glommio's, for what glommio
//! does not offer: O_DIRECT reads into buffers that may cross cores (so a
//! fetch sends them as they are, with no copy out of glommio's buffers, which
//! must stay on their core), and SEND_ZC (the shard's `zero_copy.rs`).
//!
//! Completions signal an eventfd registered with the ring; one task per ring
//! reads it through glommio (so the core sleeps while nothing completes) and
//! then drains the completion queue. Nothing is registered or locked:
//! RLIMIT_MEMLOCK is not involved.

use crate::event::Event;
use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::unix::io::{FromRawFd, RawFd};
use std::ptr::NonNull;
use std::rc::{Rc, Weak};

/// A ring whose completions signal an eventfd (returned with it); pass
/// both to `spawn_reaper`. `Err` where the kernel refuses (the caller falls
/// back to glommio's own I/O).
pub fn ring_with_eventfd(entries: u32) -> io::Result<(IoUring, RawFd)> {
    let ring = IoUring::new(entries)?;
    // Blocking (no EFD_NONBLOCK): glommio's read then waits in its ring.
    // SAFETY: eventfd takes no pointers.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Err(e) = ring.submitter().register_eventfd(efd) {
        // SAFETY: ours, not shared.
        unsafe { libc::close(efd) };
        return Err(e);
    }
    Ok((ring, efd))
}

/// Runs `reap` on `owner` whenever the ring behind `efd` posts completions,
/// from a task of the calling glommio executor, until `owner` is gone. Takes
/// the eventfd over (closed with the task).
pub fn spawn_reaper<T: 'static>(efd: RawFd, owner: Weak<T>, reap: fn(&T)) {
    glommio::spawn_local(async move {
        // SAFETY: the eventfd is owned by this file from here on.
        let wakeups = unsafe { glommio::io::BufferedFile::from_raw_fd(efd) };
        loop {
            let woke = wakeups.read_at(0, 8).await;
            let Some(owner) = owner.upgrade() else { break };
            reap(&owner);
            if woke.is_err() {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    })
    .detach();
}

const PAGE: usize = 4096;
const READ_RING_ENTRIES: u32 = 128;
/// Reads in flight at once (the completion queue holds twice the entries).
const READS_IN_FLIGHT_MAX: usize = 128;

/// A page-aligned heap buffer (O_DIRECT needs aligned memory) that may move
/// between threads: `Bytes` made from it cross cores without a copy.
struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: a plain heap allocation, owned; no thread-bound state.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn new(capacity: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(capacity, PAGE).expect("layout");
        // SAFETY: capacity > 0 (callers read at least one page).
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len: 0,
            capacity,
        }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by the kernel's read.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.capacity, PAGE).expect("layout");
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

struct Read {
    /// The kernel writes here until the completion: kept until then even
    /// if the reader went away.
    buf: Option<AlignedBuf>,
    result: Option<i32>,
    abandoned: bool,
}

/// O_DIRECT reads on this core's own ring.
pub struct ReadRing {
    ring: RefCell<IoUring>,
    reads: RefCell<HashMap<u64, Read>>,
    next_id: Cell<u64>,
    completed: Event,
    /// A submission failed: never submitted to again (glommio reads instead).
    broken: Cell<bool>,
}

thread_local! {
    /// This executor thread's read ring: not tried yet, or tried (and maybe refused).
    static READ_RING: RefCell<Option<Option<Rc<ReadRing>>>> = const { RefCell::new(None) };
}

impl ReadRing {
    /// This thread's ring, made on first use; `None` where the kernel refuses.
    pub fn current() -> Option<Rc<ReadRing>> {
        READ_RING.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                *slot = Some(ReadRing::start());
            }
            slot.as_ref()
                .and_then(|ring| ring.clone())
                .filter(|r| !r.broken.get())
        })
    }

    fn start() -> Option<Rc<ReadRing>> {
        let (ring, efd) = match ring_with_eventfd(READ_RING_ENTRIES) {
            Ok(made) => made,
            Err(e) => {
                tracing::warn!(error = %e, "no io_uring of our own: disk reads are copied out of glommio's buffers");
                return None;
            }
        };
        let reads = Rc::new(ReadRing {
            ring: RefCell::new(ring),
            reads: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            completed: Event::default(),
            broken: Cell::new(false),
        });
        spawn_reaper(efd, Rc::downgrade(&reads), ReadRing::reap);
        Some(reads)
    }

    /// Reads up to `len` bytes at `pos` of the O_DIRECT file `fd` (short at
    /// its end) into a buffer of its own, returned as `Bytes` without a copy.
    pub async fn read(&self, fd: RawFd, pos: u64, len: usize) -> io::Result<Bytes> {
        loop {
            if self.broken.get() {
                return Err(io::Error::other("read ring retired"));
            }
            let listen = self.completed.listen();
            self.reap();
            if self.reads.borrow().len() < READS_IN_FLIGHT_MAX {
                break;
            }
            listen.await;
        }
        let start = pos & !(PAGE as u64 - 1);
        let skip = (pos - start) as usize;
        let capacity = (skip + len).div_ceil(PAGE) * PAGE;
        let mut buf = AlignedBuf::new(capacity);
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let entry = opcode::Read::new(types::Fd(fd), buf.ptr.as_ptr(), capacity as u32)
            .offset(start)
            .build()
            .user_data(id);
        buf.len = 0;
        self.reads.borrow_mut().insert(
            id,
            Read {
                buf: Some(buf),
                result: None,
                abandoned: false,
            },
        );
        {
            let mut ring = self.ring.borrow_mut();
            // SAFETY: the buffer stays in `reads` until the completion.
            let pushed = unsafe { ring.submission().push(&entry) }.is_ok();
            let submitted = if pushed {
                ring.submit().map(|_| ())
            } else {
                Err(io::Error::other("submission queue full"))
            };
            if let Err(e) = submitted {
                // The entry may still be queued: never submit to this ring again.
                self.broken.set(true);
                tracing::error!(error = %e, "read ring submission failed: reads go through glommio from now on");
                return Err(e);
            }
        }
        let guard = Abandon { ring: self, id };
        loop {
            let listen = self.completed.listen();
            self.reap();
            let done = {
                let mut reads = self.reads.borrow_mut();
                match reads.get(&id).and_then(|r| r.result) {
                    Some(result) => reads.remove(&id).map(|r| (result, r.buf)),
                    None => None,
                }
            };
            if let Some((result, buf)) = done {
                std::mem::forget(guard);
                if result < 0 {
                    return Err(io::Error::from_raw_os_error(-result));
                }
                let mut buf = buf.expect("kept until the completion");
                buf.len = result as usize;
                let bytes = Bytes::from_owner(buf);
                let end = (skip + len).min(bytes.len());
                return Ok(bytes.slice(skip.min(end)..end));
            }
            listen.await;
        }
    }

    fn reap(&self) {
        let mut any = false;
        {
            let mut ring = self.ring.borrow_mut();
            let mut reads = self.reads.borrow_mut();
            for cqe in ring.completion() {
                any = true;
                let id = cqe.user_data();
                if let Some(read) = reads.get_mut(&id) {
                    if read.abandoned {
                        reads.remove(&id);
                    } else {
                        read.result = Some(cqe.result());
                    }
                }
            }
        }
        if any {
            self.completed.notify();
        }
    }
}

/// Marks a read abandoned if its future is dropped before the completion
/// (its buffer stays until the kernel is done with it).
struct Abandon<'a> {
    ring: &'a ReadRing,
    id: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        let mut reads = self.ring.reads.borrow_mut();
        match reads.get_mut(&self.id) {
            Some(read) if read.result.is_some() => {
                reads.remove(&self.id);
            }
            Some(read) => read.abandoned = true,
            None => {}
        }
    }
}
