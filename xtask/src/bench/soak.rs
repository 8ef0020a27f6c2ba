//! The soak (`--only soak`, never part of the full run: it lasts half an hour by default): one
//! tokenrouter stack under a steady request rate for a long time, to show that memory stays flat,
//! that nothing fails and that every request is stored.
//!
//! The stack is the `tr` candidate's: `tokenrouter serve` (release) with 100 keys, 10 routing
//! rules and 10 firewall rules, and Envoy from `tokenrouter envoy-bootstrap` with the filter
//! (`--concurrency 2`), in front of the in-process fake provider. The load is
//! [`Options::rate`] requests per second for [`Options::duration`], one in [`STREAM_EVERY`]
//! streamed, spread over [`LOAD_KEYS`] keys, from [`CONNECTIONS`] keep-alive connections of the
//! benchmark's own hyper client ([`super::client`]) on one thread.
//!
//! Why not oha: its fixed rate (`-q`) is steady, but one run sends one body (no mix of streamed
//! and non-streamed requests), it does not check that a stream ends with `[DONE]`, and it
//! reports once at the end, so 10-second windows would mean restarting it (new connections)
//! every window. The client schedules request `n` at `n / rate` seconds after the start
//! (each connection takes every [`CONNECTIONS`]-th slot; a late request is sent at once, never
//! skipped), measures latency from the moment the request is sent and counts the sends that
//! left more than [`LATE`] behind their scheduled time (a stall shows there, not as a lower
//! rate). One thread (a current-thread tokio runtime) leaves the rest of the 2 cores to Envoy
//! and the control plane.
//!
//! Every [`SAMPLE_EVERY`]: Envoy's RSS (its process tree) and CPU, the control plane's RSS and
//! CPU, requests
//! answered, errors (any status but 200, a stream whose body does not end with `data: [DONE]`,
//! a transport error or a timeout) and p50/p99 latency of the window, separately for streamed
//! (to the last byte) and non-streamed requests. At the end the control plane is asked
//! (`GetUsage`, grouped by key) how many usage rows it stored for the load's keys: every
//! answered request must have its row (a lost record is an error).

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use super::admin::{Admin, Key};
use super::report::percentile;
use super::{client, ControlPlane, Stacks};
use crate::Supervisor;

/// Default request rate (req/s) and duration (minutes) of `--only soak`.
pub const DEFAULT_RATE: u32 = 200;
pub const DEFAULT_MINUTES: u64 = 30;
/// Sampling period.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How the soak's row in the report's target table starts (after `| `).
pub const TARGET_KEY: &str = "memory flat under a steady load";
/// The first minute is warm-up: the "start" memory figure is the first sample after it.
const WARMUP: Duration = Duration::from_secs(60);
/// Keep-alive connections of the load.
const CONNECTIONS: usize = 8;
/// Keys the load is spread over (of the 100 seeded ones).
const LOAD_KEYS: usize = 5;
/// One request in this many is streamed.
const STREAM_EVERY: u64 = 3;
/// Envoy workers.
const ENVOY_CONCURRENCY: usize = 2;
/// Memory target: every sample after the warm-up within this many percent of the first one.
pub const FLAT_TARGET_PCT: f64 = 10.0;
/// How long to wait for the last usage rows (the filter ships them in batches).
const USAGE_WAIT: Duration = Duration::from_secs(180);
/// A send this far behind its scheduled time is counted as late.
const LATE: Duration = Duration::from_millis(10);
/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;
/// How a stream must end.
const DONE: &[u8] = b"data: [DONE]\n\n";

/// Rate and duration of the soak.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub rate: u32,
    pub duration: Duration,
}

