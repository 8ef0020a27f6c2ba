//! The headline figures alone, with where the CPU goes (`--only overhead`): the direct fake
//! provider, bare Envoy, bare Envoy with each floor filter (`filter/floor`: a wasm filter that
//! does nothing, and one that does only the host calls routing on the body needs — what any
//! wasm filter, and any body-routing one, costs on that Envoy and runtime before tokenrouter's
//! own work) and tokenrouter (the `tr` configuration: 100 keys, 10 routing rules, 10 firewall
//! rules) with one Envoy worker, in interleaved rounds whose order rotates — latency at one
//! connection, then saturated throughput.
//!
//! Around each saturated run the CPU time of every process taking part is read from
//! `/proc/<pid>/task/*/stat` and divided by the requests served: Envoy's worker threads, Envoy's
//! other threads (the main thread, which runs the filter's sync VM and the gRPC streams), the
//! control plane (which stores the usage records), this runner's process (the fake provider)
//! and the whole machine (`/proc/stat`; the load generator is the rest). On 2 cores shared by
//! all of them, the figures say which process a request's cost lands in.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;

use super::load::Oha;
use super::report::{per_round, stat_text, Candidate, Stat};
use super::{Plan, Stacks, Target};
use crate::Supervisor;

/// Envoy workers, as the latency table and the 1-worker throughput table.
pub(super) const ENVOY_CONCURRENCY: usize = 1;

/// The row of the `--compare-wasm` build (a prefix of each row with several).
pub(super) const COMPARE_NAME: &str = "tr (compare)";
/// The row of `tr` with its edge as the native module (`filter/native`), same control plane.
pub(super) const NATIVE_NAME: &str = "tr, native module";

/// A floor filter in front of bare Envoy.
#[derive(Clone, Copy, Debug)]
enum Floor {
    /// `filter/floor`'s wasm module with this plugin configuration.
    Wasm(&'static str),
    /// The routing floor as an Envoy dynamic module (`filter/native-floor`).
    Native,
}

impl Floor {
    /// Its part of the Envoy's configuration and log file names.
    fn key(self) -> &'static str {
        match self {
            Floor::Wasm(configuration) => configuration,
            Floor::Native => "native",
        }
    }
}

/// The floor rows: (row name, floor).
const FLOORS: [(&str, Floor); 3] = [
    ("bare + no-op wasm", Floor::Wasm("none")),
    ("bare + routing floor", Floor::Wasm("routing")),
    ("bare + native routing floor", Floor::Native),
];

/// Kernel clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`; 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Where the CPU of one saturated run went, in µs per request.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuPerRequest {
    pub envoy_workers: f64,
    pub envoy_other: f64,
    pub control_plane: f64,
    pub runner: f64,
    pub machine: f64,
}

/// One candidate's figures, one value per round.
#[derive(Clone, Debug)]
pub struct CandidateFigures {
    pub candidate: Candidate,
    /// The row's name (the candidate's, or `tr (compare)` for `--compare-wasm`).
    pub name: String,
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    pub rps: Vec<f64>,
    pub cpu: Vec<CpuPerRequest>,
    /// Requests per second at one connection (back to back: 1 / the mean latency).
    pub one_rps: Vec<f64>,
    /// Where the CPU of the one-connection run went.
    pub one_cpu: Vec<CpuPerRequest>,
}

#[derive(Clone, Debug, Default)]
pub struct OverheadFigures {
    pub rounds: usize,
    pub latency_duration: Duration,
    pub saturation_connections: usize,
    pub saturation_duration: Duration,
    /// Direct, bare, the floors, tr (and tr (compare)) in that order.
    pub candidates: Vec<CandidateFigures>,
}

/// The processes whose CPU time is read.
struct Pids {
    envoy: Option<u32>,
    control_plane: Option<u32>,
}

/// CPU ticks at one instant.
#[derive(Clone, Copy, Default)]
struct Ticks {
    envoy_workers: u64,
    envoy_other: u64,
    control_plane: u64,
    runner: u64,
    machine_busy: u64,
    machine_all: u64,
}

