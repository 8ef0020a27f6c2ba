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
use super::admission::AdmissionFigures;
use super::ingest::IngestFigures;
use super::instructions::InstructionFigures;
use super::overhead::OverheadFigures;
use super::profile::ProfileFigures;
use super::soak::SoakFigures;
use super::{Plan, PropagationTrial};

/// The benchmark's candidates, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Candidate {
    Direct,
    Bare,
    Tr,
    /// The same stack as `Tr` (its control plane), with the edge as the native module.
    TrNative,
    TrLarge,
    LiteLlm,
}

impl Candidate {
    pub fn name(self) -> &'static str {
        match self {
            Candidate::Direct => "direct",
            Candidate::Bare => "bare",
            Candidate::Tr => "tr",
            Candidate::TrNative => "tr-native",
            Candidate::TrLarge => "tr-large",
            Candidate::LiteLlm => "litellm",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Candidate::Direct => "direct to the fake provider",
            Candidate::Bare => "bare Envoy (no filter)",
            Candidate::Tr => {
                "tokenrouter (Envoy + filter + control plane, 100 keys, 10 routing rules, 10 firewall rules)"
            }
            Candidate::TrNative => "tokenrouter, the filter as a native Envoy module",
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

/// One step of a rules scaling figure (firewall or routing): p50/p99 at one connection, one
/// value per round.
#[derive(Clone, Debug, Default)]
pub struct RulesStep {
    pub rules: usize,
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
}

/// p50 of the step with `a` rules ÷ p50 of the step with `b` rules, round by round.
fn rules_ratio(steps: &[RulesStep], a: usize, b: usize) -> Option<Stat> {
    let step = |n| steps.iter().find(|s| s.rules == n);
    let (a, b) = (step(a)?, step(b)?);
    let ratios: Vec<f64> = a.p50_us.iter().zip(&b.p50_us).map(|(a, b)| a / b).collect();
    Stat::of(&ratios)
}

/// What the prompt complexity classifier's accuracy test printed, and what its source says
/// about the prices and the hold-out sets.
#[derive(Clone, Debug, Default)]
pub struct ClassifierFigures {
    pub prompts: usize,
    /// Exact tier, share of prompts (0–1).
    pub accuracy: f64,
    /// Within one tier of the label, share of prompts (0–1).
    pub within_one: f64,
    /// Cost saved against always the top model, percent.
    pub cost_saved_pct: f64,
    /// Prompts classified below their label, percent.
    pub underserved_pct: f64,
    /// Task detection accuracy (0–1), when printed.
    pub task_accuracy: Option<f64>,
    /// "simple=… medium=…" label counts, when printed.
    pub per_tier: Option<String>,
    /// Confusion matrix rows (label, counts by classifier tier).
    pub confusion: Vec<(String, Vec<usize>)>,
    /// (tier, $/M input, $/M output, model) as the test's `tier_price` defines them.
    pub prices: Vec<(String, String, String, String)>,
    /// ($/M input, $/M output, model) of "always the top model".
    pub top_price: Option<(String, String, String)>,
    /// The test's doc paragraph on the hold-out sets, and its "n/m exact" scores.
    pub holdout: Option<String>,
    pub holdout_exact: Vec<(usize, usize)>,
    /// Whether the test passed its own thresholds.
    pub passed: bool,
}

/// Reads the classifier test's stdout (`COMPLEXITY: prompts=… accuracy=… within_one=…
/// cost_saved_vs_top=…% underserved=…%` and the lines before it) and its source; `None` without
/// a complete `COMPLEXITY:` line.
pub fn parse_classifier(output: &str, source: &str) -> Option<ClassifierFigures> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("COMPLEXITY:"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_end_matches('%'))
    };
    let number = |name: &str| field(name)?.parse::<f64>().ok();
    let tiers = ["simple", "medium", "complex", "reasoning"];
    let confusion = output
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let tier = words.next().filter(|t| tiers.contains(t))?;
            let counts: Vec<usize> = words.map(|w| w.parse().ok()).collect::<Option<_>>()?;
            (counts.len() == tiers.len()).then(|| (tier.to_string(), counts))
        })
        .collect();
    let mut figures = ClassifierFigures {
        prompts: field("prompts")?.parse().ok()?,
        accuracy: number("accuracy")?,
        within_one: number("within_one")?,
        cost_saved_pct: number("cost_saved_vs_top")?,
        underserved_pct: number("underserved")?,
        task_accuracy: output.lines().find_map(|l| {
            l.trim()
                .strip_prefix("task detection accuracy:")?
                .trim()
                .parse()
                .ok()
        }),
        per_tier: output
            .lines()
            .find_map(|l| l.trim().strip_prefix("per tier (labels):"))
            .map(|t| t.trim().to_string()),
        confusion,
        ..ClassifierFigures::default()
    };
    read_classifier_source(source, &mut figures);
    Some(figures)
}