/// One sampling window.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// End of the window, from the start of the load.
    pub at: Duration,
    /// Requests answered in the window (errors included).
    pub requests: u64,
    pub errors: u64,
    /// Latencies (µs, from sending the request to the last byte) of the window's 200s.
    pub plain_us: Vec<f64>,
    pub stream_us: Vec<f64>,
    /// Sends more than [`LATE`] behind schedule, and the largest lag (µs).
    pub late: u64,
    pub max_lag_us: f64,
    pub envoy_rss_kib: u64,
    pub cp_rss_kib: u64,
    /// CPU time over the window, in percent of one core.
    pub envoy_cpu_pct: f64,
    pub cp_cpu_pct: f64,
    /// One-minute load average at the sample.
    pub load1: f64,
}

/// Everything the soak measured.
#[derive(Clone, Debug, Default)]
pub struct SoakFigures {
    pub rate: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// From the first scheduled request to the last answer.
    pub elapsed: Duration,
    pub samples: Vec<Sample>,
    pub sent: u64,
    pub streamed: u64,
    /// Requests that got a status line (the ones the gateway logs).
    pub answered: u64,
    pub errors: u64,
    /// Error kinds and their counts.
    pub error_kinds: Vec<(String, u64)>,
    /// Usage rows the control plane stored for the load's keys, and how long after the load
    /// the count was final.
    pub stored: u64,
    pub stored_after: Duration,
    /// RSS before the load (stack started, readiness checked), KiB.
    pub envoy_idle_kib: u64,
    pub cp_idle_kib: u64,
    pub load_before: String,
    pub load_after: String,
}

/// Where the load's state meets the sampler.
#[derive(Default)]
struct Shared {
    window: Mutex<Sample>,
    sent: AtomicU64,
    streamed: AtomicU64,
    answered: AtomicU64,
    errors: AtomicU64,
    kinds: Mutex<Vec<(String, u64)>>,
    stop: AtomicBool,
}

impl Shared {
    fn error(&self, kind: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut window) = self.window.lock() {
            window.errors += 1;
        }
        if let Ok(mut kinds) = self.kinds.lock() {
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => {
                    println!("soak error: {kind}");
                    kinds.push((kind, 1));
                }
            }
        }
    }

    fn take_window(&self) -> Sample {
        self.window
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }
}

