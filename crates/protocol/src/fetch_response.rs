//! The Fetch response (v4–v16) encoded as a list of buffers: the fields
//! around each partition's records go into small buffers, and the records
//! themselves are the stored batches' own buffers, never copied into a frame.
//! Byte for byte what `kafka-protocol` encodes for the same response (a test
//! below compares every version); only Fetch carries megabytes, so only Fetch
//! is encoded by hand.

use bytes::{BufMut, Bytes, BytesMut};

/// One partition of the response.
#[derive(Debug, Clone, Default)]
pub struct PartitionOut {
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// (epoch, end offset) to a follower whose log diverged (v12+).
    pub diverging_epoch: Option<(i32, i64)>,
    /// Whole batches, each part a buffer as stored.
    pub records: Vec<Bytes>,
}

/// One topic of the response: named up to v12, by id from v13.
#[derive(Debug, Clone, Default)]
pub struct TopicOut {
    pub name: String,
    pub topic_id: [u8; 16],
    pub partitions: Vec<PartitionOut>,
}

/// The response frame (size, header, body) as buffers to write in order.
pub fn encode(
    version: i16,
    correlation_id: i32,
    error_code: i16,
    session_id: i32,
    topics: &[TopicOut],
) -> Vec<Bytes> {
    let flexible = version >= 12;
    let mut w = Writer::default();
    w.buf.put_i32(correlation_id);
    if flexible {
        w.uvarint(0); // response header tagged fields
    }
    w.buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        w.buf.put_i16(error_code);
        w.buf.put_i32(session_id);
    }
    w.array_len(topics.len(), flexible);
    for topic in topics {
        if version >= 13 {
            w.buf.put_slice(&topic.topic_id);
        } else if flexible {
            w.uvarint(topic.name.len() as u32 + 1);
            w.buf.put_slice(topic.name.as_bytes());
        } else {
            w.buf.put_i16(topic.name.len() as i16);
            w.buf.put_slice(topic.name.as_bytes());
        }
        w.array_len(topic.partitions.len(), flexible);
        for p in &topic.partitions {
            w.buf.put_i32(p.partition);
            w.buf.put_i16(p.error_code);
            w.buf.put_i64(p.high_watermark);
            w.buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                w.buf.put_i64(p.log_start_offset);
            }
            w.array_len(0, flexible); // aborted_transactions: none
            if version >= 11 {
                w.buf.put_i32(-1); // preferred_read_replica
            }
            let len: usize = p.records.iter().map(|r| r.len()).sum();
            if flexible {
                w.uvarint(len as u32 + 1);
            } else {
                w.buf.put_i32(len as i32);
            }
            w.records(&p.records);
            if flexible {
                match p.diverging_epoch {
                    Some((epoch, end_offset)) if (epoch, end_offset) != (-1, -1) => {
                        w.uvarint(1); // one tagged field
                        w.uvarint(0); // tag 0: diverging_epoch
                        w.uvarint(13); // its size: i32, i64, no tagged fields
                        w.buf.put_i32(epoch);
                        w.buf.put_i64(end_offset);
                        w.uvarint(0);
                    }
                    _ => w.uvarint(0),
                }
            }
        }
        if flexible {
            w.uvarint(0); // topic tagged fields
        }
    }
    if flexible {
        w.uvarint(0); // body tagged fields
    }
    w.finish()
}

#[derive(Default)]
struct Writer {
    parts: Vec<Bytes>,
    buf: BytesMut,
    len: usize,
}

impl Writer {
    fn uvarint(&mut self, mut value: u32) {
        while value >= 0x80 {
            self.buf.put_u8((value as u8) | 0x80);
            value >>= 7;
        }
        self.buf.put_u8(value as u8);
    }

    fn array_len(&mut self, len: usize, flexible: bool) {
        if flexible {
            self.uvarint(len as u32 + 1);
        } else {
            self.buf.put_i32(len as i32);
        }
    }

