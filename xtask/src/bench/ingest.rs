//! Usage ingest: how many usage records per second the control plane stores in SQLite, against
//! the gateway's own throughput (each request the gateway serves is one usage record).
//!
//! A fresh `tokenrouter serve` (release, its own data dir) and 1 or 2 fake edges, each on its
//! own gRPC connection and `FilterSync/Sync` stream, behaving as the filter's sync singleton does
//! (`filter/src/sync.rs`): a hello, then `UsageBatch`es of [`BATCH_SIZE`] records, at most
//! [`MAX_INFLIGHT`] unacknowledged per edge, an unacknowledged batch resent after
//! [`RESEND_AFTER`]. A measurement runs for a warm-up and then a window; only the records of the
//! batches acknowledged inside the window count (an ack means the batch's transaction
//! committed). At the end the store is asked (`GET /api/v1/usage`, admin token) how many rows it
//! holds and how many tokens they sum to; then acknowledged batches are resent, plus one batch
//! half resent and half new, and the store must hold exactly the new records more.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{collections::BTreeMap, fs};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};
use tokenrouter_proto::sync::v1::control_message::Msg as Down;
use tokenrouter_proto::sync::v1::edge_message::Msg as Up;
use tokenrouter_proto::sync::v1::filter_sync_client::FilterSyncClient;
use tokenrouter_proto::sync::v1::{
    Attempt, ControlMessage, EdgeMessage, Hello, UsageBatch, UsageRecord,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
// tonic's own re-export of tokio-stream (the client stream needs a `Stream`): no extra dependency.
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::admin::Admin;
use super::load::Oha;
use super::report::{Candidate, Stat};
use super::{ControlPlane, Plan, Stacks, Target};
use crate::Supervisor;

/// Records per batch and batches in flight per edge: the filter's `BATCH_SIZE` and
/// `MAX_INFLIGHT` (`filter/src/sync.rs`).
pub const BATCH_SIZE: usize = 500;
pub const MAX_INFLIGHT: usize = 4;
/// The filter's `RESEND_AFTER_MS`: a batch without an ack after this long is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(10);
/// How often an edge wakes up without an ack (to resend stale batches).
const TICK: Duration = Duration::from_millis(500);
/// Longest wait for the last acks after a window (or a replay) before the run fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Fake edges of each configuration, each on its own connection and stream.
const EDGE_COUNTS: [usize; 2] = [1, 2];
/// Acknowledged batches resent whole in the duplicate check (plus one half-new batch).
const DUPLICATE_BATCHES: usize = 10;
/// Variants of the rule trace and the metadata (so that rows are not all alike).
const VARIANTS: usize = 4;
/// The `/usage` query scans every row: generous.
const COUNT_TIMEOUT: Duration = Duration::from_secs(600);

/// The gateway throughput the ingest rate is compared with: saturated tokenrouter req/s (one
/// value per round) and where it comes from.
#[derive(Clone, Debug, Default)]
pub struct Gateway {
    pub rps: Vec<f64>,
    pub source: String,
}

/// One configuration (number of edges): records/s and batch ack latency per round.
#[derive(Clone, Debug, Default)]
pub struct EdgesFigures {
    pub edges: usize,
    pub records_per_s: Vec<f64>,
    /// Median batch ack latency (send → ack) of each round, ms.
    pub ack_p50_ms: Vec<f64>,
    /// 99th percentile of each round, ms.
    pub ack_p99_ms: Vec<f64>,
    /// Batches resent after [`RESEND_AFTER`] without an ack, all rounds.
    pub resent: u64,
}

/// What the store holds against what was acknowledged.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    pub acked: u64,
    pub rows: u64,
    pub input_tokens: (u64, u64),
    pub output_tokens: (u64, u64),
    /// Records resent in acknowledged batches (all duplicates) and in the mixed batch.
    pub duplicate_records: u64,
    pub duplicate_batches: usize,
    /// New records in the mixed batch (expected growth of the store).
    pub mixed_new: u64,
    pub rows_after_duplicates: u64,
    /// Duplicate path: records/s of the resent batches (acknowledged, stored nothing).
    pub duplicate_records_per_s: f64,
}

impl Checks {
    pub fn rows_ok(&self) -> bool {
        self.rows == self.acked
    }

    pub fn tokens_ok(&self) -> bool {
        self.input_tokens.0 == self.input_tokens.1 && self.output_tokens.0 == self.output_tokens.1
    }

    pub fn duplicates_ok(&self) -> bool {
        self.rows_after_duplicates == self.rows + self.mixed_new
    }
}

/// Everything the ingest part measured.
#[derive(Clone, Debug, Default)]
pub struct IngestFigures {
    pub rounds: usize,
    pub warmup: Duration,
    pub window: Duration,
    pub configs: Vec<EdgesFigures>,
    pub gateway: Gateway,
    pub checks: Checks,
    /// Average bytes of field contents per record, of its rule trace and of its metadata.
    pub record_bytes: usize,
    pub trace_bytes: usize,
    pub metadata_bytes: usize,
    /// Database + WAL on disk after the run.
    pub store_bytes: u64,
}

/// Warm-up and counted window of one measurement.
pub fn durations(plan: &Plan) -> (Duration, Duration) {
    if plan.quick {
        (Duration::from_secs(1), Duration::from_secs(4))
    } else {
        (Duration::from_secs(3), Duration::from_secs(15))
    }
}

/// Records per second over a window.
pub fn rate(records: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs <= 0.0 {
        return f64::NAN;
    }
    records as f64 / secs
}

