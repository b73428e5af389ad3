//! [`StorageDir`] on glommio: O_DIRECT files driven by the core's io_uring.

use super::{IoBuf, StorageDir, StorageFile, PAGE_BYTES};
use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn to_io(error: glommio::GlommioError<()>) -> io::Error {
    match error {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

impl IoBuf for DmaBuffer {
    fn as_bytes(&self) -> &[u8] {
        DmaBuffer::as_bytes(self)
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        DmaBuffer::as_bytes_mut(self)
    }
    fn truncate(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

/// An O_DIRECT file of one partition.
pub struct DmaStorageFile {
    file: DmaFile,
}

impl StorageFile for DmaStorageFile {
    type Buf = DmaBuffer;

    async fn write_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<()> {
        debug_assert_eq!(pos % PAGE_BYTES, 0);
        let len = buf.len();
        let written = self.file.write_rc_at(buf, pos).await.map_err(to_io)?;
        if written != len {
            // A short O_DIRECT write happens when the disk fills mid-request.
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        // Into a buffer of our own (sent as it is, from any core); glommio's
        // buffers belong to this core, so theirs would have to be copied.
        if let Some(ring) = super::uring::ReadRing::current() {
            use std::os::unix::io::AsRawFd;
            match ring.read(self.file.as_raw_fd(), pos, len).await {
                Ok(bytes) => return Ok(bytes),
                // EINVAL: a file or device O_DIRECT reads cannot serve this way.
                Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
                Err(_) => {}
            }
        }
        let read = self.file.read_at(pos, len).await.map_err(to_io)?;
        Ok(Bytes::copy_from_slice(&read))
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(to_io)
    }

    async fn len(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(to_io)
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(to_io)
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        // keep_size = false: the file size becomes `len`, so later writes inside
        // it change no size metadata.
        self.file.pre_allocate(len, false).await.map_err(to_io)
    }

    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(to_io)
    }
}

/// A directory of O_DIRECT files.
#[derive(Clone)]
pub struct DmaDir {
    path: PathBuf,
}

impl DmaDir {
    /// Creates the directory (and parents) if needed.
    pub fn create(path: impl AsRef<Path>) -> io::Result<DmaDir> {
        std::fs::create_dir_all(path.as_ref())?;
        // Absolute: glommio opens directories with openat(-1, ..), which
        // fails with EBADF for a relative path.
        Ok(DmaDir {
            path: std::fs::canonicalize(path.as_ref())?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Write buffers of this core kept for reuse: fresh large buffers come from
/// mmap and cost a page fault per page on first touch.
#[derive(Default)]
struct BufferPool {
    by_len: Vec<(usize, Vec<DmaBuffer>)>,
    bytes: usize,
}

/// The most a core keeps in its pool.
const BUFFER_POOL_BYTES_MAX: usize = 64 << 20;

impl BufferPool {
    fn take(&mut self, len: usize) -> Option<DmaBuffer> {
        let (_, list) = self.by_len.iter_mut().find(|(l, _)| *l == len)?;
        let buf = list.pop()?;
        self.bytes -= len;
        Some(buf)
    }

    fn put(&mut self, buf: DmaBuffer) {
        let len = buf.len();
        if !len.is_power_of_two() || self.bytes + len > BUFFER_POOL_BYTES_MAX {
            return;
        }
        self.bytes += len;
        match self.by_len.iter_mut().find(|(l, _)| *l == len) {
            Some((_, list)) => list.push(buf),
            None => self.by_len.push((len, vec![buf])),
        }
    }
}

thread_local! {
    static BUFFER_POOL: std::cell::RefCell<BufferPool> = std::cell::RefCell::new(BufferPool::default());
    /// Devices whose io_uring poll-ring support this executor thread has probed.
    static DEVICES_PROBED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes of write buffers this core keeps for reuse.
pub fn pooled_bytes() -> usize {
    BUFFER_POOL.with(|pool| pool.borrow().bytes)
}

impl DmaDir {
    /// glommio decides once per device and thread whether O_DIRECT reads can go
    /// through its IOPOLL ring, by reading the first block of the first DMA file
    /// opened there. On an empty file that read succeeds trivially and glommio
    /// wrongly enables polling, after which every read fails with EOPNOTSUPP on
    /// devices without poll queues (virtio here). So the first DMA file opened
    /// on a device is a non-empty probe file, and the probe gives the right answer.
    async fn probe_device(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let device = std::fs::metadata(&self.path)?.dev();
        if DEVICES_PROBED.with(|d| d.borrow().contains(&device)) {
            return Ok(());
        }
        let probe = self.path.join(".sluice-iopoll-probe");
        std::fs::write(&probe, vec![0u8; PAGE_BYTES as usize])?;
        let result = DmaFile::open(&probe).await.map_err(to_io);
        if let Ok(file) = result {
            let _ = file.close().await;
        }
        let _ = std::fs::remove_file(&probe);
        DEVICES_PROBED.with(|d| d.borrow_mut().push(device));
        Ok(())
    }
}

impl StorageDir for DmaDir {
    type File = DmaStorageFile;

    fn alloc_buf(&self, len: usize) -> DmaBuffer {
        assert_eq!(
            len as u64 % PAGE_BYTES,
            0,
            "buffer length must be page aligned"
        );
        if let Some(buf) = BUFFER_POOL.with(|pool| pool.borrow_mut().take(len)) {
            return buf;
        }
        // From the core's registered io memory when it has room, else the heap.
        glommio::allocate_dma_buffer(len)
    }

    fn recycle_buf(&self, buf: DmaBuffer) {
        BUFFER_POOL.with(|pool| pool.borrow_mut().put(buf));
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<DmaStorageFile> {
        self.probe_device().await?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(self.path.join(name))
            .await
            .map_err(to_io)?;
        Ok(DmaStorageFile { file })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                if !name.starts_with(".sluice-") {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    async fn sync(&self) -> io::Result<()> {
        let dir = glommio::io::Directory::open(&self.path)
            .await
            .map_err(to_io)?;
        let result = dir.sync().await.map_err(to_io);
        let _ = dir.close().await;
        result
    }
}
