//! Statistics over rounds and the BENCHMARKS.md renderer.
//!
//! Every figure is a median over rounds with its min–max. Derived figures (added latency, ratios)
//! are computed per round first, from the candidates measured in that round, and then reduced,
//! so that a noisy round moves numerator and denominator together.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::time::Duration;

use super::admin::Seeded;
use super::{Plan, PropagationTrial};

/// The benchmark's candidates, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Candidate {
    Direct,
    Bare,
    Tr,
    TrLarge,
    LiteLlm,
}

impl Candidate {
    pub fn name(self) -> &'static str {
        match self {
            Candidate::Direct => "direct",
            Candidate::Bare => "bare",
            Candidate::Tr => "tr",
            Candidate::TrLarge => "tr-large",
            Candidate::LiteLlm => "litellm",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Candidate::Direct => "direct to the fake provider",
            Candidate::Bare => "bare Envoy (no filter)",
            Candidate::Tr => {
                "tokenrouter (Envoy + filter + control plane, 100 keys, 10 firewall rules)"
            }
            Candidate::TrLarge => "tokenrouter, large key set",
            Candidate::LiteLlm => "LiteLLM proxy (1 worker)",
        }
    }
}

/// What a sample measures. Latencies in µs, rates in req/s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Latency1P50,
    Latency1P99,
    FixedP50,
    FixedP99,
    FixedAchievedRps,
    Saturated1Rps,
    Saturated2Rps,
    TtfbP50,
    TtlbP50,
}

/// Median, min, max.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Stat {
            median: percentile(sorted.clone(), 50.0),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// One step of the firewall scaling figure: p50/p99 at one connection, one value per round.
#[derive(Clone, Debug, Default)]
pub struct FirewallStep {
    pub rules: usize,
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
}

/// Percentile by linear interpolation between closest ranks.
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (rank - lo as f64)
}

/// `test <name> ... bench: <n> ns/iter (+/- <d>)` lines of criterion's bencher format.
pub fn parse_bencher(text: &str) -> Vec<(String, f64, f64)> {
    let number = |s: &str| s.replace(',', "").parse::<f64>().ok();
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("test ")?;
            let (name, rest) = rest.split_once(" ... bench:")?;
            let (ns, rest) = rest.trim().split_once(" ns/iter")?;
            let spread = rest
                .trim()
                .trim_start_matches("(+/-")
                .trim_end_matches(')')
                .trim();
            Some((
                name.trim().to_string(),
                number(ns)?,
                number(spread).unwrap_or(0.0),
            ))
        })
        .collect()
}

/// Everything one run measured, and how to show it.
pub struct Report {
    pub plan: Plan,
    samples: BTreeMap<(Metric, Candidate), Vec<f64>>,
    pub versions: Vec<(String, String)>,
    pub machine: Vec<(String, String)>,
    pub criterion: Vec<(String, f64, f64)>,
    pub seeding: Vec<(String, Seeded)>,
    /// Scaling figures whose feature does not exist yet: (what, why).
    pub unavailable: Vec<(String, String)>,
    /// Why LiteLLM was not measured, if it was not.
    pub litellm_missing: Option<String>,
    pub propagation: Vec<(String, Vec<PropagationTrial>)>,
    /// Latency at one connection against the number of enabled firewall rules (0 first).
    pub firewall_scaling: Vec<FirewallStep>,
    /// (process, VmRSS in KiB).
    pub memory: Vec<(String, u64)>,
    pub commands: Vec<String>,
    pub load_before: String,
    pub load_after: String,
    pub elapsed: Duration,
    /// Hand-written analysis that holds across runs (profiles and their conclusions), read
    /// from `xtask/src/bench/findings.md` when the report is written.
    pub findings: String,
}