/// `compare_wasm`: a second build of the filter, measured as one more candidate beside the
/// first (same control plane), e.g. a change against the build before it.
pub fn run(
    rt: &tokio::runtime::Runtime,
    oha: &Oha,
    plan: &Plan,
    stacks: &mut Stacks,
    base_url: &str,
    compare_wasm: Option<&Path>,
) -> Result<OverheadFigures> {
    let (cp, key) = tr_control_plane(rt, stacks, base_url, "overhead")?;
    let mut children = Supervisor::default();
    let mut envoys = bare_and_floors(stacks, &mut children, "overhead")?.into_iter();
    let (_, bare, bare_pid) = envoys
        .next()
        .ok_or_else(|| anyhow::anyhow!("bare Envoy was not started"))?;
    let floors: Vec<_> = envoys.collect();
    let (tr, _) = stacks.tr_envoy(&mut children, &cp, "overhead", ENVOY_CONCURRENCY)?;
    let tr_pid = super::last_pid(&children)?;
    crate::build_native_edge(stacks.paths)?;
    let (native, _) =
        stacks.tr_native_envoy(&mut children, &cp, "overhead-native", ENVOY_CONCURRENCY)?;
    let native_pid = super::last_pid(&children)?;
    let compare = match compare_wasm {
        Some(wasm) => {
            let (addr, _) = stacks.tr_envoy_with(
                &mut children,
                &cp,
                "overhead-compare",
                ENVOY_CONCURRENCY,
                wasm,
            )?;
            Some((addr, super::last_pid(&children)?))
        }
        None => None,
    };
    let target = |candidate, addr, key: Option<&str>| Target {
        candidate,
        addr,
        key: key.map(str::to_string),
        model: super::TR_MODEL,
    };
    let pids = |envoy, control_plane| Pids {
        envoy,
        control_plane,
    };
    // (target, processes whose CPU is read, row name)
    let mut targets = vec![
        (
            target(Candidate::Direct, stacks.fake, None),
            pids(None, None),
            Candidate::Direct.name(),
        ),
        (
            target(Candidate::Bare, bare, None),
            pids(Some(bare_pid), None),
            Candidate::Bare.name(),
        ),
    ];
    for (name, addr, pid) in floors {
        targets.push((
            target(Candidate::Bare, addr, None),
            pids(Some(pid), None),
            name,
        ));
    }
    targets.push((
        target(Candidate::Tr, tr, Some(&key)),
        pids(Some(tr_pid), Some(cp.pid)),
        Candidate::Tr.name(),
    ));
    targets.push((
        target(Candidate::Tr, native, Some(&key)),
        pids(Some(native_pid), Some(cp.pid)),
        NATIVE_NAME,
    ));
    if let Some((addr, pid)) = compare {
        targets.push((
            target(Candidate::Tr, addr, Some(&key)),
            pids(Some(pid), Some(cp.pid)),
            COMPARE_NAME,
        ));
    }
    let body = Bytes::from(super::request_body(super::TR_MODEL, false));
    for (t, _, _) in targets
        .iter()
        .filter(|(t, _, _)| t.candidate != Candidate::Direct)
    {
        super::wait_until(
            Duration::from_secs(120),
            &format!("Envoy at {} to answer 200", t.addr),
            &mut children,
            || super::first_status(t.addr, t.key.as_deref(), &body) == Some(200),
        )?;
    }
    let all: Vec<Target> = targets.iter().map(|(t, _, _)| t.clone()).collect();
    super::warm_up(oha, &all)?;
    let mut figures = OverheadFigures {
        rounds: plan.rounds,
        latency_duration: plan.latency_duration,
        saturation_connections: plan.saturation_connections,
        saturation_duration: plan.saturation_duration,
        candidates: targets
            .iter()
            .map(|(t, _, name)| CandidateFigures::new(t.candidate, name))
            .collect(),
    };
    let load = |target: &Target, connections, duration| target.load(connections, duration, None);
    let n = targets.len();
    for round in 0..plan.rounds {
        println!("--- round {}/{} (overhead)", round + 1, plan.rounds);
        for i in 0..n {
            let at = (i + round) % n;
            let (target, pids, name) = &targets[at];
            let before = ticks(pids)?;
            let r = oha.run(&load(target, 1, plan.latency_duration))?;
            let after = ticks(pids)?;
            super::check(target, &r)?;
            let cpu = per_request(&before, &after, r.total);
            println!(
                "{:>12} 1 conn: p50 {:.0} µs p99 {:.0} µs; CPU µs/request: Envoy workers {:.1}, machine {:.1}",
                name, r.p50_us, r.p99_us, cpu.envoy_workers, cpu.machine
            );
            let c = &mut figures.candidates[at];
            c.p50_us.push(r.p50_us);
            c.p99_us.push(r.p99_us);
            c.one_rps.push(r.rps);
            c.one_cpu.push(cpu);
        }
        for i in 0..n {
            let at = (i + round) % n;
            let (target, pids, name) = &targets[at];
            let before = ticks(pids)?;
            let r = oha.run(&load(
                target,
                plan.saturation_connections,
                plan.saturation_duration,
            ))?;
            let after = ticks(pids)?;
            super::check(target, &r)?;
            let cpu = per_request(&before, &after, r.total);
            println!(
                "{:>12} saturated: {:.0} req/s; CPU µs/request: Envoy workers {:.1}, Envoy other {:.1}, control plane {:.1}, runner {:.1}, machine {:.1}",
                name,
                r.rps,
                cpu.envoy_workers,
                cpu.envoy_other,
                cpu.control_plane,
                cpu.runner,
                cpu.machine
            );
            let c = &mut figures.candidates[at];
            c.rps.push(r.rps);
            c.cpu.push(cpu);
        }
    }
    children.check_running()?;
    Ok(figures)
}

