//! The storage backend of the shard's partition logs and offset-store buckets.
//! The broker runs on O_DIRECT files (glommio DMA). With the `memory-storage`
//! feature the same shard code runs on the storage crate's in-memory backend:
//! the request-handler fuzzer (`fuzz/`) builds it that way, so millions of
//! requests cost no disk I/O. Snapshots and metadata are still plain files
//! under the data directory in both builds.

use std::path::Path;

#[cfg(not(feature = "memory-storage"))]
pub type Dir = sluice_storage::io::dma::DmaDir;
#[cfg(feature = "memory-storage")]
pub type Dir = sluice_storage::io::memory::MemDir;

/// A partition log (or offset-store bucket) on the broker's backend.
pub type Log = sluice_storage::PartitionLog<Dir>;

/// Opens (creating it if needed) the log directory at `path`.
pub fn open_dir(path: &Path) -> std::io::Result<Dir> {
    #[cfg(not(feature = "memory-storage"))]
    {
        Dir::create(path)
    }
    #[cfg(feature = "memory-storage")]
    {
        // The directory still exists: producer snapshots are written next to the log.
        std::fs::create_dir_all(path)?;
        Ok(Dir::new())
    }
}

/// Replaces a small file atomically and durably: temp file, fsync, rename,
/// directory fsync (producer snapshots, epoch caches, high-watermark
/// checkpoints). Blocking.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