impl Report {
    pub fn new(plan: Plan) -> Report {
        Report {
            plan,
            samples: BTreeMap::new(),
            versions: Vec::new(),
            machine: Vec::new(),
            criterion: Vec::new(),
            seeding: Vec::new(),
            unavailable: Vec::new(),
            litellm_missing: None,
            propagation: Vec::new(),
            firewall_scaling: Vec::new(),
            memory: Vec::new(),
            commands: Vec::new(),
            load_before: String::new(),
            load_after: String::new(),
            elapsed: Duration::ZERO,
            findings: String::new(),
        }
    }

    pub fn add(&mut self, metric: Metric, candidate: Candidate, value: f64) {
        self.samples
            .entry((metric, candidate))
            .or_default()
            .push(value);
    }

    fn values(&self, metric: Metric, candidate: Candidate) -> &[f64] {
        self.samples
            .get(&(metric, candidate))
            .map_or(&[], Vec::as_slice)
    }

    fn stat(&self, metric: Metric, candidate: Candidate) -> Option<Stat> {
        Stat::of(self.values(metric, candidate))
    }

    /// Per round `f(a, b)` of two candidates' samples, reduced to a [`Stat`].
    fn paired(
        &self,
        metric: Metric,
        a: Candidate,
        b: Candidate,
        f: impl Fn(f64, f64) -> f64,
    ) -> Option<Stat> {
        let (va, vb) = (self.values(metric, a), self.values(metric, b));
        if va.len() != vb.len() {
            return None;
        }
        let per_round: Vec<f64> = va.iter().zip(vb).map(|(x, y)| f(*x, *y)).collect();
        Stat::of(&per_round)
    }

    /// Latency `candidate` adds over the direct path.
    fn added(&self, metric: Metric, candidate: Candidate) -> Option<Stat> {
        self.paired(metric, candidate, Candidate::Direct, |c, d| c - d)
    }

    fn ratio(&self, metric: Metric, a: Candidate, b: Candidate) -> Option<Stat> {
        self.paired(metric, a, b, |x, y| x / y)
    }

    /// Latency `candidate` adds over direct, as a multiple of what bare Envoy adds, per round.
    fn added_over_bare(&self, metric: Metric, candidate: Candidate) -> Option<Stat> {
        let (c, bare, direct) = (
            self.values(metric, candidate),
            self.values(metric, Candidate::Bare),
            self.values(metric, Candidate::Direct),
        );
        if c.len() != bare.len() || bare.len() != direct.len() {
            return None;
        }
        let per_round: Vec<f64> = (0..c.len())
            .map(|i| (c[i] - direct[i]) / (bare[i] - direct[i]))
            .collect();
        Stat::of(&per_round)
    }

    /// The filter's own added latency over bare Envoy's, per round:
    /// (tr − bare) / (bare − direct).
    fn filter_share(&self, metric: Metric) -> Option<Stat> {
        let (tr, bare, direct) = (
            self.values(metric, Candidate::Tr),
            self.values(metric, Candidate::Bare),
            self.values(metric, Candidate::Direct),
        );
        if tr.len() != bare.len() || bare.len() != direct.len() {
            return None;
        }
        let per_round: Vec<f64> = (0..tr.len())
            .map(|i| (tr[i] - bare[i]) / (bare[i] - direct[i]))
            .collect();
        Stat::of(&per_round)
    }

    fn large_keys_reached(&self) -> Option<usize> {
        self.seeding
            .iter()
            .find(|(name, _)| name == "large")
            .map(|(_, s)| s.count)
    }

    pub fn render(&self) -> String {
        let mut md = String::new();
        self.render_intro(&mut md);
        self.render_targets(&mut md);
        self.render_latency(&mut md);
        self.render_throughput(&mut md);
        self.render_streaming(&mut md);
        self.render_scaling(&mut md);
        self.render_propagation(&mut md);
        self.render_memory(&mut md);
        self.render_criterion(&mut md);
        md.push_str(&self.findings);
        self.render_setup(&mut md);
        md
    }

