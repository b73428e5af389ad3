//! In-memory [`StorageDir`] with fault injection, for tests.
//!
//! Each file keeps what a reader sees now (`current`) and what survived the last
//! `sync_data` (`synced`), plus the writes since then in order. [`MemDir::crash`]
//! turns every file into what a power cut could leave: the synced content, plus
//! some prefix of the later writes, the last of them possibly torn. Files whose
//! creation was not made durable by a directory sync vanish.

use super::{IoBuf, StorageDir, StorageFile, PAGE_BYTES};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;

/// What goes wrong next. Counters count down as faults fire.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next N `sync_data` calls fail with EIO (and persist nothing).
    pub sync_failures: u32,
    /// The next N `write_at` calls fail with EIO (and write nothing).
    pub write_failures: u32,
    /// Total bytes all files may hold; a write or allocation past it fails with ENOSPC.
    pub capacity_bytes: Option<u64>,
    /// Every file operation yields to the executor once, as real I/O does, so
    /// tests can interleave other work with a multi-step operation.
    pub yield_on_io: bool,
}

/// What a crash keeps of the writes made since the last sync.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// Nothing written since the last `sync_data` survives.
    DropUnsynced,
    /// The first `writes_kept` unsynced writes survive whole, then the next one
    /// survives only up to `torn_prefix_bytes` (a torn write); the file keeps
    /// its current size, with zeros where data did not survive. Counts are
    /// taken modulo what is there, so any numbers are valid.
    Torn {
        writes_kept: usize,
        torn_prefix_bytes: usize,
    },
}

#[derive(Default)]
struct FileData {
    current: Vec<u8>,
    synced: Vec<u8>,
    unsynced_writes: Vec<(u64, Vec<u8>)>,
}

#[derive(Default)]
struct MemFs {
    files: BTreeMap<String, Rc<RefCell<FileData>>>,
    names_durable: BTreeSet<String>,
    faults: Faults,
}

impl MemFs {
    /// Bytes held by all files but `except` (which the caller has borrowed).
    fn bytes_used_by_others(&self, except: &Rc<RefCell<FileData>>) -> u64 {
        self.files
            .values()
            .filter(|f| !Rc::ptr_eq(f, except))
            .map(|f| f.borrow().current.len() as u64)
            .sum()
    }

    fn check_capacity(
        &self,
        handle: &Rc<RefCell<FileData>>,
        file: &FileData,
        new_len: u64,
    ) -> io::Result<()> {
        if let Some(capacity) = self.faults.capacity_bytes {
            let len = new_len.max(file.current.len() as u64);
            if self.bytes_used_by_others(handle) + len > capacity {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        Ok(())
    }
}

/// A directory held in memory. Clones share the same files.
#[derive(Clone, Default)]
pub struct MemDir {
    fs: Rc<RefCell<MemFs>>,
}

impl MemDir {
    pub fn new() -> MemDir {
        MemDir::default()
    }

    /// Changes what fails next.
    pub fn set_faults(&self, faults: Faults) {
        self.fs.borrow_mut().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.fs.borrow().faults.clone()
    }

    /// Simulates a power cut. Open handles keep working on the post-crash
    /// content, but a test should drop the log and reopen it.
    pub fn crash(&self, mode: CrashMode) {
        let mut fs = self.fs.borrow_mut();
        let durable = fs.names_durable.clone();
        fs.files.retain(|name, _| durable.contains(name));
        for file in fs.files.values() {
            let mut file = file.borrow_mut();
            let mut survived = file.synced.clone();
            let writes = std::mem::take(&mut file.unsynced_writes);
            if let CrashMode::Torn {
                writes_kept,
                torn_prefix_bytes,
            } = mode
            {
                let kept = writes_kept % (writes.len() + 1);
                for (index, (pos, data)) in writes.iter().enumerate().take(kept + 1) {
                    let data = if index == kept {
                        &data[..torn_prefix_bytes % (data.len() + 1)]
                    } else {
                        &data[..]
                    };
                    apply_write(&mut survived, *pos, data);
                }
                // The size metadata made it (fallocate, an earlier extension)
                // even where the data did not: the missing bytes read as zeros.
                if survived.len() < file.current.len() {
                    survived.resize(file.current.len(), 0);
                }
            }
            file.current = survived.clone();
            file.synced = survived;
        }
        let yield_on_io = fs.faults.yield_on_io;
        fs.faults = Faults {
            yield_on_io,
            ..Faults::default()
        };
    }

    /// Names of the files that exist now.
    pub fn list_names(&self) -> Vec<String> {
        self.fs.borrow().files.keys().cloned().collect()
    }

    /// The current bytes of a file, for tests that corrupt or inspect data.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.fs
            .borrow()
            .files
            .get(name)
            .map(|f| f.borrow().current.clone())
    }

    /// Overwrites bytes of a file in place and durably (bit rot, a bad sector).
    pub fn corrupt(&self, name: &str, pos: u64, bytes: &[u8]) {
        let fs = self.fs.borrow();
        let mut file = fs
            .files
            .get(name)
            .expect("file to corrupt exists")
            .borrow_mut();
        apply_write(&mut file.current, pos, bytes);
        apply_write(&mut file.synced, pos, bytes);
    }
}

async fn maybe_yield(fs: &Rc<RefCell<MemFs>>) {
    let yield_on_io = fs.borrow().faults.yield_on_io;
    if yield_on_io {
        futures_lite::future::yield_now().await;
    }
}

fn apply_write(target: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let end = pos as usize + data.len();
    if target.len() < end {
        target.resize(end, 0);
    }
    target[pos as usize..end].copy_from_slice(data);
}

/// A buffer of the in-memory backend.
pub struct MemBuf(Vec<u8>);

impl IoBuf for MemBuf {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }
}

