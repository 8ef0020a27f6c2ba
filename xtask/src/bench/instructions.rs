//! Instructions per request (`--only instructions`): bare Envoy, the floors and tokenrouter (the
//! `tr` configuration, and a `--compare-wasm` build beside it) each run under
//! `valgrind --tool=callgrind` with one worker, and the runner sends requests one at a time on
//! one keep-alive connection. Around each measured batch the Envoy's counters are zeroed and
//! dumped (`callgrind_control -z`, `-d`), and the instructions each of its threads executed are
//! divided by the requests.
//!
//! Instruction counts are not time: they leave out cache misses, the kernel and waiting. What
//! they give that the timed runs cannot is repeatability: the same build and request execute
//! the same instructions within a fraction of a percent, whatever else the machine is doing, so
//! a change of 1 % in Envoy's worker shows in one run (the timed `--only overhead` needs several
//! rounds to see 5 %). V8's JIT-compiled wasm is counted like any other code
//! (`--smc-check=all-non-file`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use super::client::Conn;
use super::overhead::{COMPARE_NAME, ENVOY_CONCURRENCY, NATIVE_NAME};
use super::report::{per_round, stat_text, Stat};
use super::{Plan, Stacks};
use crate::Supervisor;

/// Requests measured per candidate per round (100 with `--quick`).
const REQUESTS: usize = 500;

/// Requests sent to every candidate before the first measured batch: V8 compiles the module's
/// hot functions again, optimized, after some use, and Envoy fills its pools.
const WARM_UP_REQUESTS: usize = 300;

/// How long an Envoy under valgrind may take to answer its first request (four start at once
/// on the same cores, each ≈ 50 × slower than natively).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Instructions per request of one candidate, one value per round.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub name: String,
    /// Envoy's worker thread (the thread with the most instructions after the main thread).
    pub worker: Vec<f64>,
    /// Envoy's main thread (the filter's sync VM, the gRPC streams, stats).
    pub main: Vec<f64>,
    /// Every other thread (V8's compiler threads, the access log flusher, …).
    pub other: Vec<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct InstructionFigures {
    pub rounds: usize,
    pub requests: usize,
    /// Bare Envoy, the floors, tr (and tr (compare)) in that order.
    pub rows: Vec<Row>,
}

/// One Envoy under callgrind.
struct Measured {
    name: String,
    addr: std::net::SocketAddr,
    key: Option<String>,
    pid: u32,
}

pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    stacks: &mut Stacks,
    base_url: &str,
    compare_wasm: &[PathBuf],
) -> Result<InstructionFigures> {
    let (cp, key) = super::overhead::tr_control_plane(rt, stacks, base_url, "instructions")?;

    let dumps = stacks.work.join("callgrind");
    fs::create_dir_all(&dumps).with_context(|| format!("cannot create {}", dumps.display()))?;
    let mut children = Supervisor::default();
    stacks.envoy_wrapper = Some(callgrind_command(&dumps));
    let spawned = spawn_all(stacks, &mut children, &cp, &key, compare_wasm);
    stacks.envoy_wrapper = None;
    let measured = spawned?;

    let body = Bytes::from(super::request_body(super::TR_MODEL, false));
    let started = Instant::now();
    for m in &measured {
        super::wait_until(
            START_TIMEOUT,
            &format!("{} (under valgrind) at {} to answer 200", m.name, m.addr),
            &mut children,
            || super::first_status(m.addr, m.key.as_deref(), &body) == Some(200),
        )?;
    }
    println!(
        "every Envoy under valgrind answered after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let requests = if plan.quick { REQUESTS / 5 } else { REQUESTS };
    for m in &measured {
        rt.block_on(send(m, &body, WARM_UP_REQUESTS))?;
    }
    let mut figures = InstructionFigures {
        rounds: plan.rounds,
        requests,
        rows: measured
            .iter()
            .map(|m| Row {
                name: m.name.clone(),
                ..Row::default()
            })
            .collect(),
    };
    let n = measured.len();
    for round in 0..plan.rounds {
        println!("--- round {}/{} (instructions)", round + 1, plan.rounds);
        for i in 0..n {
            let at = (i + round) % n;
            let m = &measured[at];
            let threads = measure(rt, m, &body, requests, &dumps)?;
            let per = |x: u64| x as f64 / requests as f64;
            let main = threads.first().copied().unwrap_or(0);
            let rest = threads.get(1..).unwrap_or_default();
            let worker = rest.iter().copied().max().unwrap_or(0);
            let other = rest.iter().sum::<u64>() - worker;
            println!(
                "{:>22}: instructions per request: worker {:.0}, main {:.0}, other {:.0}",
                m.name,
                per(worker),
                per(main),
                per(other)
            );
            let row = &mut figures.rows[at];
            row.worker.push(per(worker));
            row.main.push(per(main));
            row.other.push(per(other));
        }
    }
    children.check_running()?;
    Ok(figures)
}

/// `valgrind --tool=callgrind` with what Envoy under it needs: V8 writes the code it runs
/// (`--smc-check`), one count per thread, dumps into `dir` named by pid.
fn callgrind_command(dir: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--smc-check=all-non-file".into(),
        "--separate-threads=yes".into(),
        format!("--callgrind-out-file={}/callgrind.%p", dir.display()),
    ]
}

