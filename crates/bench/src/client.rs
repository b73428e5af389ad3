//! A pipelined Kafka client connection on one glommio executor: requests go
//! out in call order through a writer task, responses come back in the same
//! order (the Kafka protocol's guarantee) and are matched by correlation id.
//! Any number of calls can be in flight; callers bound that themselves.

use crate::group::REBALANCE_TIMEOUT_MS;
use crate::retry::{CONNECTION_LOST, REQUEST_TIMEOUT};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_protocol::frame::{decode_response, encode_request, response_correlation_id};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

pub const CLIENT_ID: &str = "sluice-bench";

/// "MESSAGE_TOO_LARGE (10)": an error code for a log line.
pub fn kafka_error(code: i16) -> String {
    format!("{} ({code})", sluice_protocol::api::error_code::name(code))
}
/// A response larger than this is refused (a fetch asks for far less).
const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// The versions this client encodes correctly for what it sends:
/// (api, lowest, highest). The highest version the broker also supports wins.
const CLIENT_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 1, 3),
    (ApiKey::JoinGroup, 4, 9),
    (ApiKey::Heartbeat, 1, 4),
    (ApiKey::LeaveGroup, 1, 4),
    (ApiKey::SyncGroup, 1, 5),
    (ApiKey::CreateTopics, 2, 7),
];
const API_VERSIONS_VERSION: i16 = 2;

/// The version negotiated per API with one broker.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    chosen: HashMap<i16, i16>,
    /// What the broker advertised: (api key, min, max).
    pub advertised: Vec<(i16, i16, i16)>,
}

impl Versions {
    pub fn negotiate(advertised: Vec<(i16, i16, i16)>) -> Versions {
        let mut chosen = HashMap::new();
        for &(key, ours_min, ours_max) in CLIENT_VERSIONS {
            if let Some(&(_, min, max)) = advertised.iter().find(|(k, _, _)| *k == key as i16) {
                let version = ours_max.min(max);
                if version >= ours_min.max(min) {
                    chosen.insert(key as i16, version);
                }
            }
        }
        Versions { chosen, advertised }
    }

    pub fn get(&self, key: ApiKey) -> Result<i16, String> {
        self.chosen.get(&(key as i16)).copied().ok_or_else(|| {
            let ours = CLIENT_VERSIONS.iter().find(|(k, _, _)| *k == key);
            format!(
                "the broker supports no version of {key:?} this client speaks (client: {:?}, broker: {:?})",
                ours.map(|(_, a, b)| (*a, *b)),
                self.advertised
                    .iter()
                    .find(|(k, _, _)| *k == key as i16)
                    .map(|(_, a, b)| (*a, *b))
            )
        })
    }
}

type Waiter = LocalSender<Bytes>;

pub struct Conn {
    pub addr: String,
    frames: LocalSender<Bytes>,
    pending: Rc<RefCell<VecDeque<(i32, Waiter)>>>,
    next_correlation_id: Cell<i32>,
    closed: Rc<Cell<bool>>,
    /// Frames queued for the writer and not yet written.
    queued: Rc<Cell<usize>>,
    pub versions: Versions,
    /// How long a response may take (Kafka's `request.timeout.ms`); a group
    /// join round may take the rebalance timeout.
    request_timeout: Duration,
    /// Set when a request timed out and this side closed the connection.
    timed_out: Cell<bool>,
    /// Ends the reader task (and so every call in flight).
    kill: LocalSender<()>,
}

