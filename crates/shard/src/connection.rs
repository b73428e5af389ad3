//! Connections accepted on this shard's core. Requests are read ahead (up to
//! `max_in_flight_per_connection`) and handled concurrently; responses are
//! written strictly in request order, as the Kafka protocol requires.

use crate::handlers;
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::Task;
use sluice_protocol::frame::{parse_request, FRAME_SIZE_BYTES};
use std::net::SocketAddr;
use std::rc::Rc;

/// Accepts connections until the shard stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            while !shard.stopping.get() {
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
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
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    tracing::debug!(shard = shard.id, "stopped accepting");
}

/// Counts a request as in flight on the shard while it lives.
struct InFlight(Rc<Shard>);

impl InFlight {
    fn new(shard: &Rc<Shard>) -> InFlight {
        shard
            .requests_in_flight
            .set(shard.requests_in_flight.get() + 1);
        InFlight(shard.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.0.requests_in_flight.get() - 1;
        self.0.requests_in_flight.set(left);
        if left == 0 {
            self.0.requests_idle.notify();
        }
    }
}

type Response = Task<Result<Option<Bytes>, String>>;

async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (queue, responses) =
        local_channel::new_bounded::<Response>(shard.settings.max_in_flight_per_connection.max(1));
    let writer_shard = shard.clone();
    let writer_task = glommio::spawn_local(async move {
        while let Some(task) = responses.recv().await {
            match task.await {
                Ok(Some(bytes)) => {
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    // Bad input: this connection ends, every other carries on.
                    log_connection_error(&writer_shard, peer, &reason);
                    break;
                }
            }
        }
        let _ = writer.close().await;
    });
    if let Err(reason) = read_requests(&shard, &mut reader, &queue).await {
        log_connection_error(&shard, peer, &reason);
    }
    drop(queue);
    writer_task.await;
}

fn log_connection_error(shard: &Shard, peer: Option<SocketAddr>, reason: &str) {
    let peer = peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    tracing::warn!(shard = shard.id, %peer, "closing connection: {reason}");
}

/// Reads frames and queues their handling; returns why it stopped (Ok on a clean close).
async fn read_requests(
    shard: &Rc<Shard>,
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
    queue: &local_channel::LocalSender<Response>,
) -> Result<(), String> {
    let max_frame_bytes = shard.settings.max_frame_bytes;
    loop {
        if shard.stopping.get() {
            return Ok(());
        }
        let mut size = [0u8; FRAME_SIZE_BYTES];
        match reader.read_exact(&mut size).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("read failed: {e}")),
        }
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > max_frame_bytes {
            return Err(format!(
                "request frame of {size} bytes is over max_frame_bytes {max_frame_bytes}"
            ));
        }
        let mut body = BytesMut::zeroed(size as usize);
        reader
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("truncated request ({size} bytes announced): {e}"))?;
        let frame = parse_request(body.freeze()).map_err(|e| e.to_string())?;
        let in_flight = InFlight::new(shard);
        let handler_shard = shard.clone();
        let (api_key, api_version, correlation_id) =
            (frame.api_key, frame.api_version, frame.correlation_id);
        let task = glommio::spawn_local(async move {
            let _in_flight = in_flight;
            handlers::handle(&handler_shard, frame)
                .await
                .map_err(|reason| format!("{reason} (api key {api_key} v{api_version}, correlation id {correlation_id})"))
        });
        if queue.send(task).await.is_err() {
            // The writer stopped (a failed request or a broken socket).
            return Ok(());
        }
    }
}