pub fn run(
    rt: &tokio::runtime::Runtime,
    stacks: &mut Stacks,
    base_url: &str,
    options: Options,
) -> Result<SoakFigures> {
    let cp = stacks.control_plane("soak")?;
    let admin = rt.block_on(Admin::connect(&cp.grpc, super::ADMIN_TOKEN))?;
    rt.block_on(admin.add_provider(super::PROVIDER, base_url))?;
    let (keys, _) = rt.block_on(admin.seed_keys(0, super::SMALL_KEYS, Duration::from_secs(120)))?;
    rt.block_on(admin.seed_routing_rules(0, super::SMALL_ROUTING_RULES))?;
    rt.block_on(admin.seed_firewall_rules(0, super::SMALL_FIREWALL_RULES))?;
    // Created after the rules: it authenticates only once a snapshot holding them is live. The
    // readiness checks use it, so the load's keys carry only the load's requests.
    let ready = rt.block_on(admin.create_key("bench-soak-ready".into()))?;
    let load_keys: Vec<Key> = keys.into_iter().take(LOAD_KEYS).collect();
    if load_keys.len() < LOAD_KEYS {
        bail!("only {} keys could be created", load_keys.len());
    }
    let mut children = Supervisor::default();
    let (addr, _) = stacks.tr_envoy(&mut children, &cp, "soak", ENVOY_CONCURRENCY)?;
    let envoy_pid = super::last_pid(&children)?;
    let plain = Bytes::from(super::request_body(super::TR_MODEL, false));
    let streamed = Bytes::from(super::request_body(super::TR_MODEL, true));
    super::wait_until(
        Duration::from_secs(120),
        &format!("Envoy at {addr} to answer 200"),
        &mut children,
        || super::first_status(addr, Some(&ready.raw), &plain) == Some(200),
    )?;
    // Snapshots are published in version order: the load's keys, created before the readiness
    // key, are live too.
    let mut figures = SoakFigures {
        rate: options.rate,
        duration: options.duration,
        warmup: WARMUP.min(options.duration / 2),
        envoy_idle_kib: super::tree_rss_kib(envoy_pid)?,
        cp_idle_kib: super::rss_kib(cp.pid)?,
        load_before: super::loadavg(),
        ..SoakFigures::default()
    };
    println!(
        "soak: {} req/s for {:.0} s (1 in {STREAM_EVERY} streamed, {LOAD_KEYS} keys, {CONNECTIONS} connections), sampling every {} s",
        options.rate,
        options.duration.as_secs_f64(),
        SAMPLE_EVERY.as_secs()
    );

    let shared = Arc::new(Shared::default());
    let per_key: Arc<Vec<AtomicU64>> =
        Arc::new((0..LOAD_KEYS).map(|_| AtomicU64::new(0)).collect());
    let start = Instant::now() + Duration::from_millis(200);
    let load = {
        let (shared, per_key) = (shared.clone(), per_key.clone());
        let keys: Arc<Vec<String>> = Arc::new(load_keys.iter().map(|k| k.raw.clone()).collect());
        thread::Builder::new()
            .name("bench-soak-load".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let workers: Vec<_> = (0..CONNECTIONS as u64)
                        .map(|slot| {
                            tokio::spawn(connection(
                                Slot {
                                    slot,
                                    addr,
                                    start,
                                    options,
                                },
                                keys.clone(),
                                (plain.clone(), streamed.clone()),
                                shared.clone(),
                                per_key.clone(),
                            ))
                        })
                        .collect();
                    for worker in workers {
                        worker.await.context("soak connection task")?;
                    }
                    Ok::<(), anyhow::Error>(())
                })
            })
            .context("cannot start the soak's load thread")?
    };

    let windows = options
        .duration
        .as_millis()
        .div_ceil(SAMPLE_EVERY.as_millis());
    let mut failure = None;
    let mut cpu = Cpu::new(envoy_pid, cp.pid);
    for n in 1..=windows {
        let at = (SAMPLE_EVERY * u32::try_from(n).unwrap_or(u32::MAX)).min(options.duration);
        sleep_until(start + at);
        if let Err(e) = children.check_running() {
            failure = Some(e);
            break;
        }
        let mut sample = sample(&shared, at, envoy_pid, &cp)?;
        (sample.envoy_cpu_pct, sample.cp_cpu_pct) = cpu.since_last();
        print_sample(&sample);
        figures.samples.push(sample);
    }
    if failure.is_some() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    load.join()
        .map_err(|_| anyhow!("the soak's load thread panicked"))??;
    if let Some(e) = failure {
        return Err(e.context("a process of the soak's stack exited"));
    }
    figures.elapsed = start.elapsed();
    // Requests that were still in flight at the last sample belong to the last window.
    let rest = shared.take_window();
    if let Some(last) = figures.samples.last_mut() {
        last.requests += rest.requests;
        last.errors += rest.errors;
        last.plain_us.extend(rest.plain_us);
        last.stream_us.extend(rest.stream_us);
        last.late += rest.late;
        last.max_lag_us = last.max_lag_us.max(rest.max_lag_us);
    }
    figures.load_after = super::loadavg();
    figures.sent = shared.sent.load(Ordering::Relaxed);
    figures.streamed = shared.streamed.load(Ordering::Relaxed);
    figures.answered = shared.answered.load(Ordering::Relaxed);
    figures.errors = shared.errors.load(Ordering::Relaxed);
    figures.error_kinds = shared.kinds.lock().map(|k| k.clone()).unwrap_or_default();
    println!(
        "soak: {} sent, {} answered, {} errors in {:.0} s",
        figures.sent,
        figures.answered,
        figures.errors,
        figures.elapsed.as_secs_f64()
    );

    let ids: Vec<String> = load_keys.iter().map(|k| k.id.clone()).collect();
    let answered: u64 = per_key.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    let waited = Instant::now();
    let mut stored = 0;
    let mut last_change = Instant::now();
    while waited.elapsed() < USAGE_WAIT {
        children.check_running()?;
        let now: u64 = rt
            .block_on(admin.requests_by_key(2))?
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .map(|(_, n)| n)
            .sum();
        if now != stored {
            stored = now;
            last_change = Instant::now();
        }
        if stored >= answered && last_change.elapsed() > Duration::from_secs(5) {
            break;
        }
        thread::sleep(Duration::from_secs(2));
    }
    figures.stored = stored;
    figures.stored_after = last_change.saturating_duration_since(waited);
    println!(
        "soak: {stored} usage rows stored for {answered} answered requests ({:.0} s after the load)",
        figures.stored_after.as_secs_f64()
    );
    write_csv(stacks, &figures)?;
    Ok(figures)
}