impl Conn {
    /// Connects and negotiates API versions. A request unanswered after
    /// `request_timeout` closes the connection, as Kafka clients do (the
    /// responses of a connection come in order: nothing after it can come).
    pub async fn connect(addr: &str, request_timeout: Duration) -> Result<Rc<Conn>, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let (frames, outgoing) = local_channel::new_unbounded::<Bytes>();
        let pending: Rc<RefCell<VecDeque<(i32, Waiter)>>> = Rc::default();
        let closed = Rc::new(Cell::new(false));
        let writer_closed = closed.clone();
        let queued = Rc::new(Cell::new(0usize));
        let writer_queued = queued.clone();
        glommio::spawn_local(async move {
            while let Some(frame) = outgoing.recv().await {
                writer_queued.set(writer_queued.get().saturating_sub(1));
                if writer.write_all(&frame).await.is_err() {
                    writer_closed.set(true);
                    break;
                }
            }
            let _ = writer.close().await;
        })
        .detach();
        let reader_pending = pending.clone();
        let reader_closed = closed.clone();
        let reader_addr = addr.to_string();
        let (kill, killed) = local_channel::new_bounded::<()>(1);
        glommio::spawn_local(async move {
            let read = async {
                loop {
                    let mut size = [0u8; 4];
                    reader
                        .read_exact(&mut size)
                        .await
                        .map_err(|e| e.to_string())?;
                    let size = i32::from_be_bytes(size);
                    if size < 4 || size as usize > RESPONSE_BYTES_MAX {
                        return Err(format!("response frame of {size} bytes"));
                    }
                    let mut body = BytesMut::zeroed(size as usize);
                    reader
                        .read_exact(&mut body)
                        .await
                        .map_err(|e| e.to_string())?;
                    let body = body.freeze();
                    let correlation_id = response_correlation_id(&body).unwrap_or(-1);
                    let Some((expected, waiter)) = reader_pending.borrow_mut().pop_front() else {
                        return Err(format!(
                            "unsolicited response (correlation id {correlation_id})"
                        ));
                    };
                    if expected != correlation_id {
                        return Err(format!(
                            "response correlation id {correlation_id}, expected {expected}"
                        ));
                    }
                    let _ = waiter.try_send(body);
                }
            };
            let killed = async {
                killed.recv().await;
                Err("closed by the client".to_string())
            };
            let result: Result<(), String> = futures_lite::future::or(read, killed).await;
            reader_closed.set(true);
            // Dropping the waiters fails every call still in flight.
            reader_pending.borrow_mut().clear();
            if let Err(e) = result {
                if !e.contains("early eof") {
                    tracing::debug!(addr = %reader_addr, "connection closed: {e}");
                }
            }
        })
        .detach();
        let mut conn = Conn {
            addr: addr.to_string(),
            frames,
            pending,
            next_correlation_id: Cell::new(0),
            closed,
            queued,
            versions: Versions::default(),
            request_timeout,
            timed_out: Cell::new(false),
            kill,
        };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice-bench"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response: ApiVersionsResponse = conn
            .call_version(ApiKey::ApiVersions, API_VERSIONS_VERSION, &request)
            .await?;
        if response.error_code != 0 {
            return Err(format!(
                "ApiVersions failed: {}",
                kafka_error(response.error_code)
            ));
        }
        let advertised = response
            .api_keys
            .iter()
            .map(|a| (a.api_key, a.min_version, a.max_version))
            .collect();
        conn.versions = Versions::negotiate(advertised);
        Ok(Rc::new(conn))
    }

    /// Waits until at most `frames` requests are queued but not yet written
    /// (paces requests that get no response).
    pub async fn wait_queue_below(&self, frames: usize) {
        while self.queued.get() > frames && !self.closed.get() {
            glommio::timer::sleep(std::time::Duration::from_micros(50)).await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The retry kind of a closed connection: [`REQUEST_TIMEOUT`] if this
    /// side closed it because a response did not come, else
    /// [`CONNECTION_LOST`].
    pub fn lost_kind(&self) -> &'static str {
        if self.timed_out.get() {
            REQUEST_TIMEOUT
        } else {
            CONNECTION_LOST
        }
    }

    /// How long a response to `key` may take: the request timeout, or for a
    /// join round (JoinGroup, SyncGroup) the rebalance timeout and 5 s, as
    /// the Java consumer allows.
    fn timeout_for(&self, key: ApiKey) -> Duration {
        match key {
            ApiKey::JoinGroup | ApiKey::SyncGroup => self
                .request_timeout
                .max(Duration::from_millis(REBALANCE_TIMEOUT_MS as u64 + 5_000)),
            _ => self.request_timeout,
        }
    }

    /// Sends a request at the negotiated version and awaits its response.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &self,
        key: ApiKey,
        request: &Req,
    ) -> Result<Resp, String> {
        let version = self.versions.get(key)?;
        self.call_version(key, version, request).await
    }

    /// The negotiated version of `key` (for fields that depend on it).
    pub fn version(&self, key: ApiKey) -> Result<i16, String> {
        self.versions.get(key)
    }

    async fn call_version<Req: Encodable, Resp: Decodable>(
        &self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, String> {
        let (waiter, response) = local_channel::new_bounded(1);
        self.send(key, version, request, Some(waiter))?;
        let timeout = self.timeout_for(key);
        let answered = async { Some(response.recv().await) };
        let timed_out = async {
            glommio::timer::sleep(timeout).await;
            None
        };
        let body = match futures_lite::future::or(answered, timed_out).await {
            Some(Some(body)) => body,
            Some(None) => {
                return Err(format!(
                    "connection to {} closed before the {key:?} response",
                    self.addr
                ))
            }
            None => {
                self.timed_out.set(true);
                self.closed.set(true);
                let _ = self.kill.try_send(());
                return Err(format!(
                    "no {key:?} response from {} within {} ms: connection closed",
                    self.addr,
                    timeout.as_millis()
                ));
            }
        };
        decode_response(body, key, version)
            .map_err(|e| format!("cannot decode {key:?} v{version} response: {e}"))
    }

    /// Sends a request that gets no response (Produce with acks=0).
    pub fn send_only<Req: Encodable>(&self, key: ApiKey, request: &Req) -> Result<(), String> {
        let version = self.versions.get(key)?;
        self.send(key, version, request, None)
    }

    /// Encodes and queues one frame; registers the waiter in the same step, so
    /// the pending queue stays in wire order.
    fn send<Req: Encodable>(
        &self,
        key: ApiKey,
        version: i16,
        request: &Req,
        waiter: Option<Waiter>,
    ) -> Result<(), String> {
        if self.closed.get() {
            return Err(format!("connection to {} is closed", self.addr));
        }
        let correlation_id = self.next_correlation_id.get();
        self.next_correlation_id
            .set(correlation_id.wrapping_add(1) & i32::MAX);
        let frame = encode_request(key, version, correlation_id, CLIENT_ID, request)
            .map_err(|e| format!("cannot encode {key:?} v{version}: {e}"))?;
        if let Some(waiter) = waiter {
            self.pending
                .borrow_mut()
                .push_back((correlation_id, waiter));
        }
        self.frames
            .try_send(frame)
            .map_err(|_| format!("connection to {} is closed", self.addr))?;
        self.queued.set(self.queued.get() + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_highest_common_version() {
        let v = Versions::negotiate(vec![
            (ApiKey::Produce as i16, 0, 11),
            (ApiKey::Fetch as i16, 0, 8),
            (ApiKey::JoinGroup as i16, 0, 2),
        ]);
        assert_eq!(v.get(ApiKey::Produce).unwrap(), 9);
        assert_eq!(v.get(ApiKey::Fetch).unwrap(), 8);
        // No common version: a clear error naming both ranges.
        let e = v.get(ApiKey::JoinGroup).unwrap_err();
        assert!(e.contains("JoinGroup") && e.contains("(0, 2)"), "{e}");
        assert!(v.get(ApiKey::Metadata).is_err());
    }
}