    fn render_intro(&self, md: &mut String) {
        let mode = if self.plan.quick {
            "**quick run** (`--quick`: 1 round, short steps; indicative only)"
        } else {
            "full run"
        };
        let _ = writeln!(
            md,
            "# Benchmarks\n\n\
             Written by `cargo xtask bench` ({mode}, {} round(s), {:.0} s). Do not edit by hand: \
             rerun it. Machine, versions and the exact commands are at the end.\n\n\
             **Absolute numbers move between machines and with whatever else runs on the \
             machine; the ratios between candidates measured in the same round are what \
             matter.** Every step runs every candidate in one round, in an order that rotates \
             between rounds; figures are the median over rounds, with min–max in brackets. \
             Added latency is the candidate minus `direct` in the same round. Load average \
             (1/5/15 min) before the run: {}; after: {}.\n\n\
             Candidates, all in front of the same fake provider (in-process hyper server, \
             non-streaming answer {} bytes of OpenAI JSON; streaming {} SSE chunks + usage chunk \
             + `[DONE]`):\n",
            self.plan.rounds,
            self.elapsed.as_secs_f64(),
            self.load_before,
            self.load_after,
            super::fake::COMPLETION.len(),
            super::fake::STREAM_CHUNKS,
        );
        for c in [
            Candidate::Direct,
            Candidate::Bare,
            Candidate::Tr,
            Candidate::TrLarge,
            Candidate::LiteLlm,
        ] {
            let note = match c {
                Candidate::Direct => "the load generator straight to the fake".to_string(),
                Candidate::Bare => {
                    "the same Envoy binary, static route to the fake, only the router filter"
                        .to_string()
                }
                Candidate::Tr => "Envoy rendered by `tokenrouter envoy-bootstrap`, `tokenrouter serve` (release), 100 keys, 10 firewall rules (prompt scope, matching nothing), provider `bench` (`openai-compatible`) → the fake, model `bench/gpt-4o-mini`; auth, routing, usage logging to the control plane all on".to_string(),
                Candidate::TrLarge => format!(
                    "the same with {} keys (its own control plane); scaling figure only",
                    self.large_keys_reached().unwrap_or(self.plan.large_keys)
                ),
                Candidate::LiteLlm => match &self.litellm_missing {
                    Some(reason) => format!("**not measured**: {reason}"),
                    None => "`litellm --num_workers 1`, the fake as an `openai/` model with `api_base`".to_string(),
                },
            };
            let _ = writeln!(md, "- `{}`: {} — {note}", c.name(), c.label());
        }
        md.push('\n');
    }