/// A control plane with the `tr` configuration (the fake provider, 100 keys, 10 routing and 10
/// firewall rules) and the key the load uses, named by `label`.
pub(super) fn tr_control_plane(
    rt: &tokio::runtime::Runtime,
    stacks: &mut Stacks,
    base_url: &str,
    label: &str,
) -> Result<(super::ControlPlane, String)> {
    let cp = stacks.control_plane(label)?;
    let admin = rt.block_on(super::Admin::connect(&cp.grpc, super::ADMIN_TOKEN))?;
    rt.block_on(admin.add_provider(super::PROVIDER, base_url))?;
    rt.block_on(admin.seed_keys(0, super::SMALL_KEYS, Duration::from_secs(120)))?;
    rt.block_on(admin.seed_routing_rules(0, super::SMALL_ROUTING_RULES))?;
    rt.block_on(admin.seed_firewall_rules(0, super::SMALL_FIREWALL_RULES))?;
    // Created last: once it authenticates, the snapshot with every rule is live.
    let key = rt
        .block_on(admin.create_key(format!("bench-{label}-live")))?
        .raw;
    Ok((cp, key))
}

/// Bare Envoy, then bare Envoy with each floor filter, at one worker: (row name, address, pid).
pub(super) fn bare_and_floors(
    stacks: &Stacks,
    children: &mut Supervisor,
    label: &str,
) -> Result<Vec<(&'static str, std::net::SocketAddr, u32)>> {
    let floor_wasm = crate::build_floor_filter(stacks.paths)?;
    let native_name = crate::build_native_floor(stacks.paths)?;
    let mut envoys = Vec::new();
    let variants = std::iter::once((Candidate::Bare.name(), None))
        .chain(FLOORS.map(|(name, floor)| (name, Some(floor))));
    for (name, floor) in variants {
        let addr = super::free_addr()?;
        let file = match floor {
            None => format!("bare-envoy-{label}-c{ENVOY_CONCURRENCY}.yaml"),
            Some(f) => format!("floor-{}-envoy-{label}-c{ENVOY_CONCURRENCY}.yaml", f.key()),
        };
        let config = stacks.work.join(file);
        let filter = floor.map(|f| match f {
            Floor::Native => super::FloorFilter::Native { name: native_name },
            Floor::Wasm(configuration) => super::FloorFilter::Wasm {
                module: &floor_wasm,
                configuration,
            },
        });
        fs::write(
            &config,
            super::bare_envoy_config(addr, super::free_addr()?, stacks.fake, filter),
        )?;
        let log_name = match floor {
            None => format!("bare-{label}"),
            Some(f) => format!("floor-{}-{label}", f.key()),
        };
        stacks.spawn_envoy(children, &log_name, &config, ENVOY_CONCURRENCY)?;
        envoys.push((name, addr, super::last_pid(children)?));
    }
    Ok(envoys)
}

