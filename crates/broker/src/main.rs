//! `sluice`: starts one pinned glommio executor (shard) per configured CPU,
//! each accepting on the shared port (SO_REUSEPORT), and stops them cleanly on
//! SIGTERM/SIGINT.

mod config;
mod metrics_http;

use clap::Parser;
use config::{Cli, Config};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use sluice_shard::cluster_link;
use sluice_shard::connection::accept_loop;
use sluice_shard::mesh::ShardMsg;
use sluice_shard::metadata::MetadataStore;
use sluice_shard::settings::BrokerSettings;
use sluice_shard::shard::Shard;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Bounded inbox of each shard: backpressure between cores.
const INBOX_CAPACITY: usize = 4096;
/// How long a stopping shard waits for in-flight requests.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// glibc hands large freed blocks (request frames, fetch responses) back to
/// the kernel, and every reuse then page-faults and zeroes fresh pages:
/// `clear_page` was a fifth of the shards' CPU with many small produce
/// requests. Keep blocks up to 64 MiB in the heap and trim only above 512 MiB;
/// `return_freed_memory` gives the rest back once load goes away.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Free bytes the heaps may keep before they are given back.
const HEAP_FREE_BYTES_KEPT: usize = 64 << 20;
const HEAP_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Checks in a row the free bytes must stay above the threshold: a burst
/// between two requests is not trimmed, memory left after load is.
const HEAP_CHECKS_BEFORE_TRIM: u32 = 3;

/// Memory returns after a burst: when the heaps have held more than
/// `HEAP_FREE_BYTES_KEPT` free for three checks in a row (6 s), `malloc_trim`
/// gives the free pages back (one slow consumer used to leave 3 GiB with the
/// process for good). A burst between two checks is not trimmed; under steady
/// load with a large free pool the page-fault cost `keep_freed_memory` avoids
/// comes back at most once per 6 s. (mallinfo2: glibc 2.33 or later.)
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("sluice-trim".into())
        .spawn(move || {
            let mut high = 0;
            loop {
                std::thread::sleep(HEAP_CHECK_INTERVAL);
                // SAFETY: mallinfo2 and malloc_trim only read and adjust the allocator's own state.
                let free_bytes = unsafe { libc::mallinfo2() }.fordblks;
                high = if free_bytes > HEAP_FREE_BYTES_KEPT {
                    high + 1
                } else {
                    0
                };
                if high >= HEAP_CHECKS_BEFORE_TRIM {
                    high = 0;
                    // SAFETY: as above.
                    unsafe { libc::malloc_trim(0) };
                    tracing::debug!(free_bytes, "returned free heap memory to the kernel");
                }
            }
        })
        .expect("spawning the memory trimmer thread");
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.log_format.as_deref());
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    let effective = toml::to_string(&config).expect("config serializes");
    if cli.print_config {
        print!("{effective}");
        return;
    }
    if cli.log_format.as_deref() == Some("json") {
        // One line for a log shipper, the TOML in a field.
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %effective, "effective configuration");
    } else {
        eprintln!(
            "sluice {} effective configuration:\n{effective}",
            env!("CARGO_PKG_VERSION")
        );
    }
    return_freed_memory();
    if let Err(e) = run(config) {
        tracing::error!("{e}");
        eprintln!("sluice: {e}");
        std::process::exit(1);
    }
}

fn memlock_limit_bytes() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (result == 0).then_some(limit.rlim_cur)
}

