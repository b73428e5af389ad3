//! Connections accepted on this shard's core. Requests are read ahead (up to
//! `max_in_flight_per_connection`) and handled concurrently; responses are
//! written strictly in request order, as the Kafka protocol requires.
//!
//! Memory (see `memory.rs`): a frame's first step (all of a small request) is
//! taken from the core's budget before it is read, the rest of a large frame
//! once that step has arrived; the buffer grows as the bytes arrive (reads
//! wait when the budget is spent); a response is charged to its connection until written, and the
//! reader stops reading while more than `CONNECTION_UNWRITTEN_BYTES_MAX` are
//! unwritten (a client that does not read its responses is not read from).
//!
//! Time: a connection with nothing in flight and no bytes for
//! `connections_max_idle_ms` is closed; so is one whose request stops
//! arriving mid-frame for `request_timeout_ms`, and one whose responses make
//! no progress for `connections_max_idle_ms`.

use crate::egress;
use crate::handlers;
use crate::log_limit::LogLimiter;
use crate::memory::{Charge, ConnectionMemory, FrameStep};
use crate::shard::Shard;
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::Task;
use sluice_protocol::frame::{parse_request, ResponseFrame, FRAME_SIZE_BYTES};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The reader pauses while a connection has more than this unwritten.
pub const CONNECTION_UNWRITTEN_BYTES_MAX: usize = 1 << 20;
/// A frame's buffer grows by at most this much at a time; a frame's first
/// step is also what it holds of the budget while waiting for the rest.
pub const FRAME_STEP_BYTES: usize = 1 << 20;
/// How often a connection waiting for a request checks whether it is idle.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Accept failures (EMFILE at the descriptor limit) are logged at most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts connections until the shard stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let accept_errors = LogLimiter::new(ACCEPT_ERROR_LOG_INTERVAL);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            while !shard.stopping.get() {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            None
        })
        .await;
        let Some(accepted) = accepted else { break };
        match accepted {
            Ok(stream) => {
                let shard = shard.clone();
                glommio::spawn_local(async move { serve(shard, stream).await }).detach();
            }
            Err(e) => {
                // At the descriptor limit accept fails at once, every time:
                // one line per interval, and a pause so the loop does not spin.
                if let Some(suppressed) = accept_errors.allow() {
                    tracing::warn!(
                        shard = shard.id,
                        error = %e,
                        "accept failed ({suppressed} more failures since the last line)"
                    );
                }
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracing::debug!(shard = shard.id, "stopped accepting");
    if let Some((zc, _)) = &shard.zero_copy {
        let totals = zc.stats();
        tracing::info!(
            shard = shard.id,
            sends = totals.sends,
            bytes = totals.bytes,
            notifications = totals.notifications,
            copied_by_the_kernel = totals.copied_notifications,
            "send_zc totals"
        );
    }
}

/// Counts a request as in flight on the shard and on its connection while it lives.
struct InFlight {
    shard: Rc<Shard>,
    connection: Rc<Cell<usize>>,
}

impl InFlight {
    fn new(shard: &Rc<Shard>, connection: &Rc<Cell<usize>>) -> InFlight {
        shard
            .requests_in_flight
            .set(shard.requests_in_flight.get() + 1);
        connection.set(connection.get() + 1);
        InFlight {
            shard: shard.clone(),
            connection: connection.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connection.set(self.connection.get() - 1);
        let left = self.shard.requests_in_flight.get() - 1;
        self.shard.requests_in_flight.set(left);
        if left == 0 {
            self.shard.requests_idle.notify();
        }
    }
}

/// A response and the budget it holds until written.
type Response = Task<Result<Option<(ResponseFrame, Charge)>, String>>;

/// Why a connection is closed, for the log.
enum Close {
    /// The client closed it, or the shard is stopping: nothing to say.
    Quietly,
    Idle(Duration),
    Error(String),
}

async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let counters = &shard.counters;
    counters
        .connections_open
        .set(counters.connections_open.get() + 1);
    counters
        .connections_accepted
        .set(counters.connections_accepted.get() + 1);
    // Valid while the writer half lives: responses go out through it.
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&stream);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (queue, responses) =
        local_channel::new_bounded::<Response>(shard.settings.max_in_flight_per_connection.max(1));
    let memory = Rc::new(ConnectionMemory::default());
    let in_flight = Rc::new(Cell::new(0usize));
    // Dropped by the writer when it stops: the reader stops too.
    let (writer_alive, writer_stopped) = local_channel::new_bounded::<()>(1);
    let writer_shard = shard.clone();
    let idle = Duration::from_millis(shard.settings.connections_max_idle_ms);
    let writer_task = glommio::spawn_local(async move {
        let _alive = writer_alive;
        while let Some(task) = responses.recv().await {
            match task.await {
                Ok(Some((frame, charge))) => {
                    let zero_copy = writer_shard
                        .zero_copy
                        .as_ref()
                        .map(|(zc, min)| (&**zc, *min));
                    if let Err(e) =
                        egress::write_frame(fd, &mut writer, &frame, idle, zero_copy).await
                    {
                        let close = match e.kind() {
                            std::io::ErrorKind::TimedOut => Close::Idle(idle),
                            _ => Close::Quietly,
                        };
                        log_close(&writer_shard, peer, close);
                        break;
                    }
                    drop(charge);
                }
                Ok(None) => {}
                Err(reason) => {
                    // Bad input: this connection ends, every other carries on.
                    log_close(&writer_shard, peer, Close::Error(reason));
                    break;
                }
            }
        }
        let _ = writer.close().await;
    });
    let reading = read_requests(&shard, &mut reader, &queue, &memory, &in_flight);
    let writer_gone = async {
        let _ = writer_stopped.recv().await;
        Ok(())
    };
    if let Err(close) = futures_lite::future::or(reading, writer_gone).await {
        log_close(&shard, peer, close);
    }
    drop(queue);
    writer_task.await;
    let counters = &shard.counters;
    counters
        .connections_open
        .set(counters.connections_open.get() - 1);
}