    fn render_targets(&self, md: &mut String) {
        md.push_str("## Targets (issue #9) and where we stand\n\n| target | measured | status |\n| --- | --- | --- |\n");
        let row = |md: &mut String, target: &str, measured: String, status: &str| {
            let _ = writeln!(md, "| {target} | {measured} | {status} |");
        };
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        match self.filter_share(Metric::Latency1P50) {
            Some(s) => row(
                md,
                "filter's added p50 ≤ 0.5 × bare Envoy's added latency (1 connection)",
                format!(
                    "{} × ({}–{}); filter adds {} µs, Envoy adds {} µs",
                    f2(s.median),
                    f2(s.min),
                    f2(s.max),
                    opt_us(self.paired(
                        Metric::Latency1P50,
                        Candidate::Tr,
                        Candidate::Bare,
                        |a, b| a - b
                    )),
                    opt_us(self.added(Metric::Latency1P50, Candidate::Bare)),
                ),
                verdict(s.median <= 0.5),
            ),
            None => row(
                md,
                "filter's added p50 ≤ 0.5 × bare Envoy's",
                "not measured".into(),
                "—",
            ),
        }
        for (metric, workers) in [(Metric::Saturated1Rps, 1), (Metric::Saturated2Rps, 2)] {
            if let Some(s) = self.ratio(metric, Candidate::Tr, Candidate::Bare) {
                row(
                    md,
                    &format!(
                        "throughput ≥ 0.6 × bare Envoy ({workers} worker{})",
                        plural(workers)
                    ),
                    format!("{} × ({}–{})", f2(s.median), f2(s.min), f2(s.max)),
                    verdict(s.median >= 0.6),
                );
            }
        }
        match self.ratio(Metric::Saturated1Rps, Candidate::Tr, Candidate::LiteLlm) {
            Some(s) => row(
                md,
                "throughput ≥ 50 × LiteLLM (1 worker each)",
                format!("{} × ({}–{})", f1(s.median), f1(s.min), f1(s.max)),
                verdict(s.median >= 50.0),
            ),
            None => row(
                md,
                "throughput ≥ 50 × LiteLLM",
                format!(
                    "LiteLLM not measured: {}",
                    self.litellm_missing.as_deref().unwrap_or("—")
                ),
                "not measured",
            ),
        }
        if let Some(s) = self.ratio(Metric::Latency1P50, Candidate::TrLarge, Candidate::Tr) {
            let reached = self.large_keys_reached().unwrap_or(0);
            let partial = if reached < self.plan.large_keys {
                format!(
                    " (only {reached} of {} keys could be created in the time budget: see Scaling)",
                    self.plan.large_keys
                )
            } else {
                String::new()
            };
            row(
                md,
                &format!("{reached} keys ≤ 1.2 × the 100-key config (p50, 1 connection)"),
                format!("{} × ({}–{}){partial}", f2(s.median), f2(s.min), f2(s.max)),
                if reached < self.plan.large_keys {
                    "partly measured"
                } else {
                    verdict(s.median <= 1.2)
                },
            );
        }
        if let Some(s) = self.firewall_ratio(1000, 10) {
            row(
                md,
                "1 000 firewall rules ≤ 1.2 × 10 firewall rules (p50, 1 connection)",
                format!("{} × ({}–{})", f2(s.median), f2(s.min), f2(s.max)),
                verdict(s.median <= 1.2),
            );
        }
        for (what, reason) in &self.unavailable {
            row(
                md,
                &format!("1 000 {what} ≤ 1.2 × 10 {what}"),
                format!("not yet available: {reason}"),
                "not measured",
            );
        }
        let worst = self
            .propagation
            .iter()
            .flat_map(|(_, trials)| trials.iter().map(|t| t.all_workers_ms))
            .fold(f64::NAN, f64::max);
        if !worst.is_nan() {
            let status = if worst <= 100.0 {
                "met (and the 100 ms aim)"
            } else if worst < 1000.0 {
                "met (aim of 100 ms missed)"
            } else {
                "**missed**"
            };
            row(
                md,
                "key revoke enforced on every worker < 1 s (aim 100 ms)",
                format!("worst of all trials {} ms", f1(worst)),
                status,
            );
        }
        md.push('\n');
    }

