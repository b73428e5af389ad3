//! Stored batches as a list of buffers: what a read returns and what a fetch
//! response sends, without copying them into one buffer. Every part holds
//! whole batches (a disk read's run of batches, or one cached batch), so a
//! part boundary is always a batch boundary.

use bytes::{Bytes, BytesMut};
use sluice_protocol::record_batch::BatchHeader;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    parts: Vec<Bytes>,
    len: usize,
}

impl Records {
    pub fn new() -> Records {
        Records::default()
    }

    /// Appends a part (whole batches); an empty one is skipped.
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }

    /// All bytes, over every part.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }

    /// The batches as one buffer: free for a single part, a copy otherwise
    /// (for readers that parse records, not for responses).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => {
                let mut all = BytesMut::with_capacity(self.len);
                for part in parts {
                    all.extend_from_slice(part);
                }
                all.freeze()
            }
        }
    }

    /// Each batch's header, in order.
    pub fn headers(&self) -> impl Iterator<Item = BatchHeader> + '_ {
        self.parts.iter().flat_map(|part| {
            let mut at = 0;
            std::iter::from_fn(move || {
                let header = BatchHeader::parse(part.get(at..)?).ok()?;
                at += header.total_bytes();
                Some(header)
            })
        })
    }

    /// The longest prefix of whole batches for which `keep(header, bytes up to
    /// and including this batch)` holds.
    pub fn prefix_while(self, mut keep: impl FnMut(&BatchHeader, usize) -> bool) -> Records {
        let mut kept = Records::new();
        let mut total = 0;
        for part in self.parts {
            let mut end = 0;
            let mut stopped = false;
            while end < part.len() {
                let Ok(header) = BatchHeader::parse(&part[end..]) else {
                    stopped = true;
                    break;
                };
                let next = end + header.total_bytes();
                if next > part.len() || !keep(&header, total + next) {
                    stopped = true;
                    break;
                }
                end = next;
            }
            total += end;
            if end == part.len() {
                kept.push(part);
            } else {
                kept.push(part.slice(..end));
            }
            if stopped {
                break;
            }
        }
        kept
    }

    /// The first batch alone (all of the first part if it cannot be parsed).
    pub fn first_batch(self) -> Records {
        let Some(first) = self.parts.into_iter().next() else {
            return Records::new();
        };
        let end =
            BatchHeader::parse(&first).map_or(first.len(), |h| h.total_bytes().min(first.len()));
        Records::from(first.slice(..end))
    }
}

impl From<Bytes> for Records {
    fn from(part: Bytes) -> Records {
        let mut records = Records::new();
        records.push(part);
        records
    }
}