fn ticks(pids: &Pids) -> Result<Ticks> {
    let mut t = Ticks::default();
    if let Some(pid) = pids.envoy {
        for (name, ticks) in thread_ticks(pid)? {
            if name.starts_with("wrk:") {
                t.envoy_workers += ticks;
            } else {
                t.envoy_other += ticks;
            }
        }
    }
    if let Some(pid) = pids.control_plane {
        t.control_plane = thread_ticks(pid)?.iter().map(|(_, ticks)| ticks).sum();
    }
    t.runner = thread_ticks(std::process::id())?
        .iter()
        .map(|(_, ticks)| ticks)
        .sum();
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal …
    t.machine_all = cpu.iter().take(8).sum();
    t.machine_busy =
        t.machine_all - cpu.get(3).copied().unwrap_or(0) - cpu.get(4).copied().unwrap_or(0);
    Ok(t)
}

/// (thread name, user + system ticks) of every thread of `pid`.
fn thread_ticks(pid: u32) -> Result<Vec<(String, u64)>> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("process {pid} is gone"))? {
        let Ok(stat) = fs::read_to_string(entry?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let Some(parsed) = parse_stat(&stat) {
            threads.push(parsed);
        }
    }
    Ok(threads)
}

/// The name and utime + stime of one `/proc/*/stat` line.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    // After the name: state(3) ppid … utime is field 14, stime 15 (1-based over the line).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// One CPU figure over the rounds, as the tables write it.
fn cpu_text(rounds: &[CpuPerRequest], f: fn(&CpuPerRequest) -> f64) -> String {
    let v: Vec<f64> = rounds.iter().map(f).collect();
    stat_text(Stat::of(&v), 1, "")
}

fn per_request(before: &Ticks, after: &Ticks, requests: u64) -> CpuPerRequest {
    let us = |b: u64, a: u64| a.saturating_sub(b) as f64 * 1e6 / CLK_TCK / requests.max(1) as f64;
    CpuPerRequest {
        envoy_workers: us(before.envoy_workers, after.envoy_workers),
        envoy_other: us(before.envoy_other, after.envoy_other),
        control_plane: us(before.control_plane, after.control_plane),
        runner: us(before.runner, after.runner),
        machine: us(before.machine_busy, after.machine_busy),
    }
}

impl CandidateFigures {
    fn new(candidate: Candidate, name: &str) -> CandidateFigures {
        CandidateFigures {
            candidate,
            name: name.to_string(),
            p50_us: Vec::new(),
            p99_us: Vec::new(),
            rps: Vec::new(),
            cpu: Vec::new(),
            one_rps: Vec::new(),
            one_cpu: Vec::new(),
        }
    }
}

impl OverheadFigures {
    /// The row of `candidate` under its own name (not a variant of it such as the floor).
    fn of(&self, candidate: Candidate) -> Option<&CandidateFigures> {
        self.candidates
            .iter()
            .find(|c| c.candidate == candidate && c.name == candidate.name())
    }

    /// Whether a `--compare-wasm` build was measured.
    fn compared(&self) -> bool {
        self.candidates.iter().any(|c| c.name == COMPARE_NAME)
    }