pub struct MemFile {
    fs: Rc<RefCell<MemFs>>,
    data: Rc<RefCell<FileData>>,
}

impl StorageFile for MemFile {
    type Buf = MemBuf;

    async fn write_at(&self, buf: Rc<MemBuf>, pos: u64) -> io::Result<()> {
        maybe_yield(&self.fs).await;
        assert_eq!(
            pos % PAGE_BYTES,
            0,
            "O_DIRECT write position must be page aligned"
        );
        assert_eq!(
            buf.0.len() as u64 % PAGE_BYTES,
            0,
            "O_DIRECT write length must be page aligned"
        );
        let mut fs = self.fs.borrow_mut();
        if fs.faults.write_failures > 0 {
            fs.faults.write_failures -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut data = self.data.borrow_mut();
        fs.check_capacity(&self.data, &data, pos + buf.0.len() as u64)?;
        apply_write(&mut data.current, pos, &buf.0);
        data.unsynced_writes.push((pos, buf.0.clone()));
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        maybe_yield(&self.fs).await;
        let data = self.data.borrow();
        let start = (pos as usize).min(data.current.len());
        let end = (pos as usize).saturating_add(len).min(data.current.len());
        Ok(Bytes::copy_from_slice(&data.current[start..end]))
    }

    async fn sync_data(&self) -> io::Result<()> {
        maybe_yield(&self.fs).await;
        let mut fs = self.fs.borrow_mut();
        if fs.faults.sync_failures > 0 {
            fs.faults.sync_failures -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut data = self.data.borrow_mut();
        data.synced = data.current.clone();
        data.unsynced_writes.clear();
        Ok(())
    }

    async fn len(&self) -> io::Result<u64> {
        Ok(self.data.borrow().current.len() as u64)
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        maybe_yield(&self.fs).await;
        let fs = self.fs.borrow();
        let mut data = self.data.borrow_mut();
        if len > data.current.len() as u64 {
            fs.check_capacity(&self.data, &data, len)?;
        }
        data.current.resize(len as usize, 0);
        // A size change is metadata: it becomes durable with the next sync. A
        // shrink also cuts any pending write beyond the new end.
        for (pos, write) in data.unsynced_writes.iter_mut() {
            let keep = (len.saturating_sub(*pos) as usize).min(write.len());
            write.truncate(keep);
        }
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        if len > self.data.borrow().current.len() as u64 {
            self.set_len(len).await?;
        }
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

impl StorageDir for MemDir {
    type File = MemFile;

    fn alloc_buf(&self, len: usize) -> MemBuf {
        assert_eq!(
            len as u64 % PAGE_BYTES,
            0,
            "buffer length must be page aligned"
        );
        MemBuf(vec![0; len])
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<MemFile> {
        maybe_yield(&self.fs).await;
        let mut fs = self.fs.borrow_mut();
        let data = match fs.files.get(name) {
            Some(data) => data.clone(),
            None if create => {
                let data = Rc::new(RefCell::new(FileData::default()));
                fs.files.insert(name.to_string(), data.clone());
                data
            }
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(MemFile {
            fs: self.fs.clone(),
            data,
        })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        fs.files
            .remove(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        fs.names_durable.remove(name);
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        let data = fs
            .files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        fs.files.insert(to.to_string(), data);
        // Until the directory is synced a crash may keep either name; the
        // simplest pessimistic model: the old durable name is gone, the new one
        // is not durable yet.
        fs.names_durable.remove(from);
        fs.names_durable.remove(to);
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.fs.borrow().files.keys().cloned().collect())
    }

    async fn sync(&self) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        fs.names_durable = fs.files.keys().cloned().collect();
        Ok(())
    }
}
