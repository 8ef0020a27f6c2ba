//! Process-wide counters and the OpenTelemetry GenAI client metrics, rendered as Prometheus
//! text by `GET /metrics`.
//!
//! The GenAI histograms follow the semantic conventions for generative AI clients
//! (`gen_ai.client.token.usage`, `gen_ai.client.operation.duration`), named as OpenTelemetry's
//! Prometheus exporter names them: dots become underscores and the duration gets its unit
//! suffix. Each newly stored usage record is one operation: `gen_ai_operation_name` is
//! `embeddings` for `/v1/embeddings` and `chat` for Chat Completions, Responses and Messages
//! (catalogue listings and requests refused before their API was known are not GenAI
//! operations and are not observed). Tokens are observed for successful (2xx) records that
//! were not replays, as input and output; durations for every record, with `error_type` when
//! the request failed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use tokenrouter_proto::sync::v1::UsageRecord;

/// Distinct label sets each GenAI histogram keeps; beyond that, new ones are folded into one
/// set whose free-text labels are `other`, so a flood of model names cannot grow memory or the
/// scrape without bound.
pub const MAX_LABEL_SETS: usize = 10_000;
/// Longest label value kept (longer ones are cut at a character boundary).
const MAX_LABEL_CHARS: usize = 128;
/// What folded label values become.
const OTHER: &str = "other";

/// `gen_ai.client.token.usage` bucket bounds (tokens), as the semantic conventions advise.
const TOKEN_BOUNDS: [u64; 14] = [
    1, 4, 16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216,
    67_108_864,
];
/// `gen_ai.client.operation.duration` bucket bounds in milliseconds (the conventions' bounds
/// in seconds: 0.01, 0.02, … 81.92), so observations stay integers and exact.
const DURATION_BOUNDS_MS: [u64; 14] = [
    10, 20, 40, 80, 160, 320, 640, 1_280, 2_560, 5_120, 10_240, 20_480, 40_960, 81_920,
];

/// Counters shared by the gRPC and REST layers. Cheap to update (relaxed atomics; the GenAI
/// histograms take one lock per usage batch).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Usage records newly stored (resent duplicates excluded).
    pub usage_records_ingested: AtomicU64,
    /// Usage batches stored and acknowledged.
    pub usage_batches_acked: AtomicU64,
    /// Usage batches that could not be stored (the edge resends them).
    pub usage_batches_failed: AtomicU64,
    /// Usage records that came with their rule trace as the previous record's.
    pub usage_trace_runs: AtomicU64,
    /// FilterSync streams currently open (one per connected Envoy).
    pub sync_streams_open: AtomicI64,
    /// Snapshots sent to edges over FilterSync.
    pub snapshots_sent: AtomicU64,
    /// Key deltas sent to edges over FilterSync instead of a snapshot.
    pub key_deltas_sent: AtomicU64,
    /// Configuration version last published.
    pub config_version: AtomicU64,
    /// The GenAI histograms, fed by [`Metrics::observe_usage`].
    genai: Mutex<GenAi>,
}

/// One label set of a GenAI histogram. `token_type` is empty for durations, `error_type` for
/// tokens and for operations that succeeded (an empty label is an absent one in Prometheus).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Labels {
    operation: &'static str,
    provider: String,
    request_model: String,
    response_model: String,
    token_type: &'static str,
    error_type: String,
}

impl Labels {
    /// The set new label sets fold into once a histogram holds [`MAX_LABEL_SETS`].
    fn folded(&self) -> Labels {
        Labels {
            operation: self.operation,
            provider: OTHER.into(),
            request_model: OTHER.into(),
            response_model: OTHER.into(),
            token_type: self.token_type,
            error_type: if self.error_type.is_empty() {
                String::new()
            } else {
                OTHER.into()
            },
        }
    }