    fn render_latency(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Latency (non-streaming chat completion, Envoy `--concurrency 1`)\n\n\
             ### One connection, back to back ({} s per candidate per round)\n",
            self.plan.latency_duration.as_secs_f64()
        );
        self.latency_table(md, Metric::Latency1P50, Metric::Latency1P99, true);
        let _ = writeln!(
            md,
            "### Fixed rate: {} req/s over 4 connections ({} s per candidate per round)\n\n\
             A rate every candidate sustains (LiteLLM with one worker saturated at {} req/s in \
             this run, see below); oha's latency correction is on, so queueing delay counts.\n",
            self.plan.fixed_rate,
            self.plan.fixed_duration.as_secs_f64(),
            self.stat(Metric::Saturated1Rps, Candidate::LiteLlm)
                .map_or("(not measured)".into(), |s| format!("{:.0}", s.median)),
        );
        self.latency_table(md, Metric::FixedP50, Metric::FixedP99, false);
        if let Some(s) = self.filter_share(Metric::FixedP50) {
            let _ = writeln!(
                md,
                "At the fixed rate the filter's added p50 is {} × bare Envoy's added p50 ({}–{}).\n",
                f2(s.median),
                f2(s.min),
                f2(s.max)
            );
        }
    }

    fn latency_table(&self, md: &mut String, p50: Metric, p99: Metric, with_large: bool) {
        md.push_str("| candidate | p50 µs | p99 µs | added p50 µs | added p99 µs | added p50 vs bare Envoy's |\n| --- | --- | --- | --- | --- | --- |\n");
        for c in self.present(p50) {
            if c == Candidate::TrLarge && !with_large {
                continue;
            }
            let share = if c == Candidate::Direct {
                None
            } else {
                self.added_over_bare(p50, c)
            }
            .map_or("—".into(), |s| format!("{} ×", f2(s.median)));
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {share} |",
                c.name(),
                stat_us(self.stat(p50, c)),
                stat_us(self.stat(p99, c)),
                if c == Candidate::Direct {
                    "—".into()
                } else {
                    stat_us(self.added(p50, c))
                },
                if c == Candidate::Direct {
                    "—".into()
                } else {
                    stat_us(self.added(p99, c))
                },
            );
        }
        md.push('\n');
    }

    fn present(&self, metric: Metric) -> Vec<Candidate> {
        [
            Candidate::Direct,
            Candidate::Bare,
            Candidate::Tr,
            Candidate::TrLarge,
            Candidate::LiteLlm,
        ]
        .into_iter()
        .filter(|c| !self.values(metric, *c).is_empty())
        .collect()
    }

    fn render_throughput(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Saturated throughput ({} connections, {} s per candidate per round)\n\n\
             The load generator, the fake provider and the candidate share the machine's cores, \
             so `direct` is the ceiling of this setup, not of the fake alone.\n\n\
             | candidate | 1 Envoy worker, req/s | vs bare | 2 Envoy workers, req/s | vs bare | vs LiteLLM (1 worker) |\n| --- | --- | --- | --- | --- | --- |",
            self.plan.saturation_connections,
            self.plan.saturation_duration.as_secs_f64()
        );
        for c in self.present(Metric::Saturated1Rps) {
            let vs_bare = |m| {
                if c == Candidate::Bare || c == Candidate::Direct {
                    "—".to_string()
                } else {
                    self.ratio(m, c, Candidate::Bare)
                        .map_or("—".into(), |s| format!("{} ×", f2(s.median)))
                }
            };
            let vs_litellm = if c == Candidate::LiteLlm {
                "—".to_string()
            } else {
                self.ratio(Metric::Saturated1Rps, c, Candidate::LiteLlm)
                    .map_or("—".into(), |s| format!("{} ×", f1(s.median)))
            };
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {vs_litellm} |",
                c.name(),
                stat_rps(self.stat(Metric::Saturated1Rps, c)),
                vs_bare(Metric::Saturated1Rps),
                stat_rps(self.stat(Metric::Saturated2Rps, c)),
                vs_bare(Metric::Saturated2Rps),
            );
        }
        md.push('\n');
    }

    fn render_streaming(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Streaming ({} sequential streamed requests per candidate per round, one keep-alive connection, xtask's hyper client)\n\n\
             Time to first byte = first non-empty body frame; time to last byte = end of the body. \
             Median per round, then median over rounds.\n\n\
             | candidate | TTFB p50 µs | added TTFB µs | TTLB p50 µs | added TTLB µs |\n| --- | --- | --- | --- | --- |",
            self.plan.stream_requests
        );
        for c in self.present(Metric::TtfbP50) {
            let added = |m| {
                if c == Candidate::Direct {
                    "—".to_string()
                } else {
                    stat_us(self.added(m, c))
                }
            };
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} |",
                c.name(),
                stat_us(self.stat(Metric::TtfbP50, c)),
                added(Metric::TtfbP50),
                stat_us(self.stat(Metric::TtlbP50, c)),
                added(Metric::TtlbP50),
            );
        }
        md.push('\n');
    }

    fn render_scaling(&self, md: &mut String) {
        md.push_str("## Scaling (Envoy `--concurrency 1`, same round, small vs large config)\n\n| scaling | small | large | p50 (1 connection) large ÷ small | saturated req/s large ÷ small |\n| --- | --- | --- | --- | --- |\n");
        let reached = self.large_keys_reached().unwrap_or(0);
        let lat = self.ratio(Metric::Latency1P50, Candidate::TrLarge, Candidate::Tr);
        let rps = self.ratio(Metric::Saturated1Rps, Candidate::TrLarge, Candidate::Tr);
        let _ = writeln!(
            md,
            "| keys | 100 | {reached} | {} | {} |",
            lat.map_or("—".into(), |s| format!(
                "{} × ({}–{})",
                f2(s.median),
                f2(s.min),
                f2(s.max)
            )),
            rps.map_or("—".into(), |s| format!(
                "{} × ({}–{})",
                f2(s.median),
                f2(s.min),
                f2(s.max)
            )),
        );
        if let Some(s) = self.firewall_ratio(1000, 10) {
            let _ = writeln!(
                md,
                "| firewall rules | 10 | 1 000 | {} × ({}–{}) | — (see below) |",
                f2(s.median),
                f2(s.min),
                f2(s.max)
            );
        }
        for (what, reason) in &self.unavailable {
            let _ = writeln!(
                md,
                "| {what} | 10 | 1 000 | not yet available ({reason}) | — |"
            );
        }
        self.render_firewall_scaling(md);
        md.push_str(
            "\nKeys are created through the control plane's gRPC Admin API (`CreateKey`, 4 in \
             flight), never in the database. How long that took:\n\n\
             | config | keys created | wall time s | keys/s (average) | `CreateKey` retried after `Internal` (database is locked) |\n| --- | --- | --- | --- | --- |\n",
        );
        for (name, s) in &self.seeding {
            let secs = s.elapsed.as_secs_f64();
            let _ = writeln!(
                md,
                "| {name} | {} | {:.1} | {:.0} | {} |",
                s.count,
                secs,
                s.count as f64 / secs.max(1e-9),
                s.retried
            );
        }
        if reached < self.plan.large_keys {
            let _ = writeln!(
                md,
                "\n**The large key set stopped at {reached} of {} keys**: the creation budget \
                 ({:.0} s) ran out. See the findings below for why key creation slows down as \
                 the key count grows.",
                self.plan.large_keys,
                self.plan.keys_budget.as_secs_f64()
            );
        }
        md.push('\n');
    }

    /// The section a `--only` run merges into an existing report: what it measured, with
    /// headings one level down and a note on where the rest of the report comes from.
    pub fn render_partial(&self, only: &str) -> String {
        let date = self
            .machine
            .iter()
            .find(|(name, _)| name == "date")
            .map_or("", |(_, value)| value.as_str());
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## Partial run: `cargo xtask bench --only {only}` ({date}, {} round(s){}, {:.0} s)\n\n\
             **The tables in this section come from this later run of only these parts**; every \
             other table in this file is from the full run named at the top and was not \
             re-measured. The machine is shared with other work and noisy, so absolute figures \
             move between runs; load average (1/5/15 min) before this run: {}; after: {}.\n",
            self.plan.rounds,
            if self.plan.quick { ", --quick" } else { "" },
            self.elapsed.as_secs_f64(),
            self.load_before,
            self.load_after,
        );
        let mut body = String::new();
        if self.seeding.is_empty() {
            self.render_firewall_scaling(&mut body);
        } else {
            self.render_scaling(&mut body);
            self.render_propagation(&mut body);
        }
        for line in body.lines() {
            if line.starts_with('#') {
                md.push('#');
            }
            md.push_str(line);
            md.push('\n');
        }
        md
    }

    /// p50 with `a` rules ÷ p50 with `b` rules, round by round.
    fn firewall_ratio(&self, a: usize, b: usize) -> Option<Stat> {
        let step = |n| self.firewall_scaling.iter().find(|s| s.rules == n);
        let (a, b) = (step(a)?, step(b)?);
        let ratios: Vec<f64> = a.p50_us.iter().zip(&b.p50_us).map(|(a, b)| a / b).collect();
        Stat::of(&ratios)
    }

    /// The firewall scaling table (nothing when it was not measured).
    pub fn render_firewall_scaling(&self, md: &mut String) {
        if self.firewall_scaling.is_empty() {
            return;
        }
        md.push_str(
            "\n### Firewall rules: latency against the number of enabled rules\n\n\
             One tokenrouter Envoy (`--concurrency 1`) and its own control plane (one key); \
             rules are added through `CreateFirewallRule` between steps (prompt scope, a mix of \
             substring and regex rules, `firewall_rule` in `xtask/src/bench/admin.rs`, none of \
             which matches the request, so every rule is scanned and none acts). Each step waits \
             until a key created after its rules authenticates (so the rules are live), then \
             measures one connection back to back; the rounds of a step run one after another.\n\n\
             | enabled rules | p50 µs | p99 µs | p50 ÷ 0 rules |\n| --- | --- | --- | --- |\n",
        );
        for step in &self.firewall_scaling {
            let ratio = self.firewall_ratio(step.rules, 0).map_or("—".into(), |s| {
                format!("{} × ({}–{})", f2(s.median), f2(s.min), f2(s.max))
            });
            let _ = writeln!(
                md,
                "| {} | {} | {} | {ratio} |",
                step.rules,
                stat_us(Stat::of(&step.p50_us)),
                stat_us(Stat::of(&step.p99_us)),
            );
        }
        if let Some(s) = self.firewall_ratio(1000, 10) {
            let _ = writeln!(
                md,
                "
1 000 rules ÷ 10 rules (p50): {} × ({}–{}); target ≤ 1.2 ×: {}.",
                f2(s.median),
                f2(s.min),
                f2(s.max),
                if s.median <= 1.2 { "met" } else { "**missed**" }
            );
        }
    }

    fn render_propagation(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Propagation: key revoke → first 401 on every Envoy worker (`--concurrency 2`)\n\n\
             {} keep-alive connections poll with the key (back to back); the clock starts when \
             `RevokeKey` is sent and stops at the last connection's first 401. Envoy's \
             per-worker listener stats show how the polling connections were spread over the \
             workers (all workers must hold at least one).\n\n\
             | config | trials | all workers: median ms | min–max ms | `RevokeKey` call: median ms | connections per worker |\n| --- | --- | --- | --- | --- | --- |",
            super::PROPAGATION_CONNECTIONS
        );
        for (name, trials) in &self.propagation {
            let all = Stat::of(&trials.iter().map(|t| t.all_workers_ms).collect::<Vec<_>>());
            let call = Stat::of(&trials.iter().map(|t| t.admin_call_ms).collect::<Vec<_>>());
            let spread: Vec<String> = trials
                .iter()
                .map(|t| format!("{:?}", t.connections_per_worker))
                .collect();
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} |",
                trials.len(),
                all.map_or("—".into(), |s| f1(s.median)),
                all.map_or("—".into(), |s| format!("{}–{}", f1(s.min), f1(s.max))),
                call.map_or("—".into(), |s| f1(s.median)),
                spread.join(" "),
            );
        }
        md.push('\n');
    }

    fn render_memory(&self, md: &mut String) {
        md.push_str("## Memory (VmRSS after the `--concurrency 1` rounds)\n\n| process | RSS MiB | vs bare Envoy |\n| --- | --- | --- |\n");
        let bare = self
            .memory
            .iter()
            .find(|(name, _)| name.starts_with("Envoy, bare"))
            .map(|(_, kib)| *kib as f64);
        for (name, kib) in &self.memory {
            let ratio = match bare {
                Some(b) if name.starts_with("Envoy") && !name.starts_with("Envoy, bare") => {
                    format!("{} ×", f2(*kib as f64 / b))
                }
                _ => "—".into(),
            };
            let _ = writeln!(md, "| {name} | {:.1} | {ratio} |", *kib as f64 / 1024.0);
        }
        md.push('\n');
    }

    fn render_criterion(&self, md: &mut String) {
        md.push_str(
            "## Engine micro-benchmarks (criterion, native, `filter/engine/benches/engine.rs`)\n\n",
        );
        if self.criterion.is_empty() {
            md.push_str("Not run (`--no-criterion`).\n\n");
            return;
        }
        md.push_str("The wasm filter runs the same code under V8, typically a few times slower than native.\n\n| bench | time per call | ± |\n| --- | --- | --- |\n");
        for (name, ns, spread) in &self.criterion {
            let _ = writeln!(md, "| `{name}` | {} | {} |", ns_text(*ns), ns_text(*spread));
        }
        md.push('\n');
    }

    fn render_setup(&self, md: &mut String) {
        md.push_str("## Machine and versions\n\n| | |\n| --- | --- |\n");
        for (k, v) in self.machine.iter().chain(&self.versions) {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let _ = writeln!(
            md,
            "\n## How to run\n\n```sh\n\
             cargo xtask bench            # full run (~15 min on 2 cores), writes BENCHMARKS.md\n\
             cargo xtask bench --quick    # 1 round, short steps, 60 s of key creation: checks the setup\n\
             cargo xtask bench --help     # --rounds, --keys, --keys-budget, --no-litellm, --no-criterion, --out\n\
             cargo xtask bench --only keys,firewall  # re-measure those parts; merged into the report as a labelled section\n\
             ```\n\n\
             It installs what it needs: Envoy (`target/venv`), oha (`cargo install --locked oha \
             --root target/bench-tools`), LiteLLM (`pip install 'litellm[proxy]'` into \
             `target/bench-venv`); builds the filter and `tokenrouter` in release; logs and \
             configs of the run are in `target/bench/run/`. Envoys run with `--concurrency 1` \
             (latency, fixed rate, streaming, saturation, scaling, memory) and then `2` \
             (saturation, propagation). Load commands (address and key differ per candidate; \
             LiteLLM gets model `{}` and no key):\n\n```sh",
            super::LITELLM_MODEL
        );
        for command in &self.commands {
            let _ = writeln!(md, "{command}");
        }
        let _ = writeln!(
            md,
            "cargo bench -p tokenrouter-engine --bench engine -- --output-format bencher\n```"
        );
    }
}

