//! The coordinator: creates the topics, starts the workers, drives the phases
//! (consumers ready, warm-up, measured window, catch-up; or backlog build and
//! drain), collects stats once per tick, prints the live status line, and
//! assembles the [`RunResult`].

use crate::client::Conn;
use crate::result::{Drain, Interval, RunResult, Throughput, Totals, RESULT_FORMAT};
use crate::retry::Counts;
use crate::stats::{percentiles, Stats};
use crate::topology::{self, Topology};
use crate::worker::{self, Control, Handle, Plan};
use crate::workload::Workload;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_secs(1);
/// How long consumers get to catch up once producers stop.
const CATCH_UP_MAX: Duration = Duration::from_secs(20);
const CONSUMERS_READY_MAX: Duration = Duration::from_secs(90);

pub struct Options {
    pub bootstrap: String,
    pub threads: usize,
    pub broker_info: String,
    /// Print the status line every this many ticks.
    pub status_every: u32,
}

/// Everything collected so far.
struct Tally {
    run_start: Instant,
    total: Stats,
    measured: Stats,
    measured_s: f64,
    intervals: Vec<Interval>,
    backlog_max: u64,
    last_tick: Instant,
    ticks: u32,
    consumers: u32,
}

pub fn run(workload: Workload, options: &Options) -> Result<RunResult, String> {
    workload.validate()?;
    let started_at_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_id = format!("{started_at_unix_s}-{}", std::process::id());
    let setup_workload = workload.clone();
    let bootstrap = options.bootstrap.clone();
    let (topology, advertised, setup_retries) = worker::run_once(move || {
        Box::pin(async move {
            let conn = Conn::connect(&bootstrap, setup_workload.request_timeout()).await?;
            let retries = Counts::default();
            let topology = topology::create(&conn, &setup_workload, &run_id, &retries).await?;
            Ok::<(Topology, Vec<(i16, i16, i16)>, BTreeMap<String, u64>), String>((
                topology,
                conn.versions.advertised.clone(),
                retries.snapshot(),
            ))
        })
    })??;
    eprintln!(
        "sluice-bench: {} on {} ({} topic(s) × {} partitions, {} producer(s), {} consumer(s), {} thread(s))",
        workload.name,
        options.bootstrap,
        workload.topics,
        workload.partitions_per_topic,
        workload.producers,
        workload.consumers,
        options.threads
    );

    let control = Arc::new(Control::new(
        workload.backlog_bytes,
        topology.partitions.len(),
    ));
    control.retries.add(&setup_retries);
    if !workload.is_backlog() {
        control.drain_started.store(true, Ordering::SeqCst);
    }
    let threads = options.threads.max(1);
    let mut plans = vec![Plan::default(); threads];
    let rate_each = workload.producer_rate as f64 / workload.producers as f64;
    for p in 0..workload.producers {
        plans[p as usize % threads].producers.push((p, rate_each));
    }
    for c in 0..workload.consumers {
        plans[(c as usize + workload.producers as usize) % threads]
            .consumers
            .push(c);
    }
    let cpus = available_cpus();
    let mut handles = Vec::new();
    for (id, plan) in plans.into_iter().enumerate() {
        let cpu = cpus.as_ref().map(|c| c[id % c.len()]);
        handles.push(worker::spawn(
            id,
            cpu,
            plan,
            workload.clone(),
            topology.clone(),
            control.clone(),
            options.bootstrap.clone(),
        )?);
    }
    let outcome = drive(&workload, options, &control, &handles);
    for handle in handles {
        handle.exit();
    }
    let (tally, drain) = outcome?;
    let measured_s = tally.measured_s;
    let (produce, consume) = match drain {
        Some(d) => (
            Throughput::over(tally.total.produced, tally.total.produced_bytes, measured_s),
            Throughput::over(d.backlog_messages, d.backlog_bytes, d.seconds),
        ),
        None => (
            Throughput::over(
                tally.measured.produced,
                tally.measured.produced_bytes,
                measured_s,
            ),
            Throughput::over(
                tally.measured.consumed,
                tally.measured.consumed_bytes,
                measured_s,
            ),
        ),
    };
    let latencies = if drain.is_some() {
        &tally.total
    } else {
        &tally.measured
    };
    Ok(RunResult {
        format: RESULT_FORMAT,
        tool: format!("sluice-bench {}", env!("CARGO_PKG_VERSION")),
        started_at_unix_s,
        bootstrap: options.bootstrap.clone(),
        broker_info: options.broker_info.clone(),
        broker_api_versions: advertised,
        workload,
        measured_s,
        produce,
        consume,
        totals: Totals {
            produced: tally.total.produced,
            produce_errors: tally.total.produce_errors,
            lost_after_retries: tally.total.produce_lost,
            consumed: tally.total.consumed,
        },
        publish_latency_us: percentiles(&latencies.publish_latency),
        publish_delay_us: percentiles(&latencies.publish_delay),
        e2e_latency_us: percentiles(&latencies.e2e_latency),
        backlog_max_messages: tally.backlog_max,
        errors: control.errors(),
        retries: control.retries.snapshot(),
        drain,
        intervals: tally.intervals,
    })
}