/// The prices (`Tier::Simple => (0.15, 0.60), // gpt-4o-mini`, `const TOP_PRICE … = (15.0,
/// 75.0);` under a doc line naming the model) and the hold-out paragraph of the test's
/// `//!` docs.
fn read_classifier_source(source: &str, figures: &mut ClassifierFigures) {
    let pair = |s: &str| -> Option<(String, String)> {
        let inner = s.trim().trim_start_matches('(');
        let inner = &inner[..inner.find(')')?];
        let (a, b) = inner.split_once(',')?;
        Some((a.trim().to_string(), b.trim().to_string()))
    };
    let lines: Vec<&str> = source.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Tier::") {
            let Some((tier, rest)) = rest.split_once("=>") else {
                continue;
            };
            let (tuple, model) = rest.split_once("//").unwrap_or((rest, ""));
            if let Some((input, output)) = pair(tuple) {
                figures.prices.push((
                    tier.trim().to_ascii_lowercase(),
                    input,
                    output,
                    model.trim().to_string(),
                ));
            }
        } else if line.starts_with("const TOP_PRICE") {
            let model = i
                .checked_sub(1)
                .and_then(|j| lines[j].rsplit_once(':'))
                .map(|(_, m)| m.trim().trim_end_matches('.').to_string())
                .unwrap_or_default();
            if let Some((input, output)) = line.split_once('=').and_then(|(_, v)| pair(v)) {
                figures.top_price = Some((input, output, model));
            }
        }
    }
    let docs: Vec<&str> = lines
        .iter()
        .map_while(|l| l.strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let holdout = docs
        .split(|l| l.is_empty())
        .map(|p| p.join(" "))
        .find(|p| p.contains("hold-out"));
    if let Some(p) = &holdout {
        let words: Vec<&str> = p.split_whitespace().collect();
        for w in words.windows(2) {
            if w[1].trim_end_matches([',', '.', ';']) != "exact" {
                continue;
            }
            if let Some((n, m)) = w[0].split_once('/') {
                if let (Ok(n), Ok(m)) = (n.parse(), m.parse()) {
                    figures.holdout_exact.push((n, m));
                }
            }
        }
    }
    figures.holdout = holdout;
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
    /// Why LiteLLM was not measured, if it was not.
    pub litellm_missing: Option<String>,
    pub propagation: Vec<(String, Vec<PropagationTrial>)>,
    /// Latency at one connection against the number of enabled firewall rules (0 first).
    pub firewall_scaling: Vec<RulesStep>,
    /// Latency at one connection against the number of enabled routing rules (the reference
    /// configuration first), in interleaved rounds.
    pub routing_scaling: Vec<RulesStep>,
    /// The prompt complexity classifier's accuracy test, when it ran.
    pub classifier: Option<ClassifierFigures>,
    /// Usage records/s through FilterSync into SQLite against the gateway's throughput.
    pub ingest: Option<IngestFigures>,
    /// Latency and throughput of keys the control plane admits against one it never asks.
    pub admission: Option<AdmissionFigures>,
    pub overhead: Option<OverheadFigures>,
    pub instructions: Option<InstructionFigures>,
    /// The filter's instructions by function (`--only profile` only).
    pub profile: Option<ProfileFigures>,
    /// The soak (`--only soak` only).
    pub soak: Option<SoakFigures>,
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
            litellm_missing: None,
            propagation: Vec::new(),
            firewall_scaling: Vec::new(),
            routing_scaling: Vec::new(),
            classifier: None,
            ingest: None,
            admission: None,
            overhead: None,
            instructions: None,
            profile: None,
            soak: None,
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

    pub fn values(&self, metric: Metric, candidate: Candidate) -> &[f64] {
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
        self.over_bare_added(metric, candidate, Candidate::Direct)
    }

    /// The filter's own added latency over bare Envoy's, per round:
    /// (candidate − bare) / (bare − direct).
    fn filter_share(&self, metric: Metric, candidate: Candidate) -> Option<Stat> {
        self.over_bare_added(metric, candidate, Candidate::Bare)
    }

    /// (candidate − `from`) / (bare − direct), per round.
    fn over_bare_added(
        &self,
        metric: Metric,
        candidate: Candidate,
        from: Candidate,
    ) -> Option<Stat> {
        let (c, from, bare, direct) = (
            self.values(metric, candidate),
            self.values(metric, from),
            self.values(metric, Candidate::Bare),
            self.values(metric, Candidate::Direct),
        );
        let rounds = c.len();
        if [from.len(), bare.len(), direct.len()] != [rounds; 3] {
            return None;
        }
        let per_round: Vec<f64> = (0..rounds)
            .map(|i| (c[i] - from[i]) / (bare[i] - direct[i]))
            .collect();
        Stat::of(&per_round)
    }

    /// The forms of the filter this run measured, as the targets name them.
    fn forms(&self) -> Vec<(Candidate, &'static str)> {
        [
            (Candidate::Tr, "`tr` (wasm filter)"),
            (Candidate::TrNative, "`tr-native` (native module)"),
        ]
        .into_iter()
        .filter(|(c, _)| !self.values(Metric::Latency1P50, *c).is_empty())
        .collect()
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
        if let Some(admission) = &self.admission {
            admission.render(&mut md);
        }
        if let Some(ingest) = &self.ingest {
            ingest.render(&mut md, &self.machine);
        }
        if let Some(soak) = &self.soak {
            soak.render(&mut md);
        }
        self.render_memory(&mut md);
        self.render_criterion(&mut md);
        self.render_classifier(&mut md);
        md.push_str(self.findings.trim_end());
        md.push_str("\n\n");
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
            Candidate::TrNative,
            Candidate::TrLarge,
            Candidate::LiteLlm,
        ] {
            let note = match c {
                Candidate::Direct => "the load generator straight to the fake".to_string(),
                Candidate::Bare => {
                    "the same Envoy binary, static route to the fake, only the router filter"
                        .to_string()
                }
                Candidate::Tr => "Envoy rendered by `tokenrouter envoy-bootstrap`, `tokenrouter serve` (release), 100 keys, 10 routing rules and 10 firewall rules (prompt scope), none matching the request, provider `bench` (`openai-compatible`) → the fake, model `bench/gpt-4o-mini`; auth, routing, usage logging to the control plane all on".to_string(),
                Candidate::TrNative => "the same Envoy bootstrap and control plane as `tr`, rendered by `tokenrouter envoy-bootstrap --native`: the same filter built as an Envoy dynamic module (`filter/native`, loaded into Envoy's process) in place of the wasm VM".to_string(),
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
        let forms = self.forms();
        if forms.is_empty() {
            row(
                md,
                "filter's added p50 ≤ 0.5 × bare Envoy's",
                "not measured".into(),
                "—",
            );
        }
        for &(form, which) in &forms {
            if let Some(s) = self.filter_share(Metric::Latency1P50, form) {
                row(
                    md,
                    &format!(
                        "filter's added p50 ≤ 0.5 × bare Envoy's added latency (1 connection), {which}"
                    ),
                    format!(
                        "{} × ({}–{}); filter adds {} µs, Envoy adds {} µs",
                        f2(s.median),
                        f2(s.min),
                        f2(s.max),
                        opt_us(self.paired(Metric::Latency1P50, form, Candidate::Bare, |a, b| a
                            - b)),
                        opt_us(self.added(Metric::Latency1P50, Candidate::Bare)),
                    ),
                    verdict(s.median <= 0.5),
                );
            }
        }
        for &(form, which) in &forms {
            for (metric, workers) in [(Metric::Saturated1Rps, 1), (Metric::Saturated2Rps, 2)] {
                if let Some(s) = self.ratio(metric, form, Candidate::Bare) {
                    row(
                        md,
                        &format!(
                            "throughput ≥ 0.6 × bare Envoy ({workers} worker{}), {which}",
                            plural(workers)
                        ),
                        format!("{} × ({}–{})", f2(s.median), f2(s.min), f2(s.max)),
                        verdict(s.median >= 0.6),
                    );
                }
            }
        }
        for &(form, which) in &forms {
            match self.ratio(Metric::Saturated1Rps, form, Candidate::LiteLlm) {
                Some(s) => row(
                    md,
                    &format!("throughput ≥ 50 × LiteLLM (1 worker each), {which}"),
                    format!("{} × ({}–{})", f1(s.median), f1(s.min), f1(s.max)),
                    verdict(s.median >= 50.0),
                ),
                None => row(
                    md,
                    &format!("throughput ≥ 50 × LiteLLM, {which}"),
                    format!(
                        "LiteLLM not measured: {}",
                        self.litellm_missing.as_deref().unwrap_or("—")
                    ),
                    "not measured",
                ),
            }
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
        for (_, line) in self.rules_target_rows("") {
            md.push_str(&line);
            md.push('\n');
        }
        if let Some(ingest) = &self.ingest {
            md.push_str(&ingest.target_row("").1);
            md.push('\n');
        }
        if let Some(soak) = &self.soak {
            md.push_str(&soak.target_row("").1);
            md.push('\n');
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
        for (form, which) in self.forms() {
            if let Some(s) = self.filter_share(Metric::FixedP50, form) {
                let _ = writeln!(
                    md,
                    "At the fixed rate the filter's added p50 ({which}) is {} × bare Envoy's added p50 ({}–{}).\n",
                    f2(s.median),
                    f2(s.min),
                    f2(s.max)
                );
            }
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
            Candidate::TrNative,
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
        for (what, steps) in [
            ("routing rules", &self.routing_scaling),
            ("firewall rules", &self.firewall_scaling),
        ] {
            if let Some(s) = rules_ratio(steps, 1000, 10) {
                let _ = writeln!(
                    md,
                    "| {what} | 10 | 1 000 | {} × ({}–{}) | — (see below) |",
                    f2(s.median),
                    f2(s.min),
                    f2(s.max)
                );
            }
        }
        self.render_routing_scaling(md);
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
        let fact = |fact: &str| {
            self.machine
                .iter()
                .find(|(name, _)| name == fact)
                .map_or("", |(_, value)| value.as_str())
        };
        // Partial runs may come from another machine than the full run: they name their CPU.
        let (date, cpu) = (fact("date"), fact("CPU"));
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## Partial run: `cargo xtask bench --only {only}` ({date}, {cpu}{}{}, {:.0} s)\n\n\
             **The tables in this section come from this later run of only these parts**; every \
             other table in this file is from the full run named at the top and was not \
             re-measured. The machine is shared with other work and noisy, so absolute figures \
             move between runs; load average (1/5/15 min) before this run: {}; after: {}.\n",
            // The soak and the profile have no rounds.
            if only == "soak" || only == "profile" {
                String::new()
            } else {
                format!(", {} round(s)", self.plan.rounds)
            },
            if self.plan.quick { ", --quick" } else { "" },
            self.elapsed.as_secs_f64(),
            self.load_before,
            self.load_after,
        );
        let mut body = String::new();
        if self.seeding.is_empty() {
            self.render_routing_scaling(&mut body);
            self.render_firewall_scaling(&mut body);
        } else {
            self.render_scaling(&mut body);
            self.render_propagation(&mut body);
        }
        self.render_classifier(&mut body);
        if let Some(ingest) = &self.ingest {
            if !body.is_empty() && !body.ends_with("\n\n") {
                body.push('\n');
            }
            ingest.render(&mut body, &self.machine);
        }
        for section in [
            self.overhead.as_ref().map(|o| {
                let mut md = String::new();
                o.render(&mut md);
                md
            }),
            self.instructions.as_ref().map(|i| {
                let mut md = String::new();
                i.render(&mut md);
                md
            }),
            self.profile.as_ref().map(|p| {
                let mut md = String::new();
                p.render(&mut md);
                md
            }),
            self.admission.as_ref().map(|a| {
                let mut md = String::new();
                a.render(&mut md);
                md
            }),
            self.soak.as_ref().map(|s| {
                let mut md = String::new();
                s.render(&mut md);
                md
            }),
        ]
        .into_iter()
        .flatten()
        {
            if !body.is_empty() && !body.ends_with("\n\n") {
                body.push('\n');
            }
            body.push_str(&section);
        }
        for line in body.trim_start_matches('\n').lines() {
            if line.starts_with('#') {
                md.push('#');
            }
            md.push_str(line);
            md.push('\n');
        }
        md
    }

    /// Targets rows of the rules scaling figures that were measured, keyed by what identifies
    /// the row in an existing report; `note` follows the figure (e.g. " (partial run below)").
    fn rules_target_rows(&self, note: &str) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        for (what, steps) in [
            ("routing rules", &self.routing_scaling),
            ("firewall rules", &self.firewall_scaling),
        ] {
            let Some(s) = rules_ratio(steps, 1000, 10) else {
                continue;
            };
            let mid = rules_ratio(steps, 100, 10)
                .map(|m| format!("; 100 rules: {} ×", f2(m.median)))
                .unwrap_or_default();
            let key = format!("1 000 {what} ≤ 1.2 ×");
            rows.push((
                key.clone(),
                format!(
                    "| {key} 10 {what} (p50, 1 connection) | {} × ({}–{}){mid}{note} | {} |",
                    f2(s.median),
                    f2(s.min),
                    f2(s.max),
                    if s.median <= 1.2 { "met" } else { "**missed**" }
                ),
            ));
        }
        rows
    }

    /// The Targets rows a `--only` run replaces in the existing report.
    pub fn partial_target_rows(&self) -> Vec<(String, String)> {
        let mut rows = self.rules_target_rows(" (partial run below)");
        if let Some(ingest) = &self.ingest {
            rows.push(ingest.target_row(" (partial run below)"));
        }
        if let Some(soak) = &self.soak {
            rows.push(soak.target_row(" (partial run below)"));
        }
        rows
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
             measures one connection back to back; the rounds of a step run one after another.\n\n",
        );
        rules_table(md, &self.firewall_scaling);
        if let Some(s) = rules_ratio(&self.firewall_scaling, 1000, 10) {
            let _ = writeln!(
                md,
                "\n1 000 rules ÷ 10 rules (p50): {} × ({}–{}); target ≤ 1.2 ×: {}.",
                f2(s.median),
                f2(s.min),
                f2(s.max),
                if s.median <= 1.2 { "met" } else { "**missed**" }
            );
        }
    }

    /// The routing-rule scaling table (nothing when it was not measured).
    pub fn render_routing_scaling(&self, md: &mut String) {
        let Some(first) = self.routing_scaling.first() else {
            return;
        };
        let _ = writeln!(
            md,
            "\n### Routing rules: latency against the number of enabled rules\n\n\
             One tokenrouter Envoy (`--concurrency 1`) with its own control plane (one key, \
             provider `bench`) per configuration; the rules are created through \
             `CreateRoutingRule` before the Envoy starts, and a key created after them must \
             authenticate and the response's `x-tokenrouter-rule-trace` must list them (so they \
             are live and evaluated) before measuring. The rules (`routing_rule` in \
             `xtask/src/bench/admin.rs`) are enabled for every key and mix what the seeds' \
             examples write, two or three conditions each: `contains` lists of domain words and \
             ticket ids, `metadata_equals` on a team, `headers` (`x-team`, `x-project`), \
             `model` patterns (`gpt-4*`, `claude-*`), `task` and `mode`, with `set_mode`, \
             `set_model` + `add_warning` and `set_provider` actions. None holds for the \
             request (no metadata, no such headers, model `bench/gpt-4o-mini`), so every \
             condition of every rule is evaluated and traced, and the request still reaches the \
             fake. Each round measures one connection back to back on every configuration, in \
             an order that rotates between rounds; ratios are taken within a round, against the \
             {}-rule configuration.\n",
            first.rules
        );
        rules_table(md, &self.routing_scaling);
        if let Some(s) = rules_ratio(&self.routing_scaling, 1000, 10) {
            let _ = writeln!(
                md,
                "\n1 000 rules ÷ 10 rules (p50): {} × ({}–{}); target ≤ 1.2 ×: {}.",
                f2(s.median),
                f2(s.min),
                f2(s.max),
                if s.median <= 1.2 { "met" } else { "**missed**" }
            );
        }
    }

    /// The classifier's figures (nothing when the test did not run).
    fn render_classifier(&self, md: &mut String) {
        let Some(c) = &self.classifier else {
            return;
        };
        if !md.is_empty() && !md.ends_with("\n\n") {
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "## Prompt complexity classifier\n\n\
             The classifier that picks the tier of `auto` requests \
             (`filter/engine/src/routing/complexity.rs`), scored by its accuracy test \
             (`{test}`) on the {} prompts of `{fixture}`, each labelled by hand with a tier and \
             a task{per_tier}. `cargo test -p tokenrouter-engine --release --test complexity -- \
             --nocapture`, copied from its `COMPLEXITY:` line{failed}.\n\n\
             | figure | value |\n| --- | --- |\n\
             | prompts | {} |\n\
             | exact tier accuracy | {:.1} % |\n\
             | within one tier | {:.1} % |\n\
             | cost saved against always the top model | {:.1} % |\n\
             | under-served (tier below the label) | {:.1} % |",
            c.prompts,
            c.prompts,
            c.accuracy * 100.0,
            c.within_one * 100.0,
            c.cost_saved_pct,
            c.underserved_pct,
            test = super::CLASSIFIER_TEST,
            fixture = super::CLASSIFIER_FIXTURE,
            per_tier = c
                .per_tier
                .as_deref()
                .map(|t| format!(" (labels: {})", t.replace(' ', ", ")))
                .unwrap_or_default(),
            failed = if c.passed {
                ""
            } else {
                " (**the test failed its own accuracy thresholds**)"
            },
        );
        if let Some(t) = c.task_accuracy {
            let _ = writeln!(md, "| task detection accuracy | {:.1} % |", t * 100.0);
        }
        if !c.confusion.is_empty() {
            md.push_str(
                "\nConfusion (rows: label; columns: the classifier's tier):\n\n\
                 | label | simple | medium | complex | reasoning |\n| --- | --- | --- | --- | --- |\n",
            );
            for (tier, counts) in &c.confusion {
                let counts: Vec<String> = counts.iter().map(usize::to_string).collect();
                let _ = writeln!(md, "| {tier} | {} |", counts.join(" | "));
            }
        }
        let prices: Vec<String> = c
            .prices
            .iter()
            .map(|(tier, input, output, model)| format!("{tier} ${input}/${output} ({model})"))
            .collect();
        let top = c
            .top_price
            .as_ref()
            .map_or("the top model".to_string(), |(i, o, m)| {
                format!("{m} (${i}/${o})")
            });
        let _ = writeln!(
            md,
            "\nMethod: every prompt is classified as one user turn without tools and compared \
             with its label. Cost is an estimate per prompt: input tokens = bytes ÷ 4 and 300 \
             output tokens, at the price (per million input/output tokens) of the cheapest \
             model fit for the tier the classifier chose, as the test's `tier_price` defines \
             them: {}; against every prompt sent to {top}. Under-served prompts count as \
             savings too; the under-served share says how many there are.\n",
            if prices.is_empty() {
                "see the test".to_string()
            } else {
                prices.join(", ")
            }
        );
        let holdout: Vec<String> = c
            .holdout_exact
            .iter()
            .map(|(n, m)| format!("{:.1} % ({n}/{m})", *n as f64 * 100.0 / *m as f64))
            .collect();
        let _ = write!(
            md,
            "**These figures are in-sample: the classifier was tuned on this set.**"
        );
        if !holdout.is_empty() {
            let _ = write!(
                md,
                " On {} hold-out sets written blind it scored {} exact.",
                match holdout.len() {
                    1 => "one".to_string(),
                    2 => "two".to_string(),
                    3 => "three".to_string(),
                    n => n.to_string(),
                },
                holdout.join(" and ")
            );
        }
        if let Some(p) = &c.holdout {
            let _ = write!(md, " The test's doc comment:\n\n> {p}\n");
        }
        md.push('\n');
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
             cargo xtask bench            # full run (~18 min on 2 cores), writes BENCHMARKS.md\n\
             cargo xtask bench --quick    # 1 round, short steps, 60 s of key creation: checks the setup\n\
             cargo xtask bench --help     # --rounds, --keys, --keys-budget, --no-litellm, --no-criterion, --out\n\
             cargo xtask bench --only routing,classifier  # re-measure those parts (also: keys, firewall, ingest); merged into the report as a labelled section\n\
             cargo xtask bench --only ingest  # usage records/s through FilterSync into SQLite against the gateway's saturated throughput\n\
             cargo xtask bench --only admission  # latency and throughput of keys with a rate limit or a balance against a plain key (also in the full run)\n\
             cargo xtask bench --only overhead  # direct, bare Envoy, bare Envoy + the floor filters and tokenrouter alone (latency, saturated throughput) with CPU time per request of each process\n\
             cargo xtask bench --only instructions  # the same Envoys, each under valgrind --tool=callgrind: instructions per request of each Envoy thread (repeatable; add --compare-wasm old.wasm for a change)\n\
             cargo xtask bench --only soak --soak-minutes 30 --soak-rate 200  # steady mixed load on one stack: memory, errors, usage rows (never in the full run)\n\
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

/// The table of a rules scaling figure: p50, p99 and the p50 ratio against the first step.
fn rules_table(md: &mut String, steps: &[RulesStep]) {
    let Some(first) = steps.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "| enabled rules | p50 µs | p99 µs | p50 ÷ {} rules |\n| --- | --- | --- | --- |",
        first.rules
    );
    for step in steps {
        let ratio = rules_ratio(steps, step.rules, first.rules).map_or("—".into(), |s| {
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
}

/// `md` with each Targets row whose first cell starts with a key replaced by its new row (a row
/// with no match is appended to the Targets table).
pub fn replace_target_rows(md: &str, rows: &[(String, String)]) -> String {
    let mut lines: Vec<String> = md.lines().map(str::to_string).collect();
    for (key, row) in rows {
        let prefix = format!("| {key}");
        if let Some(line) = lines.iter_mut().find(|l| l.starts_with(&prefix)) {
            *line = row.clone();
            continue;
        }
        let Some(heading) = lines.iter().position(|l| l.starts_with("## Targets")) else {
            continue;
        };
        let last_row = lines
            .iter()
            .enumerate()
            .skip(heading + 1)
            .skip_while(|(_, l)| !l.starts_with('|'))
            .take_while(|(_, l)| l.starts_with('|'))
            .last()
            .map(|(i, _)| i);
        if let Some(i) = last_row {
            lines.insert(i + 1, row.clone());
        }
    }
    let mut out = lines.join("\n");
    if md.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `md` with its findings section (from the findings' own heading to "## Machine and
/// versions") replaced by `findings`; unchanged when either is missing.
pub fn replace_findings(md: &str, findings: &str) -> String {
    let Some(heading) = findings.lines().next().filter(|h| h.starts_with("## ")) else {
        return md.to_string();
    };
    let Some(start) = md.find(&format!("\n{heading}\n")).map(|at| at + 1) else {
        return md.to_string();
    };
    let Some(end) = md[start..]
        .find("\n## Machine and versions")
        .map(|at| start + at + 1)
    else {
        return md.to_string();
    };
    format!("{}{}\n\n{}", &md[..start], findings.trim_end(), &md[end..])
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

/// Per round `f(value, reference)`, reduced to a [`Stat`] (`None` unless both have a value per
/// round).
pub fn per_round(values: &[f64], reference: &[f64], f: impl Fn(f64, f64) -> f64) -> Option<Stat> {
    if values.len() != reference.len() {
        return None;
    }
    let v: Vec<f64> = values
        .iter()
        .zip(reference)
        .map(|(x, r)| f(*x, *r))
        .collect();
    Stat::of(&v)
}

/// `median{unit} (min–max)` with `decimals` digits, or `—`.
pub fn stat_text(s: Option<Stat>, decimals: usize, unit: &str) -> String {
    s.map_or("—".into(), |s| {
        format!(
            "{:.d$}{unit} ({:.d$}–{:.d$})",
            s.median,
            s.min,
            s.max,
            d = decimals
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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

    #[test]
    fn classifier_output_and_source_are_read() {
        let output = "complexity classifier on 419 labelled prompts\n\
            \x20 per tier (labels): simple=110 medium=104 complex=102 reasoning=103\n\
            \x20      simple     109       1       0         0\n\
            \x20      medium       1     100       3         0\n\
            \x20 task detection accuracy: 0.847\n\
            COMPLEXITY: prompts=419 accuracy=0.976 within_one=0.995 cost_saved_vs_top=89.9% underserved=1.4%\n";
        let source =
            "//! Scores it.\n//!\n//! Tuned on the first 331, in-sample. Two blind hold-out\n\
            //! sets: 41/48 exact, then 35/40 exact and 39/40 within one tier.\n\n\
            fn tier_price(tier: Tier) -> (f64, f64) {\n    match tier {\n\
            \x20       Tier::Simple => (0.15, 0.60),   // gpt-4o-mini\n    }\n}\n\
            /// \"Always the top model\": claude-3-opus.\n\
            const TOP_PRICE: (f64, f64) = (15.0, 75.0);\n";
        let c = parse_classifier(output, source).expect("figures");
        assert_eq!(c.prompts, 419);
        assert!((c.accuracy - 0.976).abs() < 1e-9 && (c.underserved_pct - 1.4).abs() < 1e-9);
        assert_eq!(c.task_accuracy, Some(0.847));
        assert_eq!(c.confusion.len(), 2);
        assert_eq!(c.confusion[1], ("medium".to_string(), vec![1, 100, 3, 0]));
        assert_eq!(
            c.prices,
            [(
                "simple".into(),
                "0.15".into(),
                "0.60".into(),
                "gpt-4o-mini".into()
            )]
        );
        assert_eq!(
            c.top_price,
            Some(("15.0".into(), "75.0".into(), "claude-3-opus".into()))
        );
        assert_eq!(c.holdout_exact, [(41, 48), (35, 40)]);
        assert!(c.holdout.unwrap().starts_with("Tuned on the first 331"));
        assert!(parse_classifier("no summary", source).is_none());
    }

    #[test]
    fn target_rows_and_findings_are_replaced() {
        let md = "# B\n\n## Targets\n\n| target | m | s |\n| --- | --- | --- |\n\
                  | 1 000 routing rules ≤ 1.2 × 10 routing rules | not yet | — |\n\
                  | other | x | y |\n\n## Latency\n\n\
                  ## Findings (by hand)\n\nold\n\n## Machine and versions\n\nm\n";
        let rows = [
            (
                "1 000 routing rules ≤ 1.2 ×".to_string(),
                "| new routing |".to_string(),
            ),
            (
                "1 000 firewall rules ≤ 1.2 ×".to_string(),
                "| new firewall |".to_string(),
            ),
        ];
        let out = replace_target_rows(md, &rows);
        assert!(out.contains("| --- | --- | --- |\n| new routing |\n| other | x | y |\n| new firewall |\n\n## Latency"));
        let out = replace_findings(&out, "## Findings (by hand)\n\nnew\n");
        assert!(out.ends_with("## Findings (by hand)\n\nnew\n\n## Machine and versions\n\nm\n"));
        assert_eq!(replace_findings("x", "## Findings\n"), "x");
    }
}