/// Bare Envoy, the floors and tr (and the compared build), each under the wrapper the stacks
/// now hold.
fn spawn_all(
    stacks: &mut Stacks,
    children: &mut Supervisor,
    cp: &super::ControlPlane,
    key: &str,
    compare_wasm: &[PathBuf],
) -> Result<Vec<Measured>> {
    let mut measured: Vec<Measured> =
        super::overhead::bare_and_floors(stacks, children, "instructions")?
            .into_iter()
            .map(|(name, addr, pid)| Measured {
                name: name.to_string(),
                addr,
                key: None,
                pid,
            })
            .collect();
    let (tr, _) = stacks.tr_envoy(children, cp, "instructions", ENVOY_CONCURRENCY)?;
    measured.push(Measured {
        name: "tr".into(),
        addr: tr,
        key: Some(key.to_string()),
        pid: super::last_pid(children)?,
    });
    crate::build_native_edge(stacks.paths)?;
    let (native, _) =
        stacks.tr_native_envoy(children, cp, "instructions-native", ENVOY_CONCURRENCY)?;
    measured.push(Measured {
        name: NATIVE_NAME.into(),
        addr: native,
        key: Some(key.to_string()),
        pid: super::last_pid(children)?,
    });
    for (i, wasm) in compare_wasm.iter().enumerate() {
        let (addr, _) = stacks.tr_envoy_with(
            children,
            cp,
            &format!("instructions-compare{i}"),
            ENVOY_CONCURRENCY,
            wasm,
        )?;
        let file = wasm.file_name().map(|f| f.to_string_lossy().into_owned());
        measured.push(Measured {
            name: match (compare_wasm.len(), file) {
                (1, _) | (_, None) => COMPARE_NAME.to_string(),
                (_, Some(file)) => format!("{COMPARE_NAME}: {file}"),
            },
            addr,
            key: Some(key.to_string()),
            pid: super::last_pid(children)?,
        });
    }
    Ok(measured)
}

/// `n` requests one after the other on one connection; fails on any answer but 200.
async fn send(m: &Measured, body: &Bytes, n: usize) -> Result<()> {
    let mut conn = Conn::connect(m.addr).await?;
    for _ in 0..n {
        let timing = conn
            .post("/v1/chat/completions", m.key.as_deref(), body)
            .await?;
        if timing.status != 200 {
            bail!("{} answered {} under valgrind", m.name, timing.status);
        }
    }
    Ok(())
}