/// (median ingest ÷ median gateway, worst ingest round ÷ best gateway round).
pub fn ratios(records_per_s: &[f64], gateway_rps: &[f64]) -> Option<(f64, f64)> {
    let (ingest, gateway) = (Stat::of(records_per_s)?, Stat::of(gateway_rps)?);
    if gateway.median <= 0.0 || gateway.max <= 0.0 {
        return None;
    }
    Some((ingest.median / gateway.median, ingest.min / gateway.max))
}

// ---------------------------------------------------------------------------------------------
// The run

/// The ingest part: its own control plane, then every round measures 1 and 2 edges (in an order
/// that rotates between rounds), then the store is checked.
pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    stacks: &mut Stacks,
    gateway: Gateway,
) -> Result<IngestFigures> {
    let cp = stacks.control_plane("ingest")?;
    let admin = rt.block_on(Admin::connect(&cp.grpc, super::ADMIN_TOKEN))?;
    let key = rt.block_on(admin.create_key("bench-ingest".into()))?;
    let generator = Arc::new(Generator::new(key.id));
    let ids = Arc::new(AtomicU64::new(0));
    let (warmup, window) = durations(plan);
    let mut figures = IngestFigures {
        rounds: plan.rounds,
        warmup,
        window,
        gateway,
        record_bytes: generator.average_bytes(),
        trace_bytes: generator.traces.iter().map(String::len).sum::<usize>() / VARIANTS,
        metadata_bytes: generator.metadata.iter().map(String::len).sum::<usize>() / VARIANTS,
        configs: EDGE_COUNTS
            .iter()
            .map(|&edges| EdgesFigures {
                edges,
                ..EdgesFigures::default()
            })
            .collect(),
        ..IngestFigures::default()
    };
    println!(
        "records of ~{} bytes (rule trace {} B, metadata {} B), batches of {BATCH_SIZE}, {MAX_INFLIGHT} in flight per edge",
        figures.record_bytes, figures.trace_bytes, figures.metadata_bytes
    );
    let mut total = Tally::default();
    for round in 0..plan.rounds {
        println!("--- round {}/{} (usage ingest)", round + 1, plan.rounds);
        for i in 0..EDGE_COUNTS.len() {
            let at = (i + round) % EDGE_COUNTS.len();
            let edges = EDGE_COUNTS[at];
            let tally = rt.block_on(measure(&cp, edges, &generator, &ids, warmup, window))?;
            let per_s = rate(tally.measured, window);
            let p50 = super::report::percentile(tally.ack_ms.clone(), 50.0);
            let p99 = super::report::percentile(tally.ack_ms.clone(), 99.0);
            println!(
                "{edges} edge{}: {per_s:.0} records/s ({} acked in the window), batch ack p50 {p50:.1} ms p99 {p99:.1} ms",
                if edges == 1 { "" } else { "s" },
                tally.measured
            );
            let config = &mut figures.configs[at];
            config.records_per_s.push(per_s);
            config.ack_p50_ms.push(p50);
            config.ack_p99_ms.push(p99);
            config.resent += tally.resent;
            total.merge(tally);
        }
    }
    figures.checks = rt.block_on(check_store(&cp, &generator, &ids, &total))?;
    figures.store_bytes = ["tokenrouter.db", "tokenrouter.db-wal"]
        .iter()
        .filter_map(|f| fs::metadata(cp.data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let c = &figures.checks;
    println!(
        "store: {} rows for {} acknowledged records ({}); tokens {}; after resending {} duplicate records and {} new: {} rows ({})",
        c.rows,
        c.acked,
        if c.rows_ok() { "ok" } else { "MISMATCH" },
        if c.tokens_ok() { "ok" } else { "MISMATCH" },
        c.duplicate_records,
        c.mixed_new,
        c.rows_after_duplicates,
        if c.duplicates_ok() { "ok" } else { "MISMATCH" },
    );
    Ok(figures)
}

/// One measurement: `edges` fresh edges pump batches for `warmup` + `window`, then wait for their
/// last acks.
async fn measure(
    cp: &ControlPlane,
    edges: usize,
    generator: &Arc<Generator>,
    ids: &Arc<AtomicU64>,
    warmup: Duration,
    window: Duration,
) -> Result<Tally> {
    let mut connected = Vec::new();
    for n in 0..edges {
        connected.push(Edge::connect(&cp.grpc, format!("bench-ingest-{n}")).await?);
    }
    let warm_end = Instant::now() + warmup;
    let end = warm_end + window;
    let tasks: Vec<JoinHandle<Result<Tally>>> = connected
        .into_iter()
        .map(|mut edge| {
            let (generator, ids) = (generator.clone(), ids.clone());
            tokio::spawn(async move {
                let next = move || {
                    let first = ids.fetch_add(BATCH_SIZE as u64, Ordering::Relaxed);
                    Some(one(first..first + BATCH_SIZE as u64))
                };
                edge.pump(&generator, next, warm_end, end).await
            })
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.context("edge task")??);
    }
    Ok(tally)
}

/// Row count and token sums against what was acknowledged, then the duplicate path.
async fn check_store(
    cp: &ControlPlane,
    generator: &Arc<Generator>,
    ids: &Arc<AtomicU64>,
    total: &Tally,
) -> Result<Checks> {
    let rest = cp.rest.clone();
    let before = tokio::task::spawn_blocking(move || usage(&rest))
        .await
        .context("usage task")??;
    let mut checks = Checks {
        acked: total.acked,
        rows: before.rows,
        input_tokens: (total.input_tokens, before.input_tokens),
        output_tokens: (total.output_tokens, before.output_tokens),
        ..Checks::default()
    };
    // Acknowledged batches resent whole, then one batch of half of an acknowledged batch and
    // half new records.
    let mut batches: Vec<Vec<Range<u64>>> = total
        .kept
        .iter()
        .take(DUPLICATE_BATCHES)
        .map(|r| vec![r.clone()])
        .collect();
    checks.duplicate_batches = batches.len();
    checks.duplicate_records = batches.iter().flatten().map(|r| r.end - r.start).sum();
    let half = (BATCH_SIZE / 2) as u64;
    if let Some(old) = total.kept.first() {
        let first = ids.fetch_add(half, Ordering::Relaxed);
        batches.push(vec![old.start..old.start + half, first..first + half]);
        checks.duplicate_records += half;
        checks.mixed_new = half;
    }
    let mut edge = Edge::connect(&cp.grpc, "bench-ingest-replay".into()).await?;
    let started = Instant::now();
    let mut queue = batches.into_iter();
    let far = started + Duration::from_secs(3600);
    let replay = edge
        .pump(generator, move || queue.next(), started, far)
        .await?;
    let replayed_dups = replay.acked.saturating_sub(checks.mixed_new);
    checks.duplicate_records_per_s = rate(replayed_dups, started.elapsed());
    let rest = cp.rest.clone();
    let after = tokio::task::spawn_blocking(move || usage(&rest))
        .await
        .context("usage task")??;
    checks.rows_after_duplicates = after.rows;
    Ok(checks)
}

/// What `GET /api/v1/usage?days=2` says: stored 2xx rows received in the last two (UTC) days
/// and their token sums (every benchmark record is a 200, and the store is fresh: every row).
struct Usage {
    rows: u64,
    input_tokens: u64,
    output_tokens: u64,
}

fn usage(rest: &str) -> Result<Usage> {
    let body = get_json(rest, "/api/v1/usage?days=2")?;
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("no {name} in the /api/v1/usage answer: {body}"))
    };
    Ok(Usage {
        rows: field("total_requests")?,
        input_tokens: field("total_tokens_in")?,
        output_tokens: field("total_tokens_out")?,
    })
}

