//! Request replay: one shard of its own (own executor, own data directory),
//! request frames in, checked responses out. The request-handler fuzzer
//! (`fuzz/fuzz_targets/handlers.rs`, built with `memory-storage`) and the
//! corpus regression test (`tests/replay.rs`, on O_DIRECT files) share it.
//!
//! An input is up to `FRAMES_PER_INPUT_MAX` frames, each a u32 size (cut to
//! what is left) and that many bytes, handled in order as on one connection,
//! so one input can create a topic, produce, fetch and join a group. The
//! checks: no panic, and a response is one well-formed frame carrying the
//! request's correlation id.

use crate::handlers;
use crate::memory::ConnectionMemory;
use crate::mesh::ShardMsg;
use crate::metadata::MetadataStore;
use crate::settings::BrokerSettings;
use crate::shard::Shard;
use bytes::Bytes;
use glommio::{LocalExecutor, LocalExecutorBuilder};
use sluice_protocol::frame::parse_request;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub const FRAMES_PER_INPUT_MAX: usize = 8;
/// How long a request may take before the next one goes; one still running
/// (a long poll, a join waiting for its round) carries on in the background.
const REQUEST_WAIT: Duration = Duration::from_millis(5);

pub struct World {
    executor: LocalExecutor,
    shard: Rc<Shard>,
    connection: Rc<ConnectionMemory>,
    data_dir: PathBuf,
    /// Dropped with the world: the inbox task ends and lets go of the shard
    /// (the shard holds its own inbox's sender, so the inbox never closes).
    stop: Option<glommio::channels::local_channel::LocalSender<()>>,
}

impl World {
    /// A fresh shard in a fresh data directory (under /dev/shm when there is one).
    pub fn new(name: &str) -> World {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let data_dir = base.join(format!("sluice-replay-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("replay data directory");
        let executor = LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .make()
            .expect("executor");
        let settings = Arc::new(BrokerSettings::for_tests(data_dir.clone()));
        let metadata = Arc::new(MetadataStore::load(&data_dir).expect("metadata"));
        let (controller, internal) =
            crate::cluster_link::start_single_node_controller(&settings).expect("controller");
        crate::cluster_link::bootstrap(&controller, &metadata, &settings, &internal, 1)
            .expect("metadata log");
        let (sender, inbox) = flume::bounded::<ShardMsg>(1024);
        let (stop, stopped) = glommio::channels::local_channel::new_bounded::<()>(1);
        let shard = executor.run(async move {
            let follower = controller.clone();
            let shard = Rc::new(Shard::new(
                0,
                settings,
                metadata.clone(),
                vec![sender.clone()],
                controller,
            ));
            follower.runtime().spawn(crate::cluster_link::follow(
                follower.clone(),
                metadata,
                vec![sender],
                0,
            ));
            let inbox_shard = Rc::downgrade(&shard);
            glommio::spawn_local(async move {
                loop {
                    let message =
                        futures_lite::future::or(async { inbox.recv_async().await.ok() }, async {
                            let _ = stopped.recv().await;
                            None
                        })
                        .await;
                    let (Some(message), Some(shard)) = (message, inbox_shard.upgrade()) else {
                        break;
                    };
                    glommio::spawn_local(crate::inbox::handle(shard, message)).detach();
                }
            })
            .detach();
            shard.open_coordinator().await.expect("offset store");
            shard.open_owned_partitions().await.expect("partitions");
            shard
        });
        World {
            executor,
            shard,
            connection: Rc::new(ConnectionMemory::default()),
            data_dir,
            stop: Some(stop),
        }
    }

    /// Handles the frames of `input` in order and checks each response;
    /// returns how many requests were answered within the wait.
    pub fn run(&self, input: &[u8]) -> usize {
        let frames = frames(input);
        let shard = self.shard.clone();
        let connection = self.connection.clone();
        self.executor.run(async move {
            let mut answered = 0;
            for frame in frames {
                let Ok(request) = parse_request(frame) else {
                    continue;
                };
                let correlation_id = request.correlation_id;
                let (shard, connection) = (shard.clone(), connection.clone());
                let handle = glommio::spawn_local(async move {
                    handlers::handle(&shard, &connection, request).await
                })
                .detach();
                let done = futures_lite::future::or(handle, async {
                    glommio::timer::sleep(REQUEST_WAIT).await;
                    None
                })
                .await;
                if let Some(Ok(Some(response))) = done {
                    check_response(&response.to_bytes(), correlation_id);
                    answered += 1;
                }
            }
            answered
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Requests still parked (long polls, joins) end as the shard stops;
        // its logs are closed so the in-memory files are freed with it.
        drop(self.stop.take());
        let shard = self.shard.clone();
        self.executor.run(async move {
            shard.stopping.set(true);
            shard.close_all().await;
            glommio::timer::sleep(Duration::from_millis(50)).await;
        });
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn check_response(response: &[u8], correlation_id: i32) {
    assert!(
        response.len() >= 8,
        "a response frame holds a size and a correlation id"
    );
    let size = u32::from_be_bytes(response[..4].try_into().unwrap()) as usize;
    assert_eq!(size, response.len() - 4, "response frame size");
    assert_eq!(
        i32::from_be_bytes(response[4..8].try_into().unwrap()),
        correlation_id,
        "response correlation id"
    );
}

/// Splits an input into frames: u32 size (cut to what is left), then the bytes.
pub fn frames(mut data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while data.len() >= 4 && out.len() < FRAMES_PER_INPUT_MAX {
        let size = (u32::from_be_bytes(data[..4].try_into().unwrap()) as usize).min(data.len() - 4);
        out.push(Bytes::copy_from_slice(&data[4..4 + size]));
        data = &data[4 + size..];
    }
    out
}
