//! Worker threads: one glommio executor per core, each running its share of
//! producers and consumers with its own [`Stats`]. The coordinator (the main
//! thread) talks to them only through [`Control`] flags and a command channel.

use crate::stats::Stats;
use crate::topology::Topology;
use crate::workload::Workload;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// io_uring memory per bench executor: the bench does no file I/O, and
/// registered memory counts against RLIMIT_MEMLOCK, shared with nothing else.
const IO_MEMORY_BYTES: usize = 256 << 10;
/// Distinct error messages kept (each logged once, then only counted).
const ERROR_KINDS_MAX: usize = 32;

/// Flags and counters shared by the coordinator and every worker.
#[derive(Default)]
pub struct Control {
    pub stop_producing: AtomicBool,
    pub stop_consuming: AtomicBool,
    /// Consumers fetch only once this is set (at once, or after the backlog is built).
    pub drain_started: AtomicBool,
    pub consumers_ready: AtomicU32,
    pub producers_done: AtomicU32,
    /// Payload bytes sealed into batches (the backlog target counts these).
    pub sent_bytes: AtomicU64,
    pub acked_messages: AtomicU64,
    pub consumed_messages: AtomicU64,
    /// Per partition: the offset up to which messages have been counted as
    /// consumed (by any consumer), so a re-read after a rebalance is not
    /// counted twice.
    pub consumed_upto: Vec<AtomicI64>,
    pub backlog_bytes: u64,
    /// Set once by the coordinator: when producers start their schedules.
    go: OnceLock<Instant>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Retries by kind (error name): what a Kafka client would retry.
    pub retries: crate::retry::Counts,
    fatal: Mutex<Vec<String>>,
}

impl Control {
    pub fn new(backlog_bytes: u64, partitions: usize) -> Control {
        Control {
            backlog_bytes,
            consumed_upto: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            ..Control::default()
        }
    }

    pub fn go(&self) -> Instant {
        *self.go.get_or_init(Instant::now)
    }

    /// Waits for the coordinator's go; returns the schedule start.
    pub async fn wait_for_go(&self) -> Instant {
        loop {
            if let Some(at) = self.go.get() {
                return *at;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn backlog_full(&self) -> bool {
        self.backlog_bytes > 0 && self.sent_bytes.load(Ordering::Relaxed) >= self.backlog_bytes
    }

    pub fn error_count(&self) -> u64 {
        self.errors.lock().map(|e| e.values().sum()).unwrap_or(0)
    }

    /// Every error kind seen and how often.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn fatal(&self) -> Vec<String> {
        self.fatal.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// One worker thread's view.
pub struct Worker {
    pub id: usize,
    pub workload: Workload,
    pub topology: Topology,
    pub control: Arc<Control>,
    pub stats: RefCell<Stats>,
}

impl Worker {
    /// Counts an error of a kind; the first of each kind is logged with its
    /// detail (which partition, which broker).
    pub fn note_error(&self, kind: &str, detail: &str) {
        let Ok(mut errors) = self.control.errors.lock() else {
            return;
        };
        let first = !errors.contains_key(kind);
        let kind = if first && errors.len() >= ERROR_KINDS_MAX {
            "other errors"
        } else {
            kind
        };
        *errors.entry(kind.to_string()).or_default() += 1;
        if first {
            tracing::warn!(
                worker = self.id,
                "{kind}: {detail} (further occurrences are counted)"
            );
        }
    }
}

impl Worker {
    /// Counts a retry of `kind` (an error name such as NOT_LEADER_OR_FOLLOWER).
    pub fn note_retry(&self, kind: &str) {
        self.control.retries.note(kind);
    }
}

/// What a worker runs.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// (producer number, messages/s; 0 = unlimited)
    pub producers: Vec<(u32, f64)>,
    pub consumers: Vec<u32>,
}

pub enum Command {
    /// Reply with the stats since the last collect (and reset them).
    Collect(flume::Sender<Report>),
    Exit,
}

pub struct Report {
    pub stats: Stats,
    pub tasks_running: usize,
}

pub struct Handle {
    pub commands: flume::Sender<Command>,
    thread: glommio::ExecutorJoinHandle<()>,
}

impl Handle {
    pub fn collect(&self) -> Option<Report> {
        let (reply, answer) = flume::bounded(1);
        self.commands.send(Command::Collect(reply)).ok()?;
        answer.recv_timeout(Duration::from_secs(10)).ok()
    }

    pub fn exit(self) {
        let _ = self.commands.send(Command::Exit);
        let _ = self.thread.join();
    }
}

pub fn spawn(
    id: usize,
    cpu: Option<usize>,
    plan: Plan,
    workload: Workload,
    topology: Topology,
    control: Arc<Control>,
    bootstrap: String,
) -> Result<Handle, String> {
    let (commands, inbox) = flume::unbounded::<Command>();
    let placement = match cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let thread = LocalExecutorBuilder::new(placement)
        .name(&format!("bench-{id}"))
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || async move {
            let worker = Rc::new(Worker {
                id,
                workload,
                topology,
                control,
                stats: RefCell::new(Stats::default()),
            });
            let running = Rc::new(Cell::new(0usize));
            for (number, rate) in plan.producers {
                let worker = worker.clone();
                running.set(running.get() + 1);
                let running = running.clone();
                let bootstrap = bootstrap.clone();
                glommio::spawn_local(async move {
                    if let Err(e) =
                        crate::producer::run(worker.clone(), number, rate, bootstrap).await
                    {
                        record_fatal(&worker, format!("producer {number}: {e}"));
                    }
                    worker.control.producers_done.fetch_add(1, Ordering::SeqCst);
                    running.set(running.get() - 1);
                })
                .detach();
            }
            for number in plan.consumers {
                let worker = worker.clone();
                running.set(running.get() + 1);
                let running = running.clone();
                let bootstrap = bootstrap.clone();
                glommio::spawn_local(async move {
                    if let Err(e) = crate::consumer::run(worker.clone(), number, bootstrap).await {
                        record_fatal(&worker, format!("consumer {number}: {e}"));
                    }
                    running.set(running.get() - 1);
                })
                .detach();
            }
            while let Ok(command) = inbox.recv_async().await {
                match command {
                    Command::Collect(reply) => {
                        let stats = worker.stats.borrow_mut().take();
                        let _ = reply.send(Report {
                            stats,
                            tasks_running: running.get(),
                        });
                    }
                    Command::Exit => break,
                }
            }
        })
        .map_err(|e| format!("cannot start worker thread {id}: {e}"))?;
    Ok(Handle { commands, thread })
}

fn record_fatal(worker: &Worker, message: String) {
    tracing::error!(worker = worker.id, "{message}");
    if let Ok(mut fatal) = worker.control.fatal.lock() {
        fatal.push(message);
    }
}

/// Runs one future on a short-lived executor on its own thread (setup work
/// such as creating topics) and returns its output.
pub fn run_once<T: Send + 'static>(
    task: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> Result<T, String> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-setup")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(task)
        .map_err(|e| format!("cannot start setup thread: {e}"))?
        .join()
        .map_err(|e| format!("setup thread failed: {e}"))
}