/// `GET path` with the admin token (HTTP/1.1, `Connection: close`); the JSON body of a 200.
fn get_json(addr: &str, path: &str) -> Result<Value> {
    let mut stream =
        TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(COUNT_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        super::ADMIN_TOKEN
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from {addr}{path}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path}: {}: {body}",
            head.lines().next().unwrap_or_default()
        );
    }
    serde_json::from_str(body).with_context(|| format!("GET {path}: not JSON: {body}"))
}

// ---------------------------------------------------------------------------------------------
// The fake edge

/// A batch of one range of record indexes.
fn one(range: Range<u64>) -> Vec<Range<u64>> {
    std::iter::once(range).collect()
}

/// A batch waiting for its ack: the record indexes it holds and when it was sent.
struct Sent {
    parts: Vec<Range<u64>>,
    at: Instant,
}

/// What acks an edge (or several) received.
#[derive(Debug, Default)]
pub struct Tally {
    /// Records acknowledged inside the counted window.
    pub measured: u64,
    /// Records acknowledged, whenever.
    pub acked: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Batches resent without an ack.
    pub resent: u64,
    /// Send → ack of the batches acknowledged in the window, ms.
    pub ack_ms: Vec<f64>,
    /// The first acknowledged batches (for the duplicate check).
    kept: Vec<Range<u64>>,
}

impl Tally {
    /// Counts an acknowledged batch; it counts toward the rate when its ack arrived in
    /// `[warm_end, end)`.
    fn ack(&mut self, sent: &Sent, at: Instant, warm_end: Instant, end: Instant) {
        let records: u64 = sent.parts.iter().map(|r| r.end - r.start).sum();
        self.acked += records;
        for i in sent.parts.iter().flat_map(Clone::clone) {
            self.input_tokens += input_tokens(i);
            self.output_tokens += output_tokens(i);
        }
        if at >= warm_end && at < end {
            self.measured += records;
            self.ack_ms
                .push(at.saturating_duration_since(sent.at).as_secs_f64() * 1e3);
        }
        if self.kept.len() < DUPLICATE_BATCHES && sent.parts.len() == 1 {
            self.kept.extend(sent.parts.iter().cloned());
        }
    }

    fn merge(&mut self, other: Tally) {
        self.measured += other.measured;
        self.acked += other.acked;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.resent += other.resent;
        self.ack_ms.extend(other.ack_ms);
        for r in other.kept {
            if self.kept.len() < DUPLICATE_BATCHES {
                self.kept.push(r);
            }
        }
    }
}

