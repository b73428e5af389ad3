//! The I/O seam: every byte the storage engine reads or writes goes through the
//! two traits below. [`dma`] implements them with glommio O_DIRECT files,
//! [`memory`] in memory with injectable faults (torn writes, crashes that drop
//! unsynced data, failing fdatasync, ENOSPC).
//!
//! Contract for writers: `write_at` positions and lengths are multiples of
//! [`PAGE_BYTES`]; buffers come from [`StorageDir::alloc_buf`].

pub mod dma;
pub mod memory;
pub mod uring;

use bytes::Bytes;
use std::io;
use std::rc::Rc;

/// The O_DIRECT alignment every write respects (ext4/xfs logical block ≤ 4 KiB).
pub const PAGE_BYTES: u64 = 4096;

/// A buffer that a [`StorageFile`] can write without copying.
pub trait IoBuf {
    fn as_bytes(&self) -> &[u8];
    fn as_bytes_mut(&mut self) -> &mut [u8];
    /// Shortens the buffer to `len` bytes; what is written is the whole buffer.
    fn truncate(&mut self, len: usize);
}

/// One open file. Single-core: methods take `&self` and are awaited on the
/// core that opened it.
#[allow(async_fn_in_trait, clippy::len_without_is_empty)]
pub trait StorageFile {
    type Buf: IoBuf;
    async fn write_at(&self, buf: Rc<Self::Buf>, pos: u64) -> io::Result<()>;
    /// Reads up to `len` bytes at `pos` (short at end of file).
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
    async fn sync_data(&self) -> io::Result<()>;
    async fn len(&self) -> io::Result<u64>;
    async fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space up to `len` bytes (the file size becomes at least `len`).
    async fn allocate(&self, len: u64) -> io::Result<()>;
    async fn close(self) -> io::Result<()>;
}

/// One directory: a partition's folder.
#[allow(async_fn_in_trait)]
pub trait StorageDir {
    type File: StorageFile;
    /// A buffer of `len` bytes (`len` a multiple of [`PAGE_BYTES`]) that files
    /// of this directory can write without a copy. Its content is unspecified.
    fn alloc_buf(&self, len: usize) -> <Self::File as StorageFile>::Buf;
    /// Takes back a buffer that is no longer used, for reuse by `alloc_buf`.
    fn recycle_buf(&self, _buf: <Self::File as StorageFile>::Buf) {}
    async fn open(&self, name: &str, create: bool) -> io::Result<Self::File>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals in this directory durable.
    async fn sync(&self) -> io::Result<()>;
}