fn drive(
    workload: &Workload,
    options: &Options,
    control: &Arc<Control>,
    handles: &[Handle],
) -> Result<(Tally, Option<Drain>), String> {
    // Consumers first: a consumer group must be stable before messages flow.
    let ready_by = Instant::now() + CONSUMERS_READY_MAX;
    while control.consumers_ready.load(Ordering::SeqCst) < workload.consumers {
        check_fatal(control)?;
        if Instant::now() > ready_by {
            return Err(format!(
                "only {} of {} consumers joined within {} s",
                control.consumers_ready.load(Ordering::SeqCst),
                workload.consumers,
                CONSUMERS_READY_MAX.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let go = control.go();
    let mut tally = Tally {
        run_start: go,
        total: Stats::default(),
        measured: Stats::default(),
        measured_s: 0.0,
        intervals: Vec::new(),
        backlog_max: 0,
        last_tick: go,
        ticks: 0,
        consumers: workload.consumers,
    };
    if workload.is_backlog() {
        return drive_backlog(workload, options, control, handles, tally)
            .map(|(t, d)| (t, Some(d)));
    }
    let warmup_end = go + Duration::from_secs(workload.warmup_s);
    let end = warmup_end + Duration::from_secs(workload.duration_s);
    // Ticks fall on whole seconds after go, so the warm-up ends on one and
    // the measured window is exactly the ticks after it.
    for k in 1.. {
        let at = go + TICK * k;
        if at > end {
            break;
        }
        sleep_until(at);
        tick(
            &mut tally,
            handles,
            control,
            Some(options),
            at > warmup_end,
            None,
        )?;
    }
    control.stop_producing.store(true, Ordering::SeqCst);
    // Let the consumers read what was acknowledged.
    let catch_up_by = Instant::now() + CATCH_UP_MAX;
    while control.producers_done.load(Ordering::SeqCst) < workload.producers
        || (workload.consumers > 0
            && control.consumed_messages.load(Ordering::SeqCst)
                < control.acked_messages.load(Ordering::SeqCst))
    {
        if Instant::now() > catch_up_by {
            eprintln!(
                "sluice-bench: consumers did not catch up within {} s",
                CATCH_UP_MAX.as_secs()
            );
            break;
        }
        check_fatal(control)?;
        std::thread::sleep(Duration::from_millis(10));
    }
    control.stop_consuming.store(true, Ordering::SeqCst);
    finish(&mut tally, handles, control)?;
    Ok((tally, None))
}

fn drive_backlog(
    workload: &Workload,
    options: &Options,
    control: &Arc<Control>,
    handles: &[Handle],
    mut tally: Tally,
) -> Result<(Tally, Drain), String> {
    let cap = tally.run_start + Duration::from_secs(workload.warmup_s + workload.duration_s);
    // Build: producers stop by themselves at the target.
    while control.producers_done.load(Ordering::SeqCst) < workload.producers {
        if Instant::now() > cap {
            return Err(format!(
                "the backlog of {} bytes was not built within warmup_s + duration_s",
                workload.backlog_bytes
            ));
        }
        sleep_until((tally.last_tick + TICK).min(Instant::now() + Duration::from_millis(20)));
        if Instant::now() >= tally.last_tick + TICK {
            let progress =
                control.sent_bytes.load(Ordering::Relaxed) as f64 / workload.backlog_bytes as f64;
            tick(
                &mut tally,
                handles,
                control,
                Some(options),
                true,
                Some(("backlog", progress)),
            )?;
        }
    }
    tick(&mut tally, handles, control, Some(options), true, None)?;
    let backlog_messages = control.acked_messages.load(Ordering::SeqCst);
    let backlog_bytes = tally.total.produced_bytes;
    let produce_s = tally.measured_s;
    eprintln!(
        "sluice-bench: backlog built ({backlog_messages} messages, {:.1} MB), draining",
        backlog_bytes as f64 / 1e6
    );
    let drain_start = Instant::now();
    control.drain_started.store(true, Ordering::SeqCst);
    let mut drained_at = None;
    while Instant::now() < cap + CATCH_UP_MAX {
        let consumed = control.consumed_messages.load(Ordering::Relaxed);
        if consumed >= backlog_messages {
            drained_at = Some(Instant::now());
            break;
        }
        if Instant::now() >= tally.last_tick + TICK {
            let progress = consumed as f64 / backlog_messages.max(1) as f64;
            tick(
                &mut tally,
                handles,
                control,
                Some(options),
                false,
                Some(("drain", progress)),
            )?;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained_at = drained_at.ok_or_else(|| {
        format!(
            "the backlog was not drained in time: {} of {backlog_messages} messages consumed",
            control.consumed_messages.load(Ordering::SeqCst)
        )
    })?;
    control.stop_producing.store(true, Ordering::SeqCst);
    control.stop_consuming.store(true, Ordering::SeqCst);
    finish(&mut tally, handles, control)?;
    tally.measured_s = produce_s;
    Ok((
        tally,
        Drain {
            backlog_messages,
            backlog_bytes,
            seconds: (drained_at - drain_start).as_secs_f64(),
        },
    ))
}

/// Collects until every task has ended (at most 30 s).
fn finish(tally: &mut Tally, handles: &[Handle], control: &Control) -> Result<(), String> {
    let by = Instant::now() + Duration::from_secs(30);
    loop {
        let running = tick(tally, handles, control, None, false, None)?;
        if running == 0 {
            return Ok(());
        }
        if Instant::now() > by {
            eprintln!("sluice-bench: {running} task(s) still running after 30 s; results so far");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One collection: merges every worker's stats, records an interval, prints
/// the status line. Returns how many tasks are still running.
fn tick(
    tally: &mut Tally,
    handles: &[Handle],
    control: &Control,
    options: Option<&Options>,
    measuring: bool,
    progress: Option<(&str, f64)>,
) -> Result<usize, String> {
    check_fatal(control)?;
    let mut interval = Stats::default();
    let mut running = 0;
    for handle in handles {
        let report = handle
            .collect()
            .ok_or_else(|| "a worker thread stopped answering".to_string())?;
        interval.merge(&report.stats);
        running += report.tasks_running;
    }
    let now = Instant::now();
    let seconds = (now - tally.last_tick).as_secs_f64().max(1e-6);
    tally.last_tick = now;
    tally.ticks += 1;
    tally.total.merge(&interval);
    if measuring {
        tally.measured.merge(&interval);
        tally.measured_s += seconds;
    }
    let backlog = if tally.consumers == 0 {
        0
    } else {
        control
            .acked_messages
            .load(Ordering::Relaxed)
            .saturating_sub(control.consumed_messages.load(Ordering::Relaxed))
    };
    if control.drain_started.load(Ordering::Relaxed) && tally.consumers > 0 {
        tally.backlog_max = tally.backlog_max.max(backlog);
    }
    let line = Interval {
        t_s: (now - tally.run_start).as_secs_f64(),
        produce_msgs_per_s: interval.produced as f64 / seconds,
        produce_mb_per_s: interval.produced_bytes as f64 / seconds / 1e6,
        consume_msgs_per_s: interval.consumed as f64 / seconds,
        consume_mb_per_s: interval.consumed_bytes as f64 / seconds / 1e6,
        publish_p99_us: percentiles(&interval.publish_latency).p99,
        e2e_p99_us: percentiles(&interval.e2e_latency).p99,
        backlog_messages: backlog,
    };
    tally.intervals.push(line);
    if options.is_some_and(|o| tally.ticks.is_multiple_of(o.status_every.max(1))) {
        print_status(
            &line,
            control.error_count(),
            control.retries.total(),
            measuring,
            progress,
        );
    }
    Ok(running)
}

fn print_status(
    i: &Interval,
    errors: u64,
    retries: u64,
    measuring: bool,
    progress: Option<(&str, f64)>,
) {
    let phase = if measuring { "" } else { " (warm-up/drain)" };
    let bar = progress
        .map(|(what, f)| {
            let f = f.clamp(0.0, 1.0);
            let filled = (f * 20.0).round() as usize;
            format!(
                " {what} [{}{}] {:>3.0}%",
                "#".repeat(filled),
                "-".repeat(20 - filled),
                f * 100.0
            )
        })
        .unwrap_or_default();
    eprintln!(
        "[{:>5.0}s] produce {:>9.0} msg/s {:>7.1} MB/s | consume {:>9.0} msg/s {:>7.1} MB/s | publish p99 {:>8.3} ms | e2e p99 {:>8.3} ms | backlog {:>8} | errors {} | retries {}{}{}",
        i.t_s,
        i.produce_msgs_per_s,
        i.produce_mb_per_s,
        i.consume_msgs_per_s,
        i.consume_mb_per_s,
        i.publish_p99_us as f64 / 1000.0,
        i.e2e_p99_us as f64 / 1000.0,
        i.backlog_messages,
        errors,
        retries,
        phase,
        bar
    );
    let _ = std::io::stderr().flush();
}

fn check_fatal(control: &Control) -> Result<(), String> {
    let fatal = control.fatal();
    if fatal.is_empty() {
        Ok(())
    } else {
        Err(fatal.join("; "))
    }
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// The CPUs this process may run on (for pinning workers), if known.
fn available_cpus() -> Option<Vec<usize>> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}