    fn records(&mut self, records: &[Bytes]) {
        if records.iter().all(|r| r.is_empty()) {
            return;
        }
        self.cut();
        for part in records.iter().filter(|r| !r.is_empty()) {
            self.len += part.len();
            self.parts.push(part.clone());
        }
    }

    /// Ends the current small buffer as a part.
    fn cut(&mut self) {
        if !self.buf.is_empty() {
            let part = self.buf.split().freeze();
            self.len += part.len();
            self.parts.push(part);
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        self.cut();
        let mut frame = Vec::with_capacity(self.parts.len() + 1);
        frame.push(Bytes::copy_from_slice(&(self.len as u32).to_be_bytes()));
        frame.extend(self.parts);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_response;
    use kafka_protocol::messages::fetch_response::{
        EpochEndOffset, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{ApiKey, FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn sample() -> Vec<TopicOut> {
        let batch = |n: u8, len: usize| Bytes::from(vec![n; len]);
        vec![
            TopicOut {
                name: "orders".into(),
                topic_id: [7; 16],
                partitions: vec![
                    PartitionOut {
                        partition: 0,
                        high_watermark: 42,
                        last_stable_offset: 42,
                        log_start_offset: 3,
                        records: vec![batch(1, 100), batch(2, 300)],
                        ..Default::default()
                    },
                    PartitionOut {
                        partition: 5,
                        error_code: 6,
                        high_watermark: -1,
                        last_stable_offset: -1,
                        log_start_offset: -1,
                        ..Default::default()
                    },
                ],
            },
            TopicOut {
                name: "t".repeat(200),
                topic_id: [9; 16],
                partitions: vec![PartitionOut {
                    partition: 2,
                    high_watermark: 1 << 40,
                    last_stable_offset: 1 << 40,
                    log_start_offset: 0,
                    diverging_epoch: Some((4, 77)),
                    records: vec![batch(3, 200)],
                    ..Default::default()
                }],
            },
        ]
    }

    /// The same response through kafka-protocol's encoder.
    fn reference(version: i16, topics: &[TopicOut]) -> Bytes {
        let responses = topics
            .iter()
            .map(|t| {
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_topic_id(uuid::Uuid::from_bytes(t.topic_id))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                let records: Vec<u8> = p.records.concat();
                                PartitionData::default()
                                    .with_partition_index(p.partition)
                                    .with_error_code(p.error_code)
                                    .with_high_watermark(p.high_watermark)
                                    .with_last_stable_offset(p.last_stable_offset)
                                    .with_log_start_offset(if version >= 5 {
                                        p.log_start_offset
                                    } else {
                                        -1
                                    })
                                    .with_diverging_epoch(match p.diverging_epoch {
                                        Some((epoch, end)) if version >= 12 => {
                                            EpochEndOffset::default()
                                                .with_epoch(epoch)
                                                .with_end_offset(end)
                                        }
                                        _ => EpochEndOffset::default(),
                                    })
                                    .with_aborted_transactions(Some(Vec::new()))
                                    .with_records(Some(Bytes::from(records)))
                            })
                            .collect(),
                    )
            })
            .collect();
        let body = FetchResponse::default()
            .with_error_code(0)
            .with_session_id(if version >= 7 { 1234 } else { 0 })
            .with_responses(responses);
        let header_version = ApiKey::Fetch.response_header_version(version);
        encode_response(99, header_version, &body, version).unwrap()
    }

    #[test]
    fn every_version_encodes_as_kafka_protocol_does() {
        let topics = sample();
        for version in 4..=16 {
            let ours = encode(version, 99, 0, 1234, &topics).concat();
            assert_eq!(ours, reference(version, &topics), "Fetch v{version}");
        }
    }

    #[test]
    fn records_are_the_stored_buffers_not_copies() {
        let topics = sample();
        let parts = encode(12, 1, 0, 0, &topics);
        let stored = &topics[0].partitions[0].records[0];
        assert!(parts.iter().any(|p| p.as_ptr() == stored.as_ptr()));
    }
}