fn run(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("data_dir {}: {e}", config.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&config.data_dir).map_err(|e| format!("data_dir: {e}"))?;
    // /health answers 503 from here until every shard serves.
    let exporter = Arc::new(metrics_http::Exporter::default());
    if !config.metrics_listen.is_empty() {
        metrics_http::start(&config.metrics_listen, exporter.clone())?;
    }
    let metadata = Arc::new(MetadataStore::load(&data_dir)?);
    let cluster_id = cluster_id(&data_dir)?;
    let (advertised_host, advertised_port) = config.advertised()?;
    let voters = config.voters()?;
    let settings = Arc::new(BrokerSettings {
        node_id: config.node_id,
        cluster_id,
        data_dir,
        advertised_host,
        advertised_port,
        auto_create_topics: config.auto_create_topics,
        default_partitions: config.default_partitions,
        max_frame_bytes: config.max_frame_bytes,
        max_in_flight_per_connection: config.max_in_flight_per_connection,
        max_message_bytes: config.max_message_bytes,
        log: config.log_config()?,
        retention_check_ms: config.retention_check_ms.max(100),
        offsets_retention_ms: config.offsets_retention_minutes * 60_000,
        max_partitions_per_topic: config.max_partitions_per_topic,
        memory_budget_bytes_per_core: (0..config.cpus.len())
            .map(|shard| config.memory_budget_bytes(shard))
            .collect(),
        tail_cache_bytes_per_core: (0..config.cpus.len())
            .map(|shard| config.tail_cache_bytes(shard))
            .collect(),
        fetch_session_cache_slots: config.fetch_session_cache_slots,
        send_zc_threshold_bytes_per_core: (0..config.cpus.len())
            .map(|shard| config.send_zc_threshold_bytes(shard))
            .collect(),
        connections_max_idle_ms: config.connections_max_idle_ms,
        request_timeout_ms: config.request_timeout_ms,
        log_cleaner_dedupe_buffer_bytes: config.log_cleaner_dedupe_buffer_bytes,
        log_cleaner_backoff_ms: config.log_cleaner_backoff_ms,
        log_cleaner_io_max_bytes_per_second: (config.log_cleaner_io_max_bytes_per_second > 0)
            .then_some(config.log_cleaner_io_max_bytes_per_second),
        broker_session_timeout_ms: config.broker_session_timeout_ms,
        default_replication_factor: config.default_replication_factor,
        min_insync_replicas: config.min_insync_replicas,
        replica_lag_time_max_ms: config.replica_lag_time_max_ms,
        offsets_topic_replication_factor: config.offsets_topic_replication_factor,
        controller_voters: voters.len(),
    });
    let shard_count = config.cpus.len();
    let (controller, internal_addr) = if voters.is_empty() {
        cluster_link::start_single_node_controller(&settings)?
    } else {
        cluster_link::start_controller(&settings, &voters, &config.internal_listener)?
    };
    cluster_link::bootstrap(
        &controller,
        &metadata,
        &settings,
        &internal_addr,
        shard_count,
    )?;
    // glommio registers each shard's io memory with its three io_uring rings;
    // registered (pinned) memory counts against RLIMIT_MEMLOCK.
    let registered_bytes: u64 = (0..shard_count)
        .map(|i| {
            3 * config
                .core_override(i)
                .io_memory_bytes
                .unwrap_or(config.io_memory_bytes) as u64
        })
        .sum();
    match memlock_limit_bytes() {
        Some(limit) if limit < 512 * 1024 => {
            return Err(format!(
                "RLIMIT_MEMLOCK is {limit} bytes; io_uring needs at least 512 KiB (raise `ulimit -l`)"
            ))
        }
        Some(limit) if limit != libc::RLIM_INFINITY && registered_bytes > limit => tracing::warn!(
            memlock_limit_bytes = limit,
            registered_bytes,
            "registered io_uring buffers may not fit RLIMIT_MEMLOCK: shards that cannot register fall back to unregistered buffers"
        ),
        _ => {}
    }
    let listen = config.listen_addr();
    let (senders, inboxes): (Vec<_>, Vec<_>) = (0..shard_count)
        .map(|_| flume::bounded::<ShardMsg>(INBOX_CAPACITY))
        .unzip();
    let _ = exporter.shards.set(senders.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
    // No shard accepts until every shard is ready (its partitions and group
    // coordinator open), so no request is forwarded to a shard still starting.
    let (go_tx, go_rx) = flume::bounded::<bool>(shard_count);
    let mut handles = Vec::new();
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let core = config.core_override(id);
        let cpu = config.cpus[id];
        let settings = settings.clone();
        let metadata = metadata.clone();
        let peers = senders.clone();
        let controller = controller.clone();
        let ready = ready_tx.clone();
        let go = go_rx.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .io_memory(core.io_memory_bytes.unwrap_or(config.io_memory_bytes))
            .ring_depth(core.io_depth.unwrap_or(config.io_depth))
            .spawn(move || async move {
                run_shard(
                    id, settings, metadata, peers, controller, inbox, listen, ready, go,
                )
                .await
            })
            .map_err(|e| format!("starting shard {id} on CPU {cpu}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shard_count {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                for _ in 0..shard_count {
                    let _ = go_tx.send(false);
                }
                stop_all(&senders);
                for handle in handles {
                    let _ = handle.join();
                }
                return Err(e);
            }
            Err(_) => return Err("a shard died while starting".into()),
        }
    }
    for _ in 0..shard_count {
        let _ = go_tx.send(true);
    }
    controller.runtime().spawn(cluster_link::follow(
        controller.clone(),
        metadata.clone(),
        senders.clone(),
        settings.node_id,
    ));
    tracing::info!(listen = %listen, shards = shard_count, cpus = ?config.cpus, "sluice is ready");
    exporter
        .serving
        .store(true, std::sync::atomic::Ordering::Release);
    sd_notify("READY=1");
    let signal_senders = senders.clone();
    let signal_exporter = exporter.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received == 1 {
                    signal_exporter
                        .serving
                        .store(false, std::sync::atomic::Ordering::Release);
                    sd_notify("STOPPING=1");
                    tracing::info!(
                        signal,
                        "stopping: finishing in-flight requests, flushing, closing segments"
                    );
                    stop_all(&signal_senders);
                } else {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let mut failed = false;
    for handle in handles {
        if handle.join().is_err() {
            failed = true;
        }
    }
    controller.stop();
    if failed {
        return Err("a shard panicked".into());
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

fn stop_all(senders: &[flume::Sender<ShardMsg>]) {
    for sender in senders {
        let _ = sender.send(ShardMsg::Shutdown);
    }
}

/// The cluster id, made once and kept in the data directory.
fn cluster_id(data_dir: &std::path::Path) -> Result<String, String> {
    let path = data_dir.join("cluster_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            std::fs::write(&path, &id).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(id)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    id: usize,
    settings: Arc<BrokerSettings>,
    metadata: Arc<MetadataStore>,
    peers: Vec<flume::Sender<ShardMsg>>,
    controller: sluice_cluster::ControllerHandle,
    inbox: flume::Receiver<ShardMsg>,
    listen: std::net::SocketAddr,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
    go: flume::Receiver<bool>,
) {
    let shard = Rc::new(Shard::new(
        id,
        settings.clone(),
        metadata,
        peers,
        controller,
    ));
    // Messages from other shards: each handled in its own task, in arrival order.
    let inbox_shard = shard.clone();
    let inbox_task = glommio::spawn_local(async move {
        while let Ok(message) = inbox.recv_async().await {
            if let ShardMsg::Shutdown = message {
                inbox_shard.stopping.set(true);
                continue;
            }
            glommio::spawn_local(sluice_shard::inbox::handle(inbox_shard.clone(), message))
                .detach();
        }
    });
    if let Err(e) = shard.open_coordinator().await {
        let _ = ready.send(Err(format!("shard {id}: {e}")));
        return;
    }
    if let Err(e) = shard.open_owned_partitions().await {
        let _ = ready.send(Err(format!("shard {id}: {e}")));
        return;
    }
    let listener = match TcpListener::bind(listen) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(format!("listen on {listen}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(id));
    if !go.recv_async().await.unwrap_or(false) {
        shard.close_all().await;
        return;
    }
    let maintenance_shard = shard.clone();
    let interval = Duration::from_millis(settings.retention_check_ms);
    let maintenance = glommio::spawn_local(async move {
        while !maintenance_shard.stopping.get() {
            futures_lite_sleep(&maintenance_shard, interval).await;
            if maintenance_shard.stopping.get() {
                break;
            }
            maintenance_shard.maintain().await;
        }
    });
    // Interval syncs on their own timer: maintenance (snapshots with blocking
    // fsyncs) every few ms stalled every acknowledgement behind it.
    let flush_shard = shard.clone();
    let flush_every = match settings.log.flush {
        sluice_storage::FlushPolicy::UnsafeIntervalMs(ms) => Some(Duration::from_millis(ms.max(1))),
        sluice_storage::FlushPolicy::Always => None,
    };
    let flusher = glommio::spawn_local(async move {
        let Some(every) = flush_every else { return };
        while !flush_shard.stopping.get() {
            futures_lite_sleep(&flush_shard, every).await;
            if flush_shard.stopping.get() {
                break;
            }
            flush_shard.flush_due_logs().await;
        }
    });
    // Compaction in its own task queue with a tenth of the default queue's
    // shares: it uses what requests leave of the core.
    let compactor_shard = shard.clone();
    let cleaner_every = Duration::from_millis(settings.log_cleaner_backoff_ms);
    let background = glommio::executor().create_task_queue(
        glommio::Shares::Static(100),
        glommio::Latency::NotImportant,
        "compaction",
    );
    let compactor = glommio::spawn_local_into(
        async move {
            while !compactor_shard.stopping.get() {
                futures_lite_sleep(&compactor_shard, cleaner_every).await;
                if compactor_shard.stopping.get() {
                    break;
                }
                compactor_shard.compact_logs().await;
            }
        },
        background,
    )
    .expect("the compaction task queue exists");
    let expiry_shard = shard.clone();
    let expiry = glommio::spawn_local(async move {
        while !expiry_shard.stopping.get() {
            glommio::timer::sleep(Duration::from_millis(
                sluice_shard::groups::coordinator::EXPIRY_CHECK_MS,
            ))
            .await;
            expiry_shard.expire_group_sessions();
            expiry_shard.check_replicas().await;
        }
    });
    accept_loop(shard.clone(), listener).await;
    shard.drain_requests(DRAIN_LIMIT).await;
    maintenance.await;
    compactor.await;
    flusher.await;
    expiry.await;
    shard.close_all().await;
    tracing::info!(shard = id, "shard stopped");
    drop(inbox_task);
}

/// Sleeps `interval`, waking early when the shard is stopping.
async fn futures_lite_sleep(shard: &Shard, interval: Duration) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < interval && !shard.stopping.get() {
        glommio::timer::sleep(step.min(interval - slept)).await;
        slept += step;
    }
}

/// Tells systemd (a `Type=notify` unit: $NOTIFY_SOCKET set) the broker's
/// state; does nothing elsewhere.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|address| socket.send_to_addr(state.as_bytes(), &address))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "could not notify systemd");
    }
}

/// Log lines to stderr: text (colored only on a terminal) or, for log
/// shippers, one JSON object per line (`--log-format json`).
fn init_logging(format: Option<&str>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Some("json") => builder.json().init(),
        Some("text") | None => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Some(other) => {
            eprintln!("sluice: invalid configuration: log_format: `{other}` is not text or json");
            std::process::exit(2);
        }
    }
}