fn log_close(shard: &Shard, peer: Option<SocketAddr>, close: Close) {
    let peer = peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    match close {
        Close::Quietly => {}
        Close::Idle(after) => tracing::debug!(
            shard = shard.id,
            %peer,
            "closing connection: idle for {} ms (connections_max_idle_ms)",
            after.as_millis()
        ),
        Close::Error(reason) => {
            if let Some(suppressed) = shard.bad_input_log.allow() {
                tracing::warn!(
                    shard = shard.id,
                    %peer,
                    "closing connection: {reason} ({suppressed} more bad-input lines not logged since the last)"
                );
            }
        }
    }
}

/// Reads into `buf` until it is full. `deadline` bounds the whole read;
/// reads cancelled by it lose no bytes (glommio reads are readiness-based).
async fn read_full(
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
    buf: &mut [u8],
    deadline: Instant,
) -> Result<ReadOutcome, std::io::Error> {
    let mut filled = 0;
    while filled < buf.len() {
        let read = futures_lite::future::or(
            async { Some(reader.read(&mut buf[filled..]).await) },
            async {
                glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
                None
            },
        )
        .await;
        match read {
            None => return Ok(ReadOutcome::TimedOut { filled }),
            Some(Ok(0)) => return Ok(ReadOutcome::Eof),
            Some(Ok(n)) => filled += n,
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(ReadOutcome::Full)
}

enum ReadOutcome {
    Full,
    TimedOut { filled: usize },
    Eof,
}

/// `bytes` of the core's budget for a request frame of `size` bytes, waiting
/// at most `limit` for them.
async fn acquire_within(
    shard: &Rc<Shard>,
    bytes: usize,
    step: FrameStep,
    size: usize,
    limit: Duration,
) -> Result<Charge, Close> {
    futures_lite::future::or(
        async { Some(shard.memory.acquire(bytes, step).await) },
        async {
            glommio::timer::sleep(limit).await;
            None
        },
    )
    .await
    .ok_or_else(|| {
        Close::Error(format!(
            "no memory for a request of {size} bytes for {} ms (memory_budget_bytes {} of this core in use)",
            limit.as_millis(),
            shard.memory.used()
        ))
    })
}

/// Reads frames and queues their handling; returns why it stopped.
async fn read_requests(
    shard: &Rc<Shard>,
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
    queue: &local_channel::LocalSender<Response>,
    memory: &Rc<ConnectionMemory>,
    in_flight: &Rc<Cell<usize>>,
) -> Result<(), Close> {
    let max_frame_bytes = shard.settings.max_frame_bytes;
    let idle = Duration::from_millis(shard.settings.connections_max_idle_ms);
    let request_timeout = Duration::from_millis(shard.settings.request_timeout_ms);
    loop {
        if shard.stopping.get() {
            return Ok(());
        }
        // Backpressure: a client that does not read its responses is not read from.
        memory.drained_to(CONNECTION_UNWRITTEN_BYTES_MAX).await;
        // The size field. The connection is idle while nothing is in flight,
        // nothing is unwritten and no byte arrives; once the first byte is
        // in, the rest of the frame must come within the request timeout.
        let mut size = [0u8; FRAME_SIZE_BYTES];
        let mut filled = 0;
        let mut first_byte_at: Option<Instant> = None;
        let mut quiet_since = Instant::now();
        while filled < FRAME_SIZE_BYTES {
            let now = Instant::now();
            if in_flight.get() > 0 || memory.unwritten() > 0 {
                quiet_since = now;
            }
            let deadline = match first_byte_at {
                Some(at) => at + request_timeout,
                None => now + idle.min(IDLE_CHECK_INTERVAL),
            };
            match read_full(reader, &mut size[filled..], deadline)
                .await
                .map_err(|e| Close::Error(format!("read failed: {e}")))?
            {
                ReadOutcome::Full => filled = FRAME_SIZE_BYTES,
                ReadOutcome::Eof => return Err(Close::Quietly),
                ReadOutcome::TimedOut { filled: more } => {
                    let now = Instant::now();
                    if more > 0 && first_byte_at.is_none() {
                        first_byte_at = Some(now);
                    }
                    filled += more;
                    if first_byte_at.is_some_and(|at| now >= at + request_timeout) {
                        return Err(Close::Error(format!(
                            "request size field cut short for {} ms (request_timeout_ms)",
                            request_timeout.as_millis()
                        )));
                    }
                    if shard.stopping.get() {
                        return Ok(());
                    }
                    let quiet = in_flight.get() == 0 && memory.unwritten() == 0;
                    if filled == 0 && quiet && now.duration_since(quiet_since) >= idle {
                        return Err(Close::Idle(now.duration_since(quiet_since)));
                    }
                }
            }
        }
        let frame_started = first_byte_at.unwrap_or_else(Instant::now);
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > max_frame_bytes {
            return Err(Close::Error(format!(
                "request frame of {size} bytes is over max_frame_bytes {max_frame_bytes}"
            )));
        }
        let size = size as usize;
        // The body. Its first step (all of a small request) is taken from the
        // budget before it is read; once that step has arrived, the rest of a
        // large frame is taken at once (so frames waiting for memory hold one
        // step each, never half a frame), and the buffer grows as bytes
        // arrive. Time spent waiting for memory is the broker's: it does not
        // count against the client's request timeout, but a wait longer than
        // that timeout closes the connection.
        let first_step = size.min(FRAME_STEP_BYTES);
        let mut charge =
            acquire_within(shard, first_step, FrameStep::First, size, request_timeout).await?;
        let mut waited = Duration::ZERO;
        let mut body = BytesMut::new();
        let mut filled = 0;
        while filled < size {
            if filled == body.len() {
                if filled == first_step {
                    let started = Instant::now();
                    let rest = acquire_within(
                        shard,
                        size - first_step,
                        FrameStep::Continuation,
                        size,
                        request_timeout,
                    )
                    .await?;
                    charge.absorb(rest);
                    waited = started.elapsed();
                }
                let step = (size - filled).min(FRAME_STEP_BYTES);
                body.resize(filled + step, 0);
            }
            let deadline = frame_started + waited + request_timeout;
            let end = body.len();
            match read_full(reader, &mut body[filled..end], deadline)
                .await
                .map_err(|e| Close::Error(format!("read failed: {e}")))?
            {
                ReadOutcome::Full => filled = end,
                ReadOutcome::Eof => {
                    return Err(Close::Error(format!(
                        "truncated request ({size} bytes announced, connection closed)"
                    )))
                }
                ReadOutcome::TimedOut { filled: more } => {
                    return Err(Close::Error(format!(
                        "request of {size} bytes stopped arriving after {} bytes for {} ms (request_timeout_ms)",
                        filled + more,
                        request_timeout.as_millis()
                    )))
                }
            }
        }
        let frame = parse_request(body.freeze()).map_err(|e| Close::Error(e.to_string()))?;
        let in_flight_guard = InFlight::new(shard, in_flight);
        let handler_shard = shard.clone();
        let handler_memory = memory.clone();
        let (api_key, api_version, correlation_id) =
            (frame.api_key, frame.api_version, frame.correlation_id);
        let task = glommio::spawn_local(async move {
            let _in_flight = in_flight_guard;
            let started = Instant::now();
            let result = handlers::handle(&handler_shard, &handler_memory, frame).await;
            handler_shard
                .counters
                .request(api_key, api_version, started.elapsed());
            drop(charge); // the request's bytes
                          // Charged in the same step as the handler's return: a fetch's
                          // grant (dropped inside) becomes the real response size here.
            match result {
                Ok(Some(bytes)) => {
                    let charge = handler_shard
                        .memory
                        .charge(bytes.len(), Some(handler_memory.clone()));
                    Ok(Some((bytes, charge)))
                }
                Ok(None) => Ok(None),
                Err(reason) => Err(format!(
                    "{reason} (api key {api_key} v{api_version}, correlation id {correlation_id})"
                )),
            }
        });
        if queue.send(task).await.is_err() {
            // The writer stopped (a failed request or a broken socket).
            return Ok(());
        }
    }
}
