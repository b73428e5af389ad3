//! The sparse offset index and the time index of one segment.
//!
//! On disk (little-endian, Sluice's own format, each entry checksummed):
//!
//! offset index, `NNNNNNNNNNNNNNNNNNNN.index`, 12 bytes per entry:
//! `relative_offset u32 | position u32 | crc32 u32` (crc32fast over the first 8 bytes)
//!
//! time index, `NNNNNNNNNNNNNNNNNNNN.timeindex`, 16 bytes per entry:
//! `max_timestamp i64 | relative_offset u32 | crc32 u32` (over the first 12 bytes)
//!
//! An offset-index entry says: the batch that starts at `position` has base
//! offset `segment_base + relative_offset`. A time-index entry says: every
//! record before the batch holding `segment_base + relative_offset`, and that
//! batch, has a timestamp ≤ `max_timestamp`.

pub const OFFSET_ENTRY_BYTES: usize = 12;
pub const TIME_ENTRY_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    pub entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn push(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                entry.relative_offset > last.relative_offset,
                "offset index not increasing"
            );
            assert!(
                entry.position > last.position,
                "offset index positions not increasing"
            );
        }
        self.entries.push(entry);
    }

    /// The last entry at or before `relative_offset` (the segment start if none).
    pub fn lookup(&self, relative_offset: u32) -> OffsetEntry {
        let index = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        if index == 0 {
            OffsetEntry {
                relative_offset: 0,
                position: 0,
            }
        } else {
            self.entries[index - 1]
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for entry in &self.entries {
            let start = out.len();
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
            out.extend_from_slice(&entry.position.to_le_bytes());
            let crc = crc32fast::hash(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Decodes an index file. `None` if any entry fails its checksum, the
    /// length is not a whole number of entries, or entries do not increase.
    pub fn decode(bytes: &[u8]) -> Option<OffsetIndex> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES) {
            return None;
        }
        let mut index = OffsetIndex::default();
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
            let crc = u32::from_le_bytes(chunk[8..12].try_into().unwrap());
            if crc32fast::hash(&chunk[..8]) != crc {
                return None;
            }
            let entry = OffsetEntry {
                relative_offset: u32::from_le_bytes(chunk[0..4].try_into().unwrap()),
                position: u32::from_le_bytes(chunk[4..8].try_into().unwrap()),
            };
            if let Some(last) = index.entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position
                {
                    return None;
                }
            }
            index.entries.push(entry);
        }
        Some(index)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeIndex {
    pub entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Adds an entry if it raises the maximum timestamp.
    pub fn maybe_push(&mut self, entry: TimeEntry) {
        match self.entries.last() {
            Some(last) if entry.max_timestamp <= last.max_timestamp => {}
            Some(last) => {
                assert!(
                    entry.relative_offset >= last.relative_offset,
                    "time index offsets go back"
                );
                if entry.relative_offset == last.relative_offset {
                    self.entries.pop();
                }
                self.entries.push(entry);
            }
            None => self.entries.push(entry),
        }
    }

    /// The relative offset to start scanning from to find the first record with
    /// timestamp ≥ `timestamp`: the offset of the last entry strictly below it.
    pub fn scan_start(&self, timestamp: i64) -> u32 {
        let index = self
            .entries
            .partition_point(|e| e.max_timestamp < timestamp);
        if index == 0 {
            0
        } else {
            self.entries[index - 1].relative_offset
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for entry in &self.entries {
            let start = out.len();
            out.extend_from_slice(&entry.max_timestamp.to_le_bytes());
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
            let crc = crc32fast::hash(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<TimeIndex> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_BYTES) {
            return None;
        }
        let mut index = TimeIndex::default();
        for chunk in bytes.chunks_exact(TIME_ENTRY_BYTES) {
            let crc = u32::from_le_bytes(chunk[12..16].try_into().unwrap());
            if crc32fast::hash(&chunk[..12]) != crc {
                return None;
            }
            let entry = TimeEntry {
                max_timestamp: i64::from_le_bytes(chunk[0..8].try_into().unwrap()),
                relative_offset: u32::from_le_bytes(chunk[8..12].try_into().unwrap()),
            };
            if let Some(last) = index.entries.last() {
                if entry.max_timestamp <= last.max_timestamp
                    || entry.relative_offset < last.relative_offset
                {
                    return None;
                }
            }
            index.entries.push(entry);
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_round_trips_and_looks_up() {
        let mut index = OffsetIndex::default();
        index.push(OffsetEntry {
            relative_offset: 10,
            position: 4096,
        });
        index.push(OffsetEntry {
            relative_offset: 20,
            position: 8200,
        });
        let decoded = OffsetIndex::decode(&index.encode()).unwrap();
        assert_eq!(decoded, index);
        assert_eq!(index.lookup(5).position, 0);
        assert_eq!(index.lookup(10).position, 4096);
        assert_eq!(index.lookup(19).position, 4096);
        assert_eq!(index.lookup(25).position, 8200);
    }

    #[test]
    fn offset_index_rejects_flipped_bits_and_partial_entries() {
        let mut index = OffsetIndex::default();
        index.push(OffsetEntry {
            relative_offset: 1,
            position: 100,
        });
        let bytes = index.encode();
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(OffsetIndex::decode(&bad).is_none(), "flip at {at} accepted");
        }
        assert!(OffsetIndex::decode(&bytes[..5]).is_none());
        assert!(
            OffsetIndex::decode(&[0u8; OFFSET_ENTRY_BYTES]).is_none(),
            "zero page accepted"
        );
    }

    #[test]
    fn time_index_keeps_only_increasing_maxima() {
        let mut index = TimeIndex::default();
        index.maybe_push(TimeEntry {
            max_timestamp: 100,
            relative_offset: 0,
        });
        index.maybe_push(TimeEntry {
            max_timestamp: 90,
            relative_offset: 5,
        });
        index.maybe_push(TimeEntry {
            max_timestamp: 200,
            relative_offset: 9,
        });
        assert_eq!(index.entries.len(), 2);
        assert_eq!(index.scan_start(50), 0);
        assert_eq!(index.scan_start(150), 0);
        assert_eq!(index.scan_start(201), 9);
        assert_eq!(TimeIndex::decode(&index.encode()).unwrap(), index);
    }
}