    pub fn render(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Overhead: bare Envoy against tokenrouter, with where the CPU goes\n\n\
             The direct fake provider, bare Envoy, the floors (bare Envoy with one wasm HTTP \
             filter of `filter/floor` on the same V8 runtime: `{}` does nothing; `{}` holds the \
             request until its body is in, reads the header map and the body, sets a routing \
             header, puts the body back and clears the route cache, then holds the response \
             until its body is in, reads its header map and body and sets one header — the host \
             calls routing on the body needs, with no parsing, decision or usage record; `{}` \
             makes the same calls from an Envoy dynamic module, `filter/native-floor`: native \
             code in Envoy's process, no wasm VM) and \
             tokenrouter (the `tr` configuration: 100 keys, 10 routing rules, \
             10 firewall rules), `--concurrency {ENVOY_CONCURRENCY}`{}. \
             Each round measures every candidate at one connection ({:.0} s), then saturated \
             ({} connections, {:.0} s), in an order that rotates between rounds; ratios and \
             differences are per round. {} round(s); median (min–max). Added p50: the \
             candidate's p50 − direct p50. CPU per request: CPU time (user + system, \
             `/proc/<pid>/task/*/stat`) during the saturated run ÷ its requests, for Envoy's \
             worker threads, Envoy's other threads (main thread: the filter's sync VM, gRPC \
             streams), the control plane (stores the usage records), the runner (the fake \
             provider) and the whole machine (`/proc/stat`; the rest is the load generator).\n\n\
             | candidate | p50 µs (1 connection) | added p50 µs | added p50 ÷ bare's | saturated req/s | req/s ÷ bare | Envoy workers µs/req | Envoy other µs/req | control plane µs/req | fake provider µs/req | machine µs/req |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            FLOORS[0].0,
            FLOORS[1].0,
            FLOORS[2].0,
            if self.compared() {
                "; `tr (compare)` is a second build of the filter (`--compare-wasm`) on a second \
                 Envoy in front of the same control plane"
            } else {
                ""
            },
            self.latency_duration.as_secs_f64(),
            self.saturation_connections,
            self.saturation_duration.as_secs_f64(),
            self.rounds,
        );
        let (Some(direct), Some(bare)) = (self.of(Candidate::Direct), self.of(Candidate::Bare))
        else {
            return;
        };
        // Per round: the candidate's p50 − direct's.
        let added_p50 = |c: &CandidateFigures| -> Vec<f64> {
            c.p50_us
                .iter()
                .zip(&direct.p50_us)
                .map(|(x, d)| x - d)
                .collect()
        };
        let bare_added = added_p50(bare);
        for c in &self.candidates {
            let candidate = c.candidate;
            let added = added_p50(c);
            let is_direct = candidate == Candidate::Direct;
            let vs_bare = |text: String| {
                if is_direct || std::ptr::eq(c, bare) {
                    "—".to_string()
                } else {
                    text
                }
            };
            let cpu = |f: fn(&CpuPerRequest) -> f64| cpu_text(&c.cpu, f);
            let envoy = |f: fn(&CpuPerRequest) -> f64| {
                if is_direct {
                    "—".to_string()
                } else {
                    cpu(f)
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.name,
                stat_text(Stat::of(&c.p50_us), 0, ""),
                if is_direct {
                    "—".to_string()
                } else {
                    stat_text(Stat::of(&added), 0, "")
                },
                vs_bare(stat_text(
                    per_round(&added, &bare_added, |x, r| x / r),
                    2,
                    " ×"
                )),
                stat_text(Stat::of(&c.rps), 0, ""),
                vs_bare(stat_text(
                    per_round(&c.rps, &bare.rps, |x, r| x / r),
                    2,
                    " ×"
                )),
                envoy(|c| c.envoy_workers),
                envoy(|c| c.envoy_other),
                if candidate == Candidate::Tr {
                    cpu(|c| c.control_plane)
                } else {
                    "—".to_string()
                },
                cpu(|c| c.runner),
                cpu(|c| c.machine),
            );
        }
        md.push('\n');
        self.render_one_connection(md);
    }

    /// What a lone request costs: at one connection the requests follow each other, so the
    /// mean time per request is 1 / req/s, and the CPU the machine spends per request shows
    /// how much of that time something is running (the rest is waiting: wake-ups, the loopback).
    fn render_one_connection(&self, md: &mut String) {
        if self.candidates.iter().all(|c| c.one_cpu.is_empty()) {
            return;
        }
        let _ = writeln!(
            md,
            "At one connection (the latency step above), the same CPU reading: requests follow \
             each other, so the mean time per request is 1 ÷ req/s, and the machine's busy CPU per \
             request (every process: Envoy, the control plane, the fake provider and the load \
             generator, on {} cores) shows how much of that time something runs. Busy ÷ mean near \
             1 means a lone request waits on CPU work alone; well below 1, on wake-ups and the \
             loopback.\n\n\
             | candidate | mean µs per request (1 connection) | Envoy workers µs/req | Envoy other µs/req | control plane µs/req | fake provider µs/req | machine busy µs/req | busy ÷ mean |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        for c in &self.candidates {
            let is_direct = c.candidate == Candidate::Direct;
            let mean: Vec<f64> = c
                .one_rps
                .iter()
                .map(|r| if *r > 0.0 { 1e6 / r } else { 0.0 })
                .collect();
            let cpu = |f: fn(&CpuPerRequest) -> f64| cpu_text(&c.one_cpu, f);
            let dash_unless = |shown: bool, text: String| if shown { text } else { "—".into() };
            let busy: Vec<f64> = c.one_cpu.iter().map(|x| x.machine).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                c.name,
                stat_text(Stat::of(&mean), 0, ""),
                dash_unless(!is_direct, cpu(|c| c.envoy_workers)),
                dash_unless(!is_direct, cpu(|c| c.envoy_other)),
                dash_unless(c.candidate == Candidate::Tr, cpu(|c| c.control_plane)),
                cpu(|c| c.runner),
                cpu(|c| c.machine),
                stat_text(per_round(&busy, &mean, |b, m| b / m), 2, ""),
            );
        }
        md.push('\n');
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_name_and_cpu_ticks() {
        let line = "4242 (wrk:worker_0) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 12 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("wrk:worker_0".into(), 325)));
        let spaced = "7 (a b) c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(parse_stat(spaced), Some(("a b) c".into(), 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn cpu_is_divided_by_requests() {
        let before = Ticks::default();
        let after = Ticks {
            envoy_workers: 50,
            control_plane: 10,
            ..Ticks::default()
        };
        let cpu = per_request(&before, &after, 10_000);
        assert!((cpu.envoy_workers - 50.0).abs() < 1e-9);
        assert!((cpu.control_plane - 10.0).abs() < 1e-9);
    }

    #[test]
    fn the_table_has_a_row_per_candidate_with_ratios_to_bare() {
        let row = |candidate: Candidate, p50: f64, rps: f64| CandidateFigures {
            candidate,
            name: candidate.name().into(),
            p50_us: vec![p50],
            p99_us: vec![p50 * 2.0],
            rps: vec![rps],
            cpu: vec![CpuPerRequest::default()],
            one_rps: vec![1e6 / p50],
            one_cpu: vec![CpuPerRequest {
                machine: p50 / 2.0,
                ..CpuPerRequest::default()
            }],
        };
        let figures = OverheadFigures {
            rounds: 1,
            candidates: vec![
                row(Candidate::Direct, 100.0, 30_000.0),
                row(Candidate::Bare, 200.0, 20_000.0),
                CandidateFigures {
                    name: FLOORS[0].0.into(),
                    ..row(Candidate::Bare, 250.0, 16_000.0)
                },
                row(Candidate::Tr, 300.0, 10_000.0),
            ],
            ..OverheadFigures::default()
        };
        let mut md = String::new();
        figures.render(&mut md);
        let bare = md.lines().find(|l| l.starts_with("| bare |")).unwrap();
        assert!(bare.contains("| 100 (100–100) | — |"), "{bare}");
        // The floor is a row of its own, measured against bare Envoy like tr.
        let floor = md
            .lines()
            .find(|l| l.starts_with("| bare + no-op wasm |"))
            .unwrap();
        assert!(
            floor.contains("| 150 (150–150) | 1.50 × (1.50–1.50) |"),
            "{floor}"
        );
        assert!(floor.contains("| 0.80 × (0.80–0.80) |"), "{floor}");
        let tr = md.lines().find(|l| l.starts_with("| tr |")).unwrap();
        assert!(
            tr.contains("| 200 (200–200) | 2.00 × (2.00–2.00) |"),
            "{tr}"
        );
        assert!(tr.contains("| 0.50 × (0.50–0.50) |"), "{tr}");
        // The one-connection table: mean = 1 / req/s, and the busy share of it.
        let one = md.split("At one connection").nth(1).unwrap();
        let tr = one.lines().find(|l| l.starts_with("| tr |")).unwrap();
        assert!(tr.starts_with("| tr | 300 (300–300) |"), "{tr}");
        assert!(
            tr.ends_with("| 150.0 (150.0–150.0) | 0.50 (0.50–0.50) |"),
            "{tr}"
        );
    }
}