/// Which slots one connection takes, and when the load runs.
#[derive(Clone, Copy)]
struct Slot {
    slot: u64,
    addr: SocketAddr,
    start: Instant,
    options: Options,
}

/// One keep-alive connection's share of the load: request numbers `slot`, `slot + CONNECTIONS`,
/// …, each sent at its scheduled time (at once when late).
async fn connection(
    slot: Slot,
    keys: Arc<Vec<String>>,
    (plain, streamed): (Bytes, Bytes),
    shared: Arc<Shared>,
    per_key: Arc<Vec<AtomicU64>>,
) {
    let rate = f64::from(slot.options.rate.max(1));
    let end = slot.start + slot.options.duration;
    let mut conn: Option<client::Conn> = None;
    let mut seq = slot.slot;
    while !shared.stop.load(Ordering::Relaxed) {
        let at = slot.start + Duration::from_secs_f64(seq as f64 / rate);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        let is_stream = seq.is_multiple_of(STREAM_EVERY);
        let key_index = usize::try_from(seq % LOAD_KEYS as u64).unwrap_or(0);
        seq += CONNECTIONS as u64;
        if conn.as_ref().is_none_or(client::Conn::is_closed) {
            match client::Conn::connect(slot.addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    shared.error(format!("connect: {e:#}"));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        shared.sent.fetch_add(1, Ordering::Relaxed);
        if is_stream {
            shared.streamed.fetch_add(1, Ordering::Relaxed);
        }
        let body = if is_stream { &streamed } else { &plain };
        let sent = Instant::now();
        let lag = sent.saturating_duration_since(at);
        if let Ok(mut window) = shared.window.lock() {
            window.max_lag_us = window.max_lag_us.max(lag.as_secs_f64() * 1e6);
            if lag > LATE {
                window.late += 1;
            }
        }
        let timing = c
            .post("/v1/chat/completions", Some(&keys[key_index]), body)
            .await;
        let latency_us = sent.elapsed().as_secs_f64() * 1e6;
        let timing = match timing {
            Ok(t) => t,
            Err(e) => {
                conn = None;
                shared.error(short(&format!("transport: {e:#}")));
                continue;
            }
        };
        shared.answered.fetch_add(1, Ordering::Relaxed);
        per_key[key_index].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut window) = shared.window.lock() {
            window.requests += 1;
        }
        if timing.status != 200 {
            shared.error(format!("status {}", timing.status));
        } else if is_stream && !timing.tail.ends_with(DONE) {
            shared.error("stream without its final data: [DONE]".into());
        } else if let Ok(mut window) = shared.window.lock() {
            if is_stream {
                window.stream_us.push(latency_us);
            } else {
                window.plain_us.push(latency_us);
            }
        }
    }
}

/// CPU time of the two processes between calls.
struct Cpu {
    pids: (u32, u32),
    last: (f64, f64),
    at: Instant,
}

impl Cpu {
    fn new(envoy: u32, cp: u32) -> Cpu {
        Cpu {
            pids: (envoy, cp),
            last: (cpu_seconds(envoy), cpu_seconds(cp)),
            at: Instant::now(),
        }
    }

    /// Percent of one core each process used since the last call.
    fn since_last(&mut self) -> (f64, f64) {
        let now = (cpu_seconds(self.pids.0), cpu_seconds(self.pids.1));
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let pct = (
            100.0 * (now.0 - self.last.0) / secs,
            100.0 * (now.1 - self.last.1) / secs,
        );
        self.last = now;
        self.at = Instant::now();
        pct
    }
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat`); NaN when it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // After the command (which may contain spaces): state is field 3, utime 14, stime 15.
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / USER_HZ)
        })
        .unwrap_or(f64::NAN)
}

fn short(text: &str) -> String {
    text.chars().take(120).collect()
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
}

fn sample(shared: &Shared, at: Duration, envoy_pid: u32, cp: &ControlPlane) -> Result<Sample> {
    let mut sample = shared.take_window();
    sample.at = at;
    sample.envoy_rss_kib = super::tree_rss_kib(envoy_pid)?;
    sample.cp_rss_kib = super::rss_kib(cp.pid)?;
    sample.load1 = super::loadavg()
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(f64::NAN);
    Ok(sample)
}

fn print_sample(s: &Sample) {
    println!(
        "soak {:>5.0} s: {:>5} req, {} err, {} late (max {:.1} ms), plain p50/p99 {}/{} µs, stream p50/p99 {}/{} µs, Envoy {:.1} MiB {:.0} % CPU, control plane {:.1} MiB {:.0} % CPU, load {:.2}",
        s.at.as_secs_f64(),
        s.requests,
        s.errors,
        s.late,
        s.max_lag_us / 1e3,
        pct(&s.plain_us, 50.0),
        pct(&s.plain_us, 99.0),
        pct(&s.stream_us, 50.0),
        pct(&s.stream_us, 99.0),
        mib(s.envoy_rss_kib),
        s.envoy_cpu_pct,
        mib(s.cp_rss_kib),
        s.cp_cpu_pct,
        s.load1
    );
}

/// Every sample as CSV next to the run's logs (`target/bench/run/soak-samples.csv`).
fn write_csv(stacks: &Stacks, figures: &SoakFigures) -> Result<()> {
    let mut csv = String::from(
        "seconds,requests,errors,late,max_lag_us,plain_p50_us,plain_p99_us,stream_p50_us,stream_p99_us,envoy_rss_kib,control_plane_rss_kib,envoy_cpu_pct,control_plane_cpu_pct,load1\n",
    );
    for s in &figures.samples {
        let _ = writeln!(
            csv,
            "{:.0},{},{},{},{:.0},{},{},{},{},{},{},{:.1},{:.1},{:.2}",
            s.at.as_secs_f64(),
            s.requests,
            s.errors,
            s.late,
            s.max_lag_us,
            pct(&s.plain_us, 50.0),
            pct(&s.plain_us, 99.0),
            pct(&s.stream_us, 50.0),
            pct(&s.stream_us, 99.0),
            s.envoy_rss_kib,
            s.cp_rss_kib,
            s.envoy_cpu_pct,
            s.cp_cpu_pct,
            s.load1
        );
    }
    let path = stacks.work.join("soak-samples.csv");
    fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))
}

fn pct(values: &[f64], p: f64) -> String {
    if values.is_empty() {
        "—".into()
    } else {
        format!("{:.0}", percentile(values.to_vec(), p))
    }
}

fn ms(values: &[f64], p: f64) -> String {
    if values.is_empty() {
        "—".into()
    } else {
        format!("{:.2}", percentile(values.to_vec(), p) / 1e3)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Memory of one process over the samples after the warm-up.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub idle: u64,
    pub start: u64,
    pub end: u64,
    pub min: u64,
    pub max: u64,
}

impl Memory {
    /// Largest distance of any sample from the start value, in percent of it.
    pub fn spread_pct(&self) -> f64 {
        let start = self.start as f64;
        let far = (self.max as f64 - start).max(start - self.min as f64);
        100.0 * far / start.max(1.0)
    }

    pub fn growth_pct(&self) -> f64 {
        100.0 * (self.end as f64 - self.start as f64) / (self.start as f64).max(1.0)
    }
}

impl SoakFigures {
    /// Samples from the first one at or after the warm-up.
    fn after_warmup(&self) -> &[Sample] {
        let first = self
            .samples
            .iter()
            .position(|s| s.at >= self.warmup)
            .unwrap_or(self.samples.len());
        &self.samples[first..]
    }

    fn memory(&self, idle: u64, rss: impl Fn(&Sample) -> u64) -> Option<Memory> {
        let samples = self.after_warmup();
        let values: Vec<u64> = samples.iter().map(rss).collect();
        Some(Memory {
            idle,
            start: *values.first()?,
            end: *values.last()?,
            min: *values.iter().min()?,
            max: *values.iter().max()?,
        })
    }

    pub fn envoy_memory(&self) -> Option<Memory> {
        self.memory(self.envoy_idle_kib, |s| s.envoy_rss_kib)
    }

    pub fn cp_memory(&self) -> Option<Memory> {
        self.memory(self.cp_idle_kib, |s| s.cp_rss_kib)
    }

    pub fn rows_ok(&self) -> bool {
        self.stored == self.answered
    }

    fn achieved_rps(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn minutes(&self) -> String {
        let m = self.duration.as_secs_f64() / 60.0;
        if (m - m.round()).abs() < 1e-9 {
            format!("{m:.0}")
        } else {
            format!("{m:.1}")
        }
    }

    fn flat(&self) -> bool {
        [self.envoy_memory(), self.cp_memory()]
            .iter()
            .all(|m| m.is_some_and(|m| m.spread_pct() <= FLAT_TARGET_PCT))
    }

    /// The Targets row (keyed by its first words).
    pub fn target_row(&self, note: &str) -> (String, String) {
        let key = TARGET_KEY.to_string();
        let spread =
            |m: Option<Memory>| m.map_or("—".into(), |m| format!("{:.1} %", m.spread_pct()));
        let met = self.flat() && self.errors == 0 && self.rows_ok();
        (
            key.clone(),
            format!(
                "| {key} ({} min at {} req/s: Envoy and control-plane RSS within {FLAT_TARGET_PCT:.0} % of the post-warm-up value, 0 errors, a usage row per request) | Envoy within {}, control plane within {}; {} errors; {} of {} rows{note} | {} |",
                self.minutes(),
                self.rate,
                spread(self.envoy_memory()),
                spread(self.cp_memory()),
                self.errors,
                self.stored,
                self.answered,
                if met { "met" } else { "**missed**" }
            ),
        )
    }

    pub fn render(&self, md: &mut String) {
        let after = self.after_warmup();
        let plain: Vec<f64> = after.iter().flat_map(|s| s.plain_us.clone()).collect();
        let stream: Vec<f64> = after.iter().flat_map(|s| s.stream_us.clone()).collect();
        let loads: Vec<f64> = self.samples.iter().map(|s| s.load1).collect();
        let (load_min, load_max) = loads
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &l| {
                (a.min(l), b.max(l))
            });
        let _ = writeln!(
            md,
            "## Soak: {} minutes at {} req/s\n\n\
             Only `cargo xtask bench --only soak` runs it (`--soak-minutes`, default \
             {DEFAULT_MINUTES}; `--soak-rate`, default {DEFAULT_RATE}); the full run does not. One \
             stack as the `tr` candidate's: `tokenrouter serve` (release; 100 keys, 10 routing \
             rules, 10 firewall rules) and Envoy from `tokenrouter envoy-bootstrap` with the \
             filter, `--concurrency {ENVOY_CONCURRENCY}`, in front of the in-process fake \
             provider. The load: one request every 1/{} s, one in {STREAM_EVERY} streamed, spread \
             over {LOAD_KEYS} keys, from {CONNECTIONS} keep-alive connections of the benchmark's \
             hyper client on one thread (`xtask/src/bench/soak.rs`). It is not oha because one oha \
             run sends one body, does not check that a stream ends with `[DONE]` and reports only \
             at its end. The client schedules request n at n/rate s (a late request is sent at \
             once, never skipped), measures latency from the moment a request is sent to its \
             last byte, and counts sends that left more than {} ms behind schedule. Errors: any status but \
             200, a stream whose body does not end with `data: [DONE]`, a transport error or a \
             timeout (30 s). Sampled every {} s; the first {:.0} s are warm-up, and memory is \
             compared with the first sample after it. At the end, `GetUsage` (grouped by key) \
             must count a stored usage row for every answered request of the load's keys. Every \
             sample is in `target/bench/run/soak-samples.csv` after a run.\n",
            self.minutes(),
            self.rate,
            self.rate,
            LATE.as_millis(),
            SAMPLE_EVERY.as_secs(),
            self.warmup.as_secs_f64(),
        );
        let errors = if self.error_kinds.is_empty() {
            "0".to_string()
        } else {
            let kinds: Vec<String> = self
                .error_kinds
                .iter()
                .map(|(k, n)| format!("{n} × {k}"))
                .collect();
            format!("**{}** ({})", self.errors, kinds.join("; "))
        };
        let _ = writeln!(
            md,
            "| figure | value |\n| --- | --- |\n\
             | load | {:.0} s at a target of {} req/s; achieved {:.1} req/s |\n\
             | requests | {} sent, {} of them streamed; {} answered; {} sent more than {} ms behind schedule (largest lag {:.1} ms) |\n\
             | errors (target 0) | {errors} |\n\
             | latency after the warm-up, non-streamed | p50 {} ms, p99 {} ms |\n\
             | latency after the warm-up, streamed (to the last byte) | p50 {} ms, p99 {} ms |\n\
             | usage rows stored for the load's keys | {} of {} answered requests ({}; final {:.0} s after the load) |\n\
             | load average (1/5/15 min) | before {}; after {}; 1-min range over the samples {:.2}–{:.2} |\n",
            self.elapsed.as_secs_f64(),
            self.rate,
            self.achieved_rps(),
            self.sent,
            self.streamed,
            self.answered,
            self.samples.iter().map(|s| s.late).sum::<u64>(),
            LATE.as_millis(),
            self.samples
                .iter()
                .map(|s| s.max_lag_us)
                .fold(0.0, f64::max)
                / 1e3,
            ms(&plain, 50.0),
            ms(&plain, 99.0),
            ms(&stream, 50.0),
            ms(&stream, 99.0),
            self.stored,
            self.answered,
            if self.rows_ok() {
                "none lost".to_string()
            } else if self.stored < self.answered {
                format!("**{} lost**", self.answered - self.stored)
            } else {
                format!("**{} more than answered**", self.stored - self.answered)
            },
            self.stored_after.as_secs_f64(),
            self.load_before,
            self.load_after,
            load_min,
            load_max,
        );
        md.push_str(
            "| process (VmRSS, MiB) | before the load | start (after the warm-up) | end | min | max | end − start | flat within (max distance from start) | target ≤ 10 % |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for (name, memory) in [
            (
                format!("Envoy + filter ({ENVOY_CONCURRENCY} workers)"),
                self.envoy_memory(),
            ),
            ("control plane".to_string(), self.cp_memory()),
        ] {
            let Some(m) = memory else {
                let _ = writeln!(md, "| {name} | — | — | — | — | — | — | — | not measured |");
                continue;
            };
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:+.1} % | {:.1} % | {} |",
                mib(m.idle),
                mib(m.start),
                mib(m.end),
                mib(m.min),
                mib(m.max),
                m.growth_pct(),
                m.spread_pct(),
                if m.spread_pct() <= FLAT_TARGET_PCT {
                    "met"
                } else {
                    "**missed**"
                }
            );
        }
        let step = if self.duration >= Duration::from_secs(15 * 60) {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(30)
        };
        let _ = writeln!(
            md,
            "\nSamples, one row per {:.0} s (requests, errors, latency and average CPU over the row's \
             interval; memory and load average at its end):\n\n\
             | t (min) | requests | errors | non-streamed p50 / p99 ms | streamed p50 / p99 ms | Envoy RSS MiB | control plane RSS MiB | Envoy / control plane CPU % of a core | load (1 min) |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            step.as_secs_f64()
        );
        let mut interval: Vec<&Sample> = Vec::new();
        let mut next = step;
        for (i, s) in self.samples.iter().enumerate() {
            interval.push(s);
            let last = i + 1 == self.samples.len();
            if s.at < next && !last {
                continue;
            }
            while next <= s.at {
                next += step;
            }
            let plain: Vec<f64> = interval.iter().flat_map(|s| s.plain_us.clone()).collect();
            let stream: Vec<f64> = interval.iter().flat_map(|s| s.stream_us.clone()).collect();
            let cpu = |f: fn(&Sample) -> f64| {
                interval.iter().map(|s| f(s)).sum::<f64>() / interval.len().max(1) as f64
            };
            let _ = writeln!(
                md,
                "| {:.1} | {} | {} | {} / {} | {} / {} | {:.1} | {:.1} | {:.0} / {:.0} | {:.2} |",
                s.at.as_secs_f64() / 60.0,
                interval.iter().map(|s| s.requests).sum::<u64>(),
                interval.iter().map(|s| s.errors).sum::<u64>(),
                ms(&plain, 50.0),
                ms(&plain, 99.0),
                ms(&stream, 50.0),
                ms(&stream, 99.0),
                mib(s.envoy_rss_kib),
                mib(s.cp_rss_kib),
                cpu(|s| s.envoy_cpu_pct),
                cpu(|s| s.cp_cpu_pct),
                s.load1
            );
            interval.clear();
        }
        md.push('\n');
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample(secs: u64, envoy: u64, cp: u64) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            requests: 2000,
            plain_us: vec![1000.0, 2000.0],
            stream_us: vec![3000.0],
            envoy_rss_kib: envoy,
            cp_rss_kib: cp,
            load1: 1.0,
            ..Sample::default()
        }
    }

    #[test]
    fn memory_is_compared_with_the_first_sample_after_the_warm_up() {
        let figures = SoakFigures {
            rate: 200,
            duration: Duration::from_secs(1800),
            warmup: Duration::from_secs(60),
            elapsed: Duration::from_secs(1800),
            samples: (1..=180)
                .map(|n| sample(n * 10, if n < 6 { 50_000 } else { 100_000 + n }, 40_000))
                .collect(),
            answered: 360_000,
            stored: 360_000,
            ..SoakFigures::default()
        };
        let envoy = figures.envoy_memory().unwrap();
        assert_eq!(
            (envoy.start, envoy.end, envoy.min),
            (100_006, 100_180, 100_006)
        );
        assert!(envoy.spread_pct() < 0.2);
        assert!(figures.flat() && figures.rows_ok());
        let mut md = String::new();
        figures.render(&mut md);
        // One row per 5 minutes.
        assert_eq!(md.lines().filter(|l| l.starts_with("| 5.0 |")).count(), 1);
        assert_eq!(
            md.lines()
                .filter(|l| l.starts_with("| ") && l.contains(" / ") && !l.contains("t (min)"))
                .count(),
            6
        );
        assert!(figures.target_row("").1.ends_with("| met |"));
    }
}