    fn render(&self) -> String {
        let mut pairs = vec![
            ("gen_ai_operation_name", self.operation),
            ("gen_ai_provider_name", self.provider.as_str()),
            ("gen_ai_request_model", self.request_model.as_str()),
            ("gen_ai_response_model", self.response_model.as_str()),
        ];
        if !self.token_type.is_empty() {
            pairs.push(("gen_ai_token_type", self.token_type));
        }
        if !self.error_type.is_empty() {
            pairs.push(("error_type", self.error_type.as_str()));
        }
        pairs
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Counts per bucket (not cumulative; the last is above every bound), the sum and the count.
#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: [u64; 15],
    sum: u128,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[u64; 14], value: u64) {
        let i = bounds.partition_point(|&b| b < value);
        if let Some(n) = self.buckets.get_mut(i) {
            *n += 1;
        }
        self.sum += u128::from(value);
        self.count += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (n, m) in self.buckets.iter_mut().zip(other.buckets) {
            *n += m;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// One histogram per label set, bounded.
#[derive(Debug, Default)]
struct Family {
    series: BTreeMap<Labels, Histogram>,
    /// Observations whose label set was folded.
    folded: u64,
}

impl Family {
    /// Adds `observed` (observations of one label set) to the set's histogram.
    fn merge(&mut self, labels: Labels, observed: &Histogram) {
        if observed.count == 0 {
            return;
        }
        let labels = if self.series.len() >= MAX_LABEL_SETS && !self.series.contains_key(&labels) {
            self.folded += observed.count;
            labels.folded()
        } else {
            labels
        };
        self.series.entry(labels).or_default().merge(observed);
    }
}

/// What decides a usage record's label sets, borrowed from the record. The records of a batch
/// mostly share it, so a run of them is observed into histograms of their own and added to the
/// families once: one lookup of each label set per run, not per record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunKey<'a> {
    operation: &'static str,
    provider: &'a str,
    request_model: &'a str,
    response_model: &'a str,
    /// Its tokens are counted (2xx, not a replay).
    tokens: bool,
    /// It failed: its error type, and its status for a failure without one.
    failure: Option<(&'a str, u32)>,
}

impl<'a> RunKey<'a> {
    /// `None` for records the GenAI histograms do not observe (catalogue listings).
    fn of(r: &'a UsageRecord) -> Option<RunKey<'a>> {
        let operation = match r.client_api.as_str() {
            "embeddings" => "embeddings",
            "chat.completions" | "responses" | "messages" => "chat",
            _ => return None,
        };
        let failed = r.status >= 400 || r.status < 100;
        Some(RunKey {
            operation,
            provider: &r.provider,
            request_model: &r.requested_model,
            response_model: &r.model,
            tokens: (200..300).contains(&r.status) && r.replay_of.is_empty(),
            failure: failed.then_some((r.error_type.as_str(), r.status)),
        })
    }
}

/// The observations of one run of records with the same [`RunKey`].
#[derive(Debug, Default)]
struct Run {
    input_tokens: Histogram,
    output_tokens: Histogram,
    durations: Histogram,
}

impl Run {
    fn observe(&mut self, key: &RunKey<'_>, r: &UsageRecord) {
        if key.tokens {
            self.input_tokens.observe(&TOKEN_BOUNDS, r.input_tokens);
            self.output_tokens.observe(&TOKEN_BOUNDS, r.output_tokens);
        }
        self.durations.observe(&DURATION_BOUNDS_MS, r.latency_ms);
    }
}

#[derive(Debug, Default)]
struct GenAi {
    tokens: Family,
    durations: Family,
}

impl GenAi {
    /// Adds one run's observations under its label sets.
    fn add(&mut self, key: &RunKey<'_>, run: &Run) {
        let labels = Labels {
            operation: key.operation,
            provider: label(key.provider),
            request_model: label(key.request_model),
            response_model: label(key.response_model),
            token_type: "",
            error_type: String::new(),
        };
        if key.tokens {
            for (token_type, observed) in
                [("input", &run.input_tokens), ("output", &run.output_tokens)]
            {
                let labels = Labels {
                    token_type,
                    ..labels.clone()
                };
                self.tokens.merge(labels, observed);
            }
        }
        let error_type = match key.failure {
            None => String::new(),
            Some(("", status)) => status.to_string(),
            Some((error_type, _)) => label(error_type),
        };
        self.durations.merge(
            Labels {
                error_type,
                ..labels
            },
            &run.durations,
        );
    }
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Feeds the GenAI histograms with newly stored usage records (one lock for the batch;
    /// one lookup of each label set per run of records that share it, [`RunKey`]).
    pub fn observe_usage<'a>(&self, records: impl IntoIterator<Item = &'a UsageRecord>) {
        let mut genai = self.genai.lock().unwrap_or_else(|e| e.into_inner());
        let mut run: Option<(RunKey<'a>, Run)> = None;
        for r in records {
            let Some(key) = RunKey::of(r) else {
                continue;
            };
            match &mut run {
                Some((current, observed)) if *current == key => observed.observe(&key, r),
                _ => {
                    if let Some((done, observed)) = run.take() {
                        genai.add(&done, &observed);
                    }
                    let mut observed = Run::default();
                    observed.observe(&key, r);
                    run = Some((key, observed));
                }
            }
        }
        if let Some((done, observed)) = run {
            genai.add(&done, &observed);
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        metric(
            "tokenrouter_usage_records_ingested_total",
            "counter",
            "Usage records stored (duplicates from resent batches excluded).",
            get(&self.usage_records_ingested),
        );
        metric(
            "tokenrouter_usage_batches_acked_total",
            "counter",
            "Usage batches stored and acknowledged.",
            get(&self.usage_batches_acked),
        );
        metric(
            "tokenrouter_usage_batches_failed_total",
            "counter",
            "Usage batches that could not be stored (not acknowledged; the edge resends).",
            get(&self.usage_batches_failed),
        );
        metric(
            "tokenrouter_usage_trace_runs_total",
            "counter",
            "Usage records received with their rule trace as the previous record's (an edge \
             sends a run of equal traces once per batch).",
            get(&self.usage_trace_runs),
        );
        metric(
            "tokenrouter_sync_streams_open",
            "gauge",
            "FilterSync streams currently open.",
            self.sync_streams_open.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "tokenrouter_snapshots_sent_total",
            "counter",
            "Configuration snapshots sent to edges.",
            get(&self.snapshots_sent),
        );
        metric(
            "tokenrouter_key_deltas_sent_total",
            "counter",
            "Key deltas sent to edges instead of a snapshot (only keys changed).",
            get(&self.key_deltas_sent),
        );
        metric(
            "tokenrouter_config_version",
            "gauge",
            "Configuration version currently published.",
            get(&self.config_version),
        );
        let genai = self.genai.lock().unwrap_or_else(|e| e.into_inner());
        metric(
            "tokenrouter_genai_label_sets_folded_total",
            "counter",
            "GenAI histogram observations whose label set was folded into 'other' (more than \
             10000 distinct label sets).",
            (genai.tokens.folded + genai.durations.folded).to_string(),
        );
        histogram(
            &mut out,
            "gen_ai_client_token_usage",
            "Number of input and output tokens used per operation (OpenTelemetry GenAI \
             gen_ai.client.token.usage).",
            &genai.tokens,
            &TOKEN_BOUNDS,
            |n| n.to_string(),
        );
        histogram(
            &mut out,
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (OpenTelemetry GenAI gen_ai.client.operation.duration).",
            &genai.durations,
            &DURATION_BOUNDS_MS,
            |ms| seconds(u128::from(ms)),
        );
        out
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    family: &Family,
    bounds: &[u64; 14],
    bound_text: impl Fn(u64) -> String,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let les: Vec<String> = bounds.iter().map(|&b| bound_text(b)).collect();
    let sum_is_ms = name.ends_with("_seconds");
    for (labels, h) in &family.series {
        let labels = labels.render();
        let mut cumulative = 0;
        for (le, n) in les.iter().zip(&h.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let sum = if sum_is_ms {
            seconds(h.sum)
        } else {
            h.sum.to_string()
        };
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

/// Milliseconds as exact decimal seconds: 10 → `0.01`, 81920 → `81.92`, 3000 → `3`.
fn seconds(ms: u128) -> String {
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A label value as kept: at most [`MAX_LABEL_CHARS`] characters.
fn label(value: &str) -> String {
    match value.char_indices().nth(MAX_LABEL_CHARS) {
        Some((cut, _)) => value[..cut].to_string(),
        None => value.to_string(),
    }
}

/// Escapes a label value for the text format: `\`, `"` and line feeds.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.usage_records_ingested, 3);
        let text = m.render();
        assert!(text.contains("# TYPE tokenrouter_usage_records_ingested_total counter\n"));
        assert!(text.contains("\ntokenrouter_usage_records_ingested_total 3\n"));
        assert!(text.contains("\ntokenrouter_sync_streams_open 0\n"));
        assert!(text.contains("# TYPE gen_ai_client_token_usage histogram\n"));
        assert!(text.contains("# TYPE gen_ai_client_operation_duration_seconds histogram\n"));
    }

    fn record(api: &str, status: u32, input: u64, output: u64, latency_ms: u64) -> UsageRecord {
        UsageRecord {
            client_api: api.into(),
            provider: "openai".into(),
            requested_model: "auto".into(),
            model: "gpt-4o".into(),
            status,
            input_tokens: input,
            output_tokens: output,
            latency_ms,
            ..UsageRecord::default()
        }
    }

    /// A batch is observed in runs of records that share their label sets: whatever the runs,
    /// the histograms are those of observing every record on its own, folding included.
    #[test]
    fn a_batch_observed_in_runs_counts_as_its_records_one_by_one() {
        let failed = |error_type: &str, status| UsageRecord {
            error_type: error_type.into(),
            ..record("chat.completions", status, 0, 0, 30)
        };
        let other_model = |model: &str| UsageRecord {
            model: model.into(),
            ..record("chat.completions", 200, 7, 3, 250)
        };
        let mut batch = vec![
            record("chat.completions", 200, 100, 4, 1_500),
            record("chat.completions", 200, 90, 5, 1_400),
            record("chat.completions", 200, 80, 6, 300),
            other_model("gpt-4o-mini"),
            record("chat.completions", 200, 70, 7, 1_000),
            failed("rate_limit_error", 429),
            failed("rate_limit_error", 429),
            failed("", 502),
            failed("", 503),
            UsageRecord {
                replay_of: "req-1".into(),
                ..record("chat.completions", 200, 100, 10, 1)
            },
            record("models", 200, 0, 0, 1),
            record("embeddings", 200, 16, 0, 90_000),
            record("chat.completions", 200, 60, 8, 900),
        ];
        // Past the bound on label sets, new sets fold into `other`.
        batch.extend((0..MAX_LABEL_SETS + 3).map(|i| other_model(&format!("m{i}"))));
        batch.extend((0..3).map(|i| other_model(&format!("m{i}"))));
        let in_runs = Metrics::default();
        in_runs.observe_usage(&batch);
        let one_by_one = Metrics::default();
        for r in &batch {
            one_by_one.observe_usage(std::slice::from_ref(r));
        }
        assert_eq!(in_runs.render(), one_by_one.render());
        assert!(in_runs.render().contains("gen_ai_response_model=\"other\""));
    }

    #[test]
    fn genai_histograms_follow_the_semantic_conventions() {
        let m = Metrics::default();
        let failed = UsageRecord {
            error_type: "rate_limit_error".into(),
            ..record("messages", 429, 0, 0, 20)
        };
        let replay = UsageRecord {
            replay_of: "req-1".into(),
            ..record("chat.completions", 200, 100, 10, 1)
        };
        m.observe_usage(&[
            record("chat.completions", 200, 100, 4, 1_500),
            record("responses", 200, 1, 70_000_000, 10),
            record("embeddings", 200, 16, 0, 90_000),
            failed,
            replay,
            record("models", 200, 0, 0, 1),
        ]);
        let text = m.render();
        let chat = "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",\
                    gen_ai_request_model=\"auto\",gen_ai_response_model=\"gpt-4o\"";
        let line = |l: &str| {
            assert!(text.contains(&format!("\n{l}\n")), "{l} not in\n{text}");
        };
        // Tokens: cumulative buckets; 4 is in le="4", 100 in le="256".
        let input = format!("gen_ai_client_token_usage_bucket{{{chat},gen_ai_token_type=\"input\"");
        line(&format!("{input},le=\"1\"}} 1"));
        line(&format!("{input},le=\"64\"}} 1"));
        line(&format!("{input},le=\"256\"}} 2"));
        line(&format!("{input},le=\"+Inf\"}} 2"));
        let output = format!("{chat},gen_ai_token_type=\"output\"");
        line(&format!(
            "gen_ai_client_token_usage_bucket{{{output},le=\"4\"}} 1"
        ));
        line(&format!(
            "gen_ai_client_token_usage_bucket{{{output},le=\"67108864\"}} 1"
        ));
        line(&format!(
            "gen_ai_client_token_usage_bucket{{{output},le=\"+Inf\"}} 2"
        ));
        line(&format!(
            "gen_ai_client_token_usage_sum{{{output}}} 70000004"
        ));
        line(&format!("gen_ai_client_token_usage_count{{{output}}} 2"));
        // Durations in seconds, exact; the failure carries error_type and no tokens.
        let d = "gen_ai_client_operation_duration_seconds";
        line(&format!("{d}_bucket{{{chat},le=\"0.01\"}} 2"));
        line(&format!("{d}_bucket{{{chat},le=\"1.28\"}} 2"));
        line(&format!("{d}_bucket{{{chat},le=\"2.56\"}} 3"));
        line(&format!("{d}_sum{{{chat}}} 1.511"));
        line(&format!("{d}_count{{{chat}}} 3"));
        line(&format!(
            "{d}_count{{{chat},error_type=\"rate_limit_error\"}} 1"
        ));
        let embeddings = chat.replace("\"chat\"", "\"embeddings\"");
        line(&format!("{d}_bucket{{{embeddings},le=\"81.92\"}} 0"));
        line(&format!("{d}_bucket{{{embeddings},le=\"+Inf\"}} 1"));
        line(&format!("{d}_sum{{{embeddings}}} 90"));
        assert_eq!(
            text.matches("gen_ai_client_token_usage_count{").count(),
            4,
            "chat and embeddings × input and output; no tokens for the 429 or the replay"
        );
        assert!(
            !text.contains("models"),
            "a catalogue listing is no operation"
        );
    }

    #[test]
    fn label_sets_are_bounded_and_escaped() {
        let m = Metrics::default();
        let quoted = UsageRecord {
            requested_model: "a\"b\\c\nd".into(),
            ..record("chat.completions", 500, 0, 0, 5)
        };
        m.observe_usage(&[quoted]);
        let many: Vec<UsageRecord> = (0..MAX_LABEL_SETS + 50)
            .map(|i| UsageRecord {
                requested_model: format!("m{i}"),
                ..record("chat.completions", 500, 0, 0, 5)
            })
            .collect();
        m.observe_usage(&many);
        let text = m.render();
        let counts = text
            .matches("gen_ai_client_operation_duration_seconds_count{")
            .count();
        assert_eq!(counts, MAX_LABEL_SETS + 1, "the cap plus the folded set");
        assert!(text.contains(
            "gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name=\"chat\",\
             gen_ai_provider_name=\"other\",gen_ai_request_model=\"other\",\
             gen_ai_response_model=\"other\",error_type=\"other\"} 51\n"
        ));
        assert!(text.contains("\ntokenrouter_genai_label_sets_folded_total 51\n"));
        assert!(
            text.contains("gen_ai_request_model=\"a\\\"b\\\\c\\nd\""),
            "quotes, backslashes and line feeds are escaped"
        );
        assert_eq!(label(&"é".repeat(300)).chars().count(), MAX_LABEL_CHARS);
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(seconds(10), "0.01");
        assert_eq!(seconds(81_920), "81.92");
        assert_eq!(seconds(3_000), "3");
        assert_eq!(seconds(1_511), "1.511");
    }
}