/// A FilterSync stream opened as an Envoy's sync singleton opens it (`hello` holding no
/// version, the admin token): the client, the sender of its messages (`buffer` of them) and
/// what the control plane sends back (the snapshot first).
pub(super) async fn sync_stream(
    grpc: &str,
    node: &str,
    buffer: usize,
) -> Result<(
    FilterSyncClient<Channel>,
    mpsc::Sender<EdgeMessage>,
    tonic::Streaming<ControlMessage>,
)> {
    let channel = Endpoint::from_shared(format!("http://{grpc}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {grpc}"))?;
    let mut client = FilterSyncClient::new(channel).max_decoding_message_size(64 << 20);
    let (out, rx) = mpsc::channel(buffer);
    out.send(EdgeMessage {
        msg: Some(Up::Hello(Hello {
            node_id: node.to_string(),
            have_version: 0,
            max_schema: u32::MAX,
        })),
    })
    .await
    .map_err(|_| anyhow!("sync stream closed before the hello"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let token = format!("Bearer {}", super::ADMIN_TOKEN)
        .parse()
        .map_err(|_| anyhow!("admin token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", token);
    let inbound = client
        .sync(request)
        .await
        .context("FilterSync/Sync")?
        .into_inner();
    Ok((client, out, inbound))
}

/// One fake edge: its own connection and `FilterSync/Sync` stream.
struct Edge {
    node: String,
    _client: FilterSyncClient<Channel>,
    out: mpsc::Sender<EdgeMessage>,
    /// (batch id, when its ack arrived), from the reader task.
    acks: mpsc::UnboundedReceiver<(u64, Instant)>,
    reader: JoinHandle<Result<()>>,
    inflight: BTreeMap<u64, Sent>,
    next_batch: u64,
}

impl Edge {
    async fn connect(grpc: &str, node: String) -> Result<Edge> {
        let (client, out, mut inbound) = sync_stream(grpc, &node, MAX_INFLIGHT).await?;
        let (ack_tx, acks) = mpsc::unbounded_channel();
        // Snapshots and scores come down too; only acks matter here.
        let reader = tokio::spawn(async move {
            while let Some(message) = inbound.message().await? {
                if let Some(Down::Ack(ack)) = message.msg {
                    if ack_tx.send((ack.batch_id, Instant::now())).is_err() {
                        break;
                    }
                }
            }
            Ok(())
        });
        Ok(Edge {
            node,
            _client: client,
            out,
            acks,
            reader,
            inflight: BTreeMap::new(),
            next_batch: 1,
        })
    }

    async fn send(&mut self, generator: &Generator, batch_id: u64) -> Result<()> {
        let Some(sent) = self.inflight.get_mut(&batch_id) else {
            return Ok(());
        };
        let now_ms = unix_ms();
        let records = sent
            .parts
            .iter()
            .flat_map(Clone::clone)
            .map(|i| generator.record(&self.node, i, now_ms))
            .collect();
        sent.at = Instant::now();
        let message = EdgeMessage {
            msg: Some(Up::Usage(UsageBatch { batch_id, records })),
        };
        if self.out.send(message).await.is_err() {
            bail!("{}: the sync stream closed", self.node);
        }
        Ok(())
    }

    /// Sends the batches `next` gives, at most [`MAX_INFLIGHT`] unacknowledged, until `end` or
    /// until `next` has no more; then waits for the last acks.
    async fn pump(
        &mut self,
        generator: &Generator,
        mut next: impl FnMut() -> Option<Vec<Range<u64>>>,
        warm_end: Instant,
        end: Instant,
    ) -> Result<Tally> {
        let mut tally = Tally::default();
        let mut exhausted = false;
        let mut drain_deadline = None;
        loop {
            let now = Instant::now();
            while now < end && !exhausted && self.inflight.len() < MAX_INFLIGHT {
                let Some(parts) = next() else {
                    exhausted = true;
                    break;
                };
                let batch_id = self.next_batch;
                self.next_batch += 1;
                self.inflight.insert(batch_id, Sent { parts, at: now });
                self.send(generator, batch_id).await?;
            }
            if now >= end || exhausted {
                if self.inflight.is_empty() {
                    return Ok(tally);
                }
                let deadline = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
                if now > deadline {
                    bail!(
                        "{}: {} batches still unacknowledged {DRAIN_TIMEOUT:?} after the end",
                        self.node,
                        self.inflight.len()
                    );
                }
            }
            let stale: Vec<u64> = self
                .inflight
                .iter()
                .filter(|(_, s)| now.saturating_duration_since(s.at) > RESEND_AFTER)
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                tally.resent += 1;
                self.send(generator, id).await?;
            }
            let wait = if now < end && !exhausted {
                (end - now).min(TICK)
            } else {
                TICK
            };
            match tokio::time::timeout(wait, self.acks.recv()).await {
                Err(_) => {}
                Ok(Some((batch_id, at))) => {
                    if let Some(sent) = self.inflight.remove(&batch_id) {
                        tally.ack(&sent, at, warm_end, end);
                    }
                }
                Ok(None) => {
                    let why = match (&mut self.reader).await {
                        Ok(Err(e)) => format!("{e:#}"),
                        _ => "closed by the control plane".into(),
                    };
                    bail!("{}: sync stream ended: {why}", self.node);
                }
            }
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------------------------
// Records

/// splitmix64: a bijection on u64, so distinct indexes give distinct request ids.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn input_tokens(i: u64) -> u64 {
    180 + mix(i) % 2_000
}

fn output_tokens(i: u64) -> u64 {
    40 + (mix(i) >> 20) % 600
}

/// Builds the records of the benchmark: every one a 200 served by the second of two attempts
/// (the first got a 429), with a firewall action, a warning, a routing rule trace and client
/// metadata, as the gateway logs them.
pub struct Generator {
    key_id: String,
    /// The time part of record 0's request id (ms); the same record always gets the same id.
    epoch_ms: i64,
    traces: Vec<String>,
    metadata: Vec<String>,
}

impl Generator {
    pub fn new(key_id: String) -> Generator {
        Generator {
            key_id,
            epoch_ms: unix_ms(),
            traces: (0..VARIANTS).map(rule_trace).collect(),
            metadata: (0..VARIANTS).map(metadata).collect(),
        }
    }

    /// Record number `i` (its request id, tokens and cost follow from `i`).
    pub fn record(&self, node: &str, i: u64, now_ms: i64) -> UsageRecord {
        let h = mix(i);
        let variant = (h % VARIANTS as u64) as usize;
        let (input, output) = (input_tokens(i), output_tokens(i));
        let cached = if h.is_multiple_of(3) { input / 2 } else { 0 };
        let latency_ms = 250 + (h >> 8) % 2_500;
        let stream = h.is_multiple_of(2);
        UsageRecord {
            // The gateway's form: 48 bits of time (here 16 records per ms, in record order),
            // then 80 random bits.
            request_id: format!(
                "req_{:012x}{h:016x}{:04x}",
                (self.epoch_ms + i64::try_from(i / 16).unwrap_or(0)) & 0xffff_ffff_ffff,
                mix(h ^ 0x5bd1_e995) & 0xffff
            ),
            started_at_unix_ms: now_ms - i64::try_from(latency_ms).unwrap_or(0),
            key_id: self.key_id.clone(),
            client_api: "chat.completions".into(),
            requested_model: "auto".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            status: 200,
            input_tokens: input,
            output_tokens: output,
            cached_tokens: cached,
            reasoning_tokens: 0,
            latency_ms,
            // $0.15 / $0.60 per million tokens, in pico-dollars per token.
            cost_picos: i64::try_from(input * 150_000 + output * 600_000).unwrap_or(i64::MAX),
            stream,
            error_type: String::new(),
            node_id: node.to_string(),
            firewall_actions: vec!["mask:prompt:PII: email addresses".into()],
            warnings: vec!["firewall rule 'PII: email addresses' matched the prompt".into()],
            mode: "balance".into(),
            tier: "medium".into(),
            rule_trace: self.traces[variant].clone(),
            attempts: vec![
                Attempt {
                    provider: "anthropic".into(),
                    model: "claude-haiku-4-5".into(),
                    status: 429,
                    latency_ms: 80 + h % 200,
                    error: "http_429".into(),
                },
                Attempt {
                    provider: "openai".into(),
                    model: "gpt-4o-mini".into(),
                    status: 200,
                    latency_ms: latency_ms.saturating_sub(120),
                    error: String::new(),
                },
            ],
            ttfb_ms: if stream { 180 + h % 400 } else { 0 },
            retry_after_s: 2,
            metadata_json: self.metadata[variant].clone(),
            ..UsageRecord::default()
        }
    }

    /// Average bytes of field contents (strings, repeated strings, numbers as 8 bytes) of a
    /// record: about what the row holds.
    pub fn average_bytes(&self) -> usize {
        let n = 64u64;
        let total: usize = (0..n)
            .map(|i| content_bytes(&self.record("bench-ingest-0", i, 0)))
            .sum();
        total / n as usize
    }
}

fn content_bytes(r: &UsageRecord) -> usize {
    let strings = [
        &r.request_id,
        &r.key_id,
        &r.client_api,
        &r.requested_model,
        &r.provider,
        &r.model,
        &r.error_type,
        &r.node_id,
        &r.mode,
        &r.tier,
        &r.rule_trace,
        &r.metadata_json,
    ];
    let attempts: usize = r
        .attempts
        .iter()
        .map(|a| a.provider.len() + a.model.len() + a.error.len() + 16)
        .sum();
    strings.iter().map(|s| s.len()).sum::<usize>()
        + r.firewall_actions.iter().map(String::len).sum::<usize>()
        + r.warnings.iter().map(String::len).sum::<usize>()
        + attempts
        + 14 * 8
}

/// A routing rule trace as the edge logs it (`filter/engine/src/routing/trace.rs`: rules with
/// their conditions, then the steps), 1–2 KB.
fn rule_trace(variant: usize) -> String {
    let teams = ["search", "billing", "support", "platform"];
    let team = teams[variant % teams.len()];
    let mut trace = vec![
        json!({
            "conditions": [
                {"actual": "summarize", "condition": "task", "expected": "coding", "matched": false},
                {"actual": null, "condition": "headers", "expected": {"x-project": "copilot"}, "matched": false},
            ],
            "id": 3, "matched": false, "priority": 100, "rule": "Coding tasks → Anthropic",
        }),
        json!({
            "applied": ["set_mode=balance", "add_warning=Using beta routing"],
            "conditions": [
                {"actual": {"team": team}, "condition": "metadata_equals", "expected": {"team": team}, "matched": true},
                {"actual": "auto", "condition": "model", "expected": ["auto", "gpt-4*"], "matched": true},
            ],
            "id": 7, "matched": true, "priority": 90, "rule": format!("{team} team: balanced routing"),
        }),
        json!({
            "conditions": [
                {"actual": false, "condition": "contains", "expected": ["incident", "SEV-1", "postmortem"], "matched": false},
            ],
            "id": 12, "matched": false, "priority": 50, "rule": "Incidents → quality",
        }),
        json!({
            "conditions": [
                {"actual": null, "condition": "headers", "expected": {"x-team": "research"}, "matched": false},
                {"actual": "balance", "condition": "mode", "expected": "quality", "matched": false},
            ],
            "id": 15, "matched": false, "priority": 45, "rule": "Research team → quality models",
        }),
        json!({"mode": "balance", "source": "rule", "step": "mode"}),
        json!({"step": "tier", "tier": "medium"}),
        json!({
            "ranked": ["anthropic/claude-haiku-4-5", "openai/gpt-4o-mini", "mistral/mistral-small-latest"],
            "step": "candidates",
        }),
    ];
    for extra in 0..variant {
        trace.insert(
            4,
            json!({
                "conditions": [
                    {"actual": "summarize", "condition": "task", "expected": "translation", "matched": false},
                ],
                "id": 20 + extra, "matched": false, "priority": 40 - extra, "rule": format!("Translation rule {extra}"),
            }),
        );
    }
    Value::from(trace).to_string()
}

/// Client metadata as a request carries it (compact JSON), about 200 bytes.
fn metadata(variant: usize) -> String {
    let teams = ["search", "billing", "support", "platform"];
    json!({
        "team": teams[variant % teams.len()],
        "project": "assistant-v2",
        "environment": "production",
        "user_id": format!("usr_{:012x}", mix(variant as u64) >> 16),
        "session_id": format!("sess_{:016x}", mix(variant as u64 + 99)),
        "feature": "summarize-thread",
        "trace_id": format!("{:032x}", u128::from(mix(variant as u64 + 7)) << 64 | u128::from(mix(variant as u64 + 8))),
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Gateway throughput for `--only ingest`

/// Saturated throughput of a tokenrouter Envoy (`--concurrency 2`, the `tr` candidate's config:
/// 100 keys, 10 routing rules, 10 firewall rules), `plan.rounds` runs, as the full run's
/// saturated step measures it.
pub fn gateway_throughput(
    rt: &tokio::runtime::Runtime,
    oha: &Oha,
    plan: &Plan,
    stacks: &mut Stacks,
    base_url: &str,
) -> Result<Gateway> {
    let cp = stacks.control_plane("ingest-gateway")?;
    let admin = rt.block_on(Admin::connect(&cp.grpc, super::ADMIN_TOKEN))?;
    rt.block_on(admin.add_provider(super::PROVIDER, base_url))?;
    rt.block_on(admin.seed_keys(0, super::SMALL_KEYS, Duration::from_secs(120)))?;
    rt.block_on(admin.seed_routing_rules(0, super::SMALL_ROUTING_RULES))?;
    rt.block_on(admin.seed_firewall_rules(0, super::SMALL_FIREWALL_RULES))?;
    // Created after the rules: it authenticates only once a snapshot holding them is live.
    let key = rt.block_on(admin.create_key("bench-ingest-gateway".into()))?;
    let mut children = Supervisor::default();
    let (addr, _) = stacks.tr_envoy(&mut children, &cp, "ingest-gateway", 2)?;
    let body = Bytes::from(super::request_body(super::TR_MODEL, false));
    super::wait_until(
        Duration::from_secs(120),
        &format!("Envoy at {addr} to answer 200"),
        &mut children,
        || super::first_status(addr, Some(&key.raw), &body) == Some(200),
    )?;
    let target = Target {
        candidate: Candidate::Tr,
        addr,
        key: Some(key.raw.clone()),
        model: super::TR_MODEL,
    };
    super::warm_up(oha, std::slice::from_ref(&target))?;
    let mut rps = Vec::new();
    for round in 0..plan.rounds {
        let r =
            oha.run(&target.load(plan.saturation_connections, plan.saturation_duration, None))?;
        super::check(&target, &r)?;
        println!(
            "gateway (tr, 2 workers) saturated, round {}/{}: {:.0} req/s",
            round + 1,
            plan.rounds,
            r.rps
        );
        rps.push(r.rps);
    }
    Ok(Gateway {
        rps,
        source: format!(
            "measured by this run just before the ingest rounds: `tr` (Envoy `--concurrency 2`, {} keys, {} routing rules, {} firewall rules), {} connections, {} s × {} round(s); the gateway is stopped before the ingest rounds",
            super::SMALL_KEYS,
            super::SMALL_ROUTING_RULES,
            super::SMALL_FIREWALL_RULES,
            plan.saturation_connections,
            plan.saturation_duration.as_secs_f64(),
            plan.rounds
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn stat_text(values: &[f64], decimals: usize) -> String {
    Stat::of(values).map_or("—".into(), |s| {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            s.median,
            s.min,
            s.max,
            d = decimals
        )
    })
}

fn median(values: &[f64]) -> Option<f64> {
    Stat::of(values).map(|s| s.median)
}

impl IngestFigures {
    /// The lowest median ratio over the configurations (what the target is judged on).
    fn worst_ratio(&self) -> Option<f64> {
        self.configs
            .iter()
            .filter_map(|c| ratios(&c.records_per_s, &self.gateway.rps).map(|r| r.0))
            .reduce(f64::min)
    }

    /// The Targets row, keyed by its first cell's start; `note` follows the figures.
    pub fn target_row(&self, note: &str) -> (String, String) {
        let key = "usage ingest ≥ gateway throughput".to_string();
        let per_config: Vec<String> = self
            .configs
            .iter()
            .filter_map(|c| {
                let (ratio, _) = ratios(&c.records_per_s, &self.gateway.rps)?;
                Some(format!(
                    "{} edge{}: {ratio:.1} × ({:.0} records/s)",
                    c.edges,
                    if c.edges == 1 { "" } else { "s" },
                    median(&c.records_per_s)?
                ))
            })
            .collect();
        let measured = if per_config.is_empty() {
            "not measured".to_string()
        } else {
            format!(
                "{} vs {:.0} req/s{note}",
                per_config.join(", "),
                median(&self.gateway.rps).unwrap_or(f64::NAN)
            )
        };
        let checks_ok =
            self.checks.rows_ok() && self.checks.tokens_ok() && self.checks.duplicates_ok();
        let status = match self.worst_ratio() {
            Some(r) if r > 1.0 && checks_ok => "met",
            Some(r) if r > 1.0 => "met; **store check failed**",
            Some(_) => "**missed**",
            None => "not measured",
        };
        (
            key.clone(),
            format!(
                "| {key} (records/s ÷ saturated req/s, 2 Envoy workers; > 1 ×) | {measured} | {status} |"
            ),
        )
    }

    /// The section: method, rate table, comparison, store checks, machine.
    pub fn render(&self, md: &mut String, machine: &[(String, String)]) {
        let _ = writeln!(
            md,
            "## Usage ingest: FilterSync → SQLite against the gateway's throughput\n\n\
             Does the usage log keep up with the gateway? A fresh `tokenrouter serve` (release, \
             its own data dir, SQLite in WAL mode) and 1 or 2 fake edges, each on its own gRPC \
             connection and `FilterSync/Sync` stream, sending as the filter's sync singleton \
             does (`filter/src/sync.rs`): a hello, then `UsageBatch`es of {BATCH_SIZE} records \
             with at most {MAX_INFLIGHT} unacknowledged per edge, an unacknowledged batch resent \
             after {} s. The control plane stores a batch in one transaction, then acks it. Each \
             measurement: {} s warm-up, then a {} s window that counts the records of the \
             batches acknowledged inside it; 1 and 2 edges alternate within each round ({} \
             round(s)), in an order that rotates between rounds. The store is not emptied between \
             measurements: it holds {} rows at the end. The edges run in the benchmark's process, \
             on the same 2 cores as the control plane (as an Envoy would).\n\n\
             Records look like the gateway's: unique request id in the gateway's form (time, \
             then random bits), the id of a key created through the Admin API, `auto` → \
             `openai/gpt-4o-mini`, tokens and cost, a firewall `mask` action, a warning, two \
             attempts (a 429 then a 200), a routing rule trace JSON of {} bytes on average \
             (rules with their conditions, mode, tier and candidates steps) and \
             `metadata_json` of {} bytes; about {} bytes of field contents per record, every \
             one a 200.\n\n\
             | edges | batches in flight | records/s | batch ack p50 ms | batch ack p99 ms | ÷ gateway req/s (median) | worst round ÷ best gateway round |\n\
             | --- | --- | --- | --- | --- | --- | --- |",
            RESEND_AFTER.as_secs(),
            self.warmup.as_secs_f64(),
            self.window.as_secs_f64(),
            self.rounds,
            self.checks.rows_after_duplicates,
            self.trace_bytes,
            self.metadata_bytes,
            self.record_bytes,
        );
        for c in &self.configs {
            let r = ratios(&c.records_per_s, &self.gateway.rps);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                c.edges,
                c.edges * MAX_INFLIGHT,
                stat_text(&c.records_per_s, 0),
                stat_text(&c.ack_p50_ms, 1),
                stat_text(&c.ack_p99_ms, 1),
                r.map_or("—".into(), |r| format!("{:.2} ×", r.0)),
                r.map_or("—".into(), |r| format!("{:.2} ×", r.1)),
            );
        }
        let resent: u64 = self.configs.iter().map(|c| c.resent).sum();
        let verdict = match self.worst_ratio() {
            Some(r) if r > 1.0 => "met",
            Some(_) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(
            md,
            "\nGateway throughput compared with: saturated tokenrouter, {} req/s; {}. Each \
             request the gateway serves is one usage record, so a ratio above 1 × means the log \
             is written faster than the gateway can produce it. Target > 1 ×: {verdict}. \
             Batches resent after {} s without an ack: {resent}.\n",
            stat_text(&self.gateway.rps, 0),
            self.gateway.source,
            RESEND_AFTER.as_secs(),
        );
        let c = &self.checks;
        let ok = |b: bool| if b { "ok" } else { "**mismatch**" };
        let _ = writeln!(
            md,
            "Store checks, through `GET /api/v1/usage?days=2` (admin token; it counts the stored \
             2xx rows and sums their tokens):\n\n\
             | check | expected | in the store | |\n| --- | --- | --- | --- |\n\
             | rows after the measurements = records acknowledged | {} | {} | {} |\n\
             | input tokens summed | {} | {} | {} |\n\
             | output tokens summed | {} | {} | {} |\n\
             | duplicates: {} acknowledged batches resent whole, then one batch of {} resent and {} new records ({} duplicate records in all, acknowledged at {:.0} records/s) | {} rows | {} rows | {} |\n",
            c.acked,
            c.rows,
            ok(c.rows_ok()),
            c.input_tokens.0,
            c.input_tokens.1,
            ok(c.input_tokens.0 == c.input_tokens.1),
            c.output_tokens.0,
            c.output_tokens.1,
            ok(c.output_tokens.0 == c.output_tokens.1),
            c.duplicate_batches,
            c.mixed_new,
            c.mixed_new,
            c.duplicate_records,
            c.duplicate_records_per_s,
            c.rows + c.mixed_new,
            c.rows_after_duplicates,
            ok(c.duplicates_ok()),
        );
        if self.store_bytes > 0 && c.rows_after_duplicates > 0 {
            let _ = writeln!(
                md,
                "Database + WAL on disk at the end: {:.0} MiB, {:.0} bytes per row.\n",
                self.store_bytes as f64 / (1024.0 * 1024.0),
                self.store_bytes as f64 / c.rows_after_duplicates as f64
            );
        }
        let wanted = ["date", "cores (nproc)", "CPU", "memory", "rustc"];
        let facts: Vec<String> = wanted
            .iter()
            .filter_map(|k| machine.iter().find(|(name, _)| name == k))
            .map(|(k, v)| {
                if v.starts_with(k.as_str()) {
                    v.clone()
                } else {
                    format!("{k} {v}")
                }
            })
            .collect();
        if !facts.is_empty() {
            let _ = writeln!(md, "Machine: {}.\n", facts.join(", "));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_ratios() {
        assert_eq!(rate(30_000, Duration::from_secs(15)), 2_000.0);
        assert!(rate(1, Duration::ZERO).is_nan());
        let (median, worst) = ratios(&[9_000.0, 10_000.0, 12_000.0], &[2_000.0, 2_500.0]).unwrap();
        assert!((median - 10_000.0 / 2_250.0).abs() < 1e-9);
        assert!((worst - 9_000.0 / 2_500.0).abs() < 1e-9);
        assert!(ratios(&[1.0], &[]).is_none());
        assert!(ratios(&[], &[1.0]).is_none());
    }

    #[test]
    fn only_acks_inside_the_window_count() {
        let t0 = Instant::now();
        let (warm_end, end) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let mut tally = Tally::default();
        let sent = |first: u64| Sent {
            parts: one(first..first + 500),
            at: t0,
        };
        tally.ack(&sent(0), t0 + Duration::from_millis(500), warm_end, end);
        tally.ack(&sent(500), t0 + Duration::from_millis(1500), warm_end, end);
        tally.ack(&sent(1000), end, warm_end, end);
        assert_eq!((tally.measured, tally.acked), (500, 1500));
        assert_eq!(tally.ack_ms, [1500.0]);
        assert_eq!(tally.input_tokens, (0..1500).map(input_tokens).sum::<u64>());
        assert_eq!(tally.kept, [0..500, 500..1000, 1000..1500]);
        let mut other = Tally::default();
        other.ack(
            &Sent {
                parts: vec![5..10, 2000..2003],
                at: t0,
            },
            warm_end,
            warm_end,
            end,
        );
        // Mixed batches are not kept for the duplicate check.
        assert!(other.kept.is_empty());
        tally.merge(other);
        assert_eq!((tally.measured, tally.acked), (508, 1508));
    }

    #[test]
    fn records_are_realistic_and_unique() {
        let g = Generator::new("key_0123456789abcdef".into());
        for t in &g.traces {
            assert!(
                (1_000..=2_000).contains(&t.len()),
                "trace of {} bytes",
                t.len()
            );
            assert!(serde_json::from_str::<Value>(t).unwrap().is_array());
        }
        for m in &g.metadata {
            assert!(
                (170..=260).contains(&m.len()),
                "metadata of {} bytes",
                m.len()
            );
        }
        let ids: std::collections::BTreeSet<String> = (0..10_000)
            .map(|i| g.record("n", i, 0).request_id)
            .collect();
        assert_eq!(ids.len(), 10_000);
        let id = g.record("n", 42, 0).request_id;
        assert_eq!((id.len(), &id[..4]), (36, "req_"));
        assert!(g.record("n", 16, 0).request_id > g.record("n", 15, 0).request_id);
        let r = g.record("n", 42, 1_000_000);
        assert_eq!(r.attempts.len(), 2);
        assert_eq!((r.status, r.input_tokens), (200, input_tokens(42)));
        assert_eq!(r.firewall_actions.len(), 1);
        assert!((1_500..=3_000).contains(&g.average_bytes()));
    }

    fn figures(ingest: &[f64], gateway: &[f64]) -> IngestFigures {
        IngestFigures {
            rounds: 2,
            warmup: Duration::from_secs(3),
            window: Duration::from_secs(15),
            configs: vec![
                EdgesFigures {
                    edges: 1,
                    records_per_s: ingest.to_vec(),
                    ack_p50_ms: vec![20.0, 22.0],
                    ack_p99_ms: vec![40.0, 44.0],
                    resent: 0,
                },
                EdgesFigures {
                    edges: 2,
                    records_per_s: ingest.iter().map(|x| x * 1.1).collect(),
                    ..EdgesFigures::default()
                },
            ],
            gateway: Gateway {
                rps: gateway.to_vec(),
                source: "the saturated table".into(),
            },
            checks: Checks {
                acked: 1000,
                rows: 1000,
                input_tokens: (7, 7),
                output_tokens: (8, 8),
                duplicate_records: 5250,
                duplicate_batches: 10,
                mixed_new: 250,
                rows_after_duplicates: 1250,
                duplicate_records_per_s: 40_000.0,
            },
            record_bytes: 2100,
            trace_bytes: 1400,
            metadata_bytes: 210,
            store_bytes: 4 << 20,
        }
    }

    #[test]
    fn section_and_target_row() {
        let f = figures(&[20_000.0, 24_000.0], &[2_000.0, 2_400.0]);
        let machine = vec![
            ("date".to_string(), "2026-11-22 10:00 UTC".to_string()),
            ("cores (nproc)".to_string(), "2".to_string()),
        ];
        let mut md = String::new();
        f.render(&mut md, &machine);
        assert!(md.starts_with("## Usage ingest"));
        assert!(
            md.contains("| 1 | 4 | 22000 (20000–24000) | 21.0 (20.0–22.0) | 42.0 (40.0–44.0) | 10.00 × | 8.33 × |"),
            "{md}"
        );
        assert!(md.contains("| 2 | 8 | 24200 (22000–26400) | — | — | 11.00 × | 9.17 × |"));
        assert!(md.contains("Target > 1 ×: met."));
        assert!(md.contains("| 1250 rows | 1250 rows | ok |"));
        assert!(md.contains("Machine: date 2026-11-22 10:00 UTC, cores (nproc) 2."));
        let (key, row) = f.target_row(" (partial run below)");
        assert!(row.starts_with(&format!("| {key}")));
        assert!(row.contains("1 edge: 10.0 × (22000 records/s), 2 edges: 11.0 × (24200 records/s) vs 2200 req/s (partial run below) | met |"), "{row}");

        let slow = figures(&[1_000.0, 1_500.0], &[2_000.0, 2_400.0]);
        assert!(slow.target_row("").1.ends_with("| **missed** |"));
        let mut bad = figures(&[20_000.0], &[2_000.0]);
        bad.checks.rows_after_duplicates = 1_500;
        assert!(bad.target_row("").1.contains("store check failed"));
        let mut md = String::new();
        bad.render(&mut md, &[]);
        assert!(md.contains("| **mismatch** |"));
        let none = figures(&[20_000.0], &[]);
        assert!(none
            .target_row("")
            .1
            .contains("| not measured | not measured |"));
    }
}