/// Zeroes `m`'s counters, sends `n` requests, dumps the counters and returns the instructions
/// each thread executed meanwhile, in thread order (the main thread first).
fn measure(
    rt: &tokio::runtime::Runtime,
    m: &Measured,
    body: &Bytes,
    n: usize,
    dumps: &Path,
) -> Result<Vec<u64>> {
    remove_dumps(dumps, m.pid)?;
    callgrind_control("-z", m.pid)?;
    rt.block_on(send(m, body, n))?;
    callgrind_control("-d", m.pid)?;
    // The dump is written by the Envoy's own process: wait until every thread's file is whole.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(threads) = read_dumps(dumps, m.pid)? {
            return Ok(threads);
        }
        if Instant::now() > deadline {
            bail!("no callgrind dump of {} (pid {}) after 60 s", m.name, m.pid);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn callgrind_control(option: &str, pid: u32) -> Result<()> {
    let out = Command::new("callgrind_control")
        .arg(option)
        .arg(pid.to_string())
        .output()
        .context("cannot run callgrind_control (valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {option} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The dump files of `pid` (`callgrind.<pid>.<part>-<thread>`).
fn dump_files(dir: &Path, pid: u32) -> Result<Vec<PathBuf>> {
    let prefix = format!("callgrind.{pid}.");
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix));
        if named {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn remove_dumps(dir: &Path, pid: u32) -> Result<()> {
    for file in dump_files(dir, pid)? {
        fs::remove_file(&file).with_context(|| format!("cannot remove {}", file.display()))?;
    }
    Ok(())
}

/// Each thread's total, in thread order, once every file of the dump has its `totals:` line.
fn read_dumps(dir: &Path, pid: u32) -> Result<Option<Vec<u64>>> {
    let files = dump_files(dir, pid)?;
    if files.is_empty() {
        return Ok(None);
    }
    let mut threads = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap_or_default();
        match totals(&text) {
            Some(t) => threads.push(t),
            None => return Ok(None),
        }
    }
    Ok(Some(threads))
}

/// The `totals:` line of a callgrind dump (its last line: the file is whole once it is there).
fn totals(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

impl InstructionFigures {
    pub fn render(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Instructions per request (`valgrind --tool=callgrind`, Envoy `--concurrency {ENVOY_CONCURRENCY}`)\n\n\
             Bare Envoy, the floors (as in the overhead table) and tokenrouter (the `tr` \
             configuration){}, each under callgrind; {} requests one after the other on one \
             keep-alive connection per candidate and round, after {WARM_UP_REQUESTS} unmeasured \
             ones; the instructions each Envoy thread executed meanwhile ÷ the requests. \
             Instructions are not time (no cache misses, no kernel, no waiting), but they repeat \
             within a fraction of a percent between rounds, so a small change of the filter shows \
             here where the timed runs cannot resolve it. {} round(s); median (min–max).\n\n\
             | candidate | Envoy worker, instructions/request | ÷ bare | over bare | main thread | other threads |\n\
             | --- | --- | --- | --- | --- | --- |",
            if self.rows.iter().any(|r| r.name.starts_with(COMPARE_NAME)) {
                " and other builds of the filter (`--compare-wasm`, `tr (compare)`) in front \
                 of the same control plane"
            } else {
                ""
            },
            self.requests,
            self.rounds,
        );
        let Some(bare) = self.rows.first() else {
            return;
        };
        for row in &self.rows {
            let is_bare = std::ptr::eq(row, bare);
            let dash = |text: String| if is_bare { "—".to_string() } else { text };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                row.name,
                stat_text(Stat::of(&row.worker), 0, ""),
                dash(stat_text(
                    per_round(&row.worker, &bare.worker, |x, b| x / b),
                    2,
                    " ×"
                )),
                dash(stat_text(
                    per_round(&row.worker, &bare.worker, |x, b| x - b),
                    0,
                    ""
                )),
                stat_text(Stat::of(&row.main), 0, ""),
                stat_text(Stat::of(&row.other), 0, ""),
            );
        }
        let Some(tr) = self.rows.iter().find(|r| r.name == "tr") else {
            return;
        };
        for compare in self
            .rows
            .iter()
            .filter(|r| r.name.starts_with(COMPARE_NAME))
        {
            let _ = writeln!(
                md,
                "\n`tr` ÷ `{}`, Envoy worker, per round: {}.",
                compare.name,
                stat_text(
                    per_round(&tr.worker, &compare.worker, |x, c| x / c),
                    4,
                    " ×"
                )
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_reads_the_dump_s_last_line() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\npid: 7\nthread: 7\n\
                    events: Ir\nfl=(1) ???\nfn=(1) 0x0000\n0 12\nsummary: 335072672\n\n\
                    totals: 335072672\n";
        assert_eq!(totals(dump), Some(335_072_672));
        assert_eq!(totals("version: 1\nevents: Ir\nfn=(1) x\n0 3\n"), None);
    }
}