/// The machine's facts: cores, CPU model, memory, date.
pub fn machine(rustc: &str) -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    vec![
        ("date".into(), date),
        ("cores (nproc)".into(), cores.to_string()),
        ("CPU".into(), model),
        ("memory".into(), mem),
        ("rustc".into(), rustc.to_string()),
    ]
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn opt_us(s: Option<Stat>) -> String {
    s.map_or("—".into(), |s| format!("{:.0}", s.median))
}

fn stat_us(s: Option<Stat>) -> String {
    s.map_or("—".into(), |s| {
        format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max)
    })
}

fn stat_rps(s: Option<Stat>) -> String {
    s.map_or("—".into(), |s| {
        format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max)
    })
}

fn ns_text(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencher_lines_are_parsed() {
        let text = "test auth/lookup_100_keys ... bench:         188 ns/iter (+/- 3)\n\
                    noise\n\
                    test usage/sse ... bench:       12,345 ns/iter (+/- 1,002)\n";
        let parsed = parse_bencher(text);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, "auth/lookup_100_keys");
        assert!((parsed[1].1 - 12345.0).abs() < 1e-9);
        assert!((parsed[1].2 - 1002.0).abs() < 1e-9);
    }

    #[test]
    fn stats_and_percentiles() {
        let s = Stat::of(&[3.0, 1.0, 2.0]);
        assert!(
            matches!(s, Some(Stat { median, min, max }) if median == 2.0 && min == 1.0 && max == 3.0)
        );
        assert_eq!(percentile(vec![1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
        assert!(Stat::of(&[]).is_none());
    }
}
