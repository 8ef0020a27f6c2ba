//! The edge (downstream) filter: one context per client request.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Duration;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tokenrouter_engine::admission;
use tokenrouter_engine::annotate::{self, SseAnnotator};
use tokenrouter_engine::firewall::formats::{self, StreamFilter};
use tokenrouter_engine::firewall::{self, Inspection, Scope, Subject, Verdict};
use tokenrouter_engine::money::{cost_picos, Price};
use tokenrouter_engine::request::{ClientApi, ClientRequest};
use tokenrouter_engine::routing::{self, features, Decision, RouteInput, ScoreBoard, Target};
use tokenrouter_engine::translate::{translator_for, AttemptTarget, Translator, UpstreamRequest};
use tokenrouter_engine::upstream::ProviderKind;
use tokenrouter_engine::usage::{self, ChunkOutput, ClientStreamObserver, Usage};
use tokenrouter_engine::{auth, idempotency, models, ErrorKind, GatewayError, HashMap, Snapshot};
use tokenrouter_proto::sync::v1::idempotency_verdict::Outcome;
use tokenrouter_proto::sync::v1::{IdempotencyBegin, IdempotencyVerdict, UsageRecord};

use crate::held::{apply_mutation, HeldReply, Released};
use crate::upstream::{
    byok_credential, ATTEMPT_HEADER, BYOK_HEADERS, CREDENTIAL_HEADERS, INTERNAL_HEADERS,
};
use crate::{attempts, host, vm};

/// Largest non-streaming response body we copy to read its `usage` (the body itself is never
/// held back from the client).
const MAX_RESPONSE_COPY: usize = 8 * 1024 * 1024;

/// Largest request or response body kept for the request log of a key that stores bodies.
const MAX_STORED_BODY: usize = 256 * 1024;

/// Largest client `metadata` object kept in the request log (compact JSON).
const MAX_STORED_METADATA: usize = 16 * 1024;

/// The log's `error_type` of a request whose client went away before its answer was whole.
const CLIENT_CLOSED: &str = "client_closed_request";

/// Envoy's response code details (a prefix) when the provider's connection was reset after
/// the response had started.
const UPSTREAM_RESET_DETAILS: &str = "upstream_reset_after_response_started";

/// Envoy's response code details of an answer that came from the upstream (not a reply Envoy
/// made itself).
const VIA_UPSTREAM_DETAILS: &str = "via_upstream";

/// Where a client sends its gateway key (`Authorization: Bearer`, Anthropic's `x-api-key`).
const CLIENT_CREDENTIAL_HEADERS: [&str; 2] = ["authorization", "x-api-key"];

/// Envoy stats the edge defines (admin `/stats`, `/stats/prometheus`; Envoy prefixes them with
/// `wasmcustom.`).
#[derive(Clone, Default)]
pub struct Metrics {
    requests: Option<u32>,
    rejected: Option<u32>,
    /// Requests answered by a later attempt than the first.
    fallbacks: Option<u32>,
    /// Attempts that failed (their request may still have succeeded).
    failed_attempts: Option<u32>,
    firewall_hits: Option<u32>,
    /// Counters by provider, then model, defined on first use (bounded); a request whose pair
    /// is known builds no stat name and no key.
    by_model: Rc<std::cell::RefCell<ModelCounterMap>>,
}

type ModelCounterMap = HashMap<String, HashMap<String, ModelCounters>>;

/// Most (provider, model) pairs an edge defines counters for.
const MAX_MODEL_COUNTERS: usize = 1024;

/// The counters of one (provider, model) pair.
#[derive(Clone, Copy)]
struct ModelCounters {
    requests: Option<u32>,
    errors: Option<u32>,
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    cost_micro_usd: Option<u32>,
}

impl ModelCounters {
    /// `tokenrouter.provider.<provider>.model.<model>.<what>` (names reduced to
    /// `[A-Za-z0-9_-]`, so a model's dots do not split the stat name).
    fn define(provider: &str, model: &str) -> ModelCounters {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(64)
                .collect()
        };
        let prefix = format!(
            "tokenrouter.provider.{}.model.{}",
            clean(provider),
            clean(model)
        );
        let counter = |what: &str| host::define_counter(&format!("{prefix}.{what}"));
        ModelCounters {
            requests: counter("requests"),
            errors: counter("errors"),
            input_tokens: counter("input_tokens"),
            output_tokens: counter("output_tokens"),
            cost_micro_usd: counter("cost_micro_usd"),
        }
    }
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            requests: host::define_counter("tokenrouter.requests"),
            rejected: host::define_counter("tokenrouter.rejected"),
            fallbacks: host::define_counter("tokenrouter.fallbacks"),
            failed_attempts: host::define_counter("tokenrouter.failed_attempts"),
            firewall_hits: host::define_counter("tokenrouter.firewall_hits"),
            by_model: Rc::default(),
        }
    }

    /// The counters of a (provider, model) pair; `None` once the bound is reached.
    fn model_counters(&self, provider: &str, model: &str) -> Option<ModelCounters> {
        let mut map = self.by_model.borrow_mut();
        if let Some(counters) = map.get(provider).and_then(|models| models.get(model)) {
            return Some(*counters);
        }
        if map.values().map(HashMap::len).sum::<usize>() >= MAX_MODEL_COUNTERS {
            return None;
        }
        let counters = ModelCounters::define(provider, model);
        map.entry(provider.to_string())
            .or_default()
            .insert(model.to_string(), counters);
        Some(counters)
    }

    /// Counts one finished request (a counter that would not move costs no host call).
    fn record(&self, r: &UsageRecord) {
        let count = |metric: Option<u32>, by: i64| {
            if by > 0 {
                host::increment(metric, by);
            }
        };
        count(
            self.failed_attempts,
            r.attempts
                .iter()
                .filter(|a| a.status == 0 || a.status >= 400)
                .count() as i64,
        );
        if r.attempts.len() > 1 && (200..300).contains(&r.status) {
            count(self.fallbacks, 1);
        }
        count(self.firewall_hits, r.firewall_actions.len() as i64);
        if r.provider.is_empty() {
            return;
        }
        let Some(m) = self.model_counters(&r.provider, &r.model) else {
            return;
        };
        count(m.requests, 1);
        if r.status >= 400 || r.status == 0 {
            count(m.errors, 1);
        }
        count(
            m.input_tokens,
            i64::try_from(r.input_tokens).unwrap_or(i64::MAX),
        );
        count(
            m.output_tokens,
            i64::try_from(r.output_tokens).unwrap_or(i64::MAX),
        );
        // pico-dollars → micro-dollars
        count(m.cost_micro_usd, r.cost_picos / 1_000_000);
    }
}

/// What every request context of the edge gets from the root.
#[derive(Clone, Default)]
pub struct EdgeConfig {
    pub metrics: Metrics,
    /// Body limit of this Envoy (from the plugin configuration).
    pub max_request_body_bytes: Option<u64>,
    /// Where unary calls to the control plane go (`Idempotency-Key`); `None` = not configured.
    pub control: Option<Rc<ControlCalls>>,
    /// The control plane pushes a `tr_direct_<provider>` cluster beside every provider
    /// cluster: a request with one attempt goes there, prepared and translated by the edge.
    pub direct_clusters: bool,
    /// What this Envoy's own configuration does, so the edge need not (each header write
    /// costs Envoy's worker 2 600–3 400 instructions): the bootstrap of `tokenrouter
    /// envoy-bootstrap` says so in the plugin configuration; elsewhere (an Istio gateway) all
    /// are off and the edge writes every header itself.
    pub envoy_does: EnvoyDoes,
}

/// Header writes this Envoy's configuration makes itself (see [`EdgeConfig::envoy_does`]).
#[derive(Clone, Copy, Default)]
pub struct EnvoyDoes {
    /// The route's `retry_policy.per_try_timeout` in ms: the edge sends
    /// `x-envoy-upstream-rq-per-try-timeout-ms` only when the snapshot's differs.
    pub route_per_try_timeout_ms: Option<u32>,
    /// The connection manager's `always_set_request_id_in_response`: Envoy copies the request's
    /// `x-request-id` (the gateway's id, which the edge set) into every response.
    pub request_id_in_response: bool,
    /// The route's `auto_host_rewrite`, with each direct cluster's endpoint `hostname` set to
    /// its provider's authority by the control plane: Envoy writes a direct request's
    /// `:authority`.
    pub auto_host_rewrite: bool,
}

/// The control plane's gRPC cluster and the token its edge services want.
pub struct ControlCalls {
    pub cluster: String,
    pub token: String,
}

/// How long an edge waits for an `Idempotency-Key` verdict (the control plane waits up to 25 s
/// for a request still holding the key).
const IDEMPOTENCY_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request waits for the control plane's admission before it is treated as
/// unavailable.
const ADMISSION_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// gRPC status of a call whose upstream could not be reached, and of one whose connection
/// was reset while it waited.
const GRPC_UNAVAILABLE: u32 = 14;
const GRPC_INTERNAL: u32 = 13;

/// Times an admission is asked again after its control plane went away.
const ADMISSION_RETRIES: u8 = 2;

/// Largest response kept for `Idempotency-Key` replays (larger ones are not replayed).
const MAX_IDEMPOTENT_BODY: usize = 1024 * 1024;

/// Where the request stands.
enum Stage {
    /// Authenticated; waiting for the whole body.
    AwaitingBody {
        snapshot: Rc<Snapshot>,
        max_body: u64,
    },
    /// The whole body is here; waiting for the control plane's `Idempotency-Key` verdict.
    AwaitingIdempotency {
        snapshot: Rc<Snapshot>,
        size: usize,
        token: u32,
    },
    /// Answered with the response recorded for the same `Idempotency-Key`.
    Replayed { status: u16 },
    /// Sent to a provider.
    Routed(Box<Routed>),
    /// Answered by the gateway itself with a success (`GET /v1/models`).
    Served { status: u16 },
    /// Answered by the gateway itself.
    Replied { status: u16, error: ErrorKind },
}

/// One attempt of the chain as the edge keeps it.
struct Planned {
    provider: String,
    model: String,
    price: Price,
}

struct Routed {
    /// The snapshot the request was routed with; its firewall checks the response.
    snapshot: Rc<Snapshot>,
    /// The chain, in attempt order.
    chain: Vec<Planned>,
    /// Index in `chain` of the attempt that answered (known with the response headers).
    served: usize,
    mode: Option<&'static str>,
    tier: Option<&'static str>,
    /// Full rule trace (JSON) for the log, and its bounded header form.
    /// Shared with the other requests of the same trace ([`vm::render_trace`]).
    trace_json: Rc<str>,
    trace_header: Option<Rc<str>>,
    /// Milliseconds from the request to the response headers.
    ttfb_ms: u64,
    stream: bool,
    client_wants_usage: bool,
    status: u16,
    /// The response body reached its end (not reset, not abandoned by the client).
    ended: bool,
    response: ResponseWatch,
    /// Adds the `tokenrouter` event at the end of a stream, when there may be something to say.
    annotator: Option<SseAnnotator>,
    /// The body as the client got it, for a key that stores bodies or an `Idempotency-Key`
    /// replay (bounded by [`Edge::capture_limit`]).
    client_body: Vec<u8>,
    /// `client_body` is not all of it.
    client_body_cut: bool,
    /// The response's content type (for replays).
    content_type: String,
    /// The usage a held direct answer carried, read when it was checked ([`Released`]): the
    /// client's body need not be parsed for it again.
    checked_usage: Option<Usage>,
    /// When a held direct answer was released (whole and judged): the request's end for its
    /// usage record, whose log callback follows at once, so the clock is read once for both.
    released_at_ms: Option<i64>,
    /// Set for a request sent to its provider's direct cluster: the edge does the upstream
    /// filter's work.
    direct: Option<Box<Direct>>,
}

/// A one-attempt request the edge prepared itself and sent to `tr_direct_<provider>`, a
/// cluster without the upstream filter (ARCHITECTURE.md, "Direct requests"): the provider's
/// answer is translated back here, and a non-streamed 2xx answer is held until it is whole
/// and judged, as the upstream filter does.
struct Direct {
    translator: Box<dyn Translator>,
    provider: String,
    held: Option<HeldReply>,
    /// The answer is recorded and its headers translated (a held answer is then held only
    /// because response rules check it whole: a streamed request answered with JSON).
    recorded: bool,
    /// The attempt, kept here rather than in the VM's log of attempts (which the upstream
    /// filter of a planned request reads).
    tried: attempts::Tried,
}

impl Routed {
    fn served(&self) -> Option<&Planned> {
        self.chain.get(self.served).or_else(|| self.chain.last())
    }
}

/// How the response body is watched for usage (and, when response rules apply, checked).
enum ResponseWatch {
    NotStarted,
    Json {
        copy: Vec<u8>,
        overflowed: bool,
    },
    Sse(ClientStreamObserver),
    /// Response rules apply: the headers and the whole body are held until the body ends, then
    /// checked (only then, so the no-rule path holds nothing back).
    GuardedJson {
        body: Vec<u8>,
    },
    /// Response rules apply to a stream: text passes through the firewall's stream filter;
    /// `None` for an API that does not stream (embeddings, models; the client gets an error
    /// event).
    GuardedSse(ClientStreamObserver, Option<Box<StreamFilter>>),
    /// Envoy's own plain-text error reply, replaced by this JSON envelope.
    Replace(Vec<u8>),
    Ignored,
}

pub struct Edge {
    config: EdgeConfig,
    request_id: String,
    started_ms: i64,
    key_id: String,
    /// Known once the path is recognised; recorded even for rejected requests.
    api: Option<ClientApi>,
    requested_model: String,
    stage: Stage,
    /// Firewall rules applied so far (`action:scope:name`), for the headers and the log.
    firewall_applied: Vec<String>,
    /// Warnings so far, for `x-tokenrouter-warnings` and the log.
    warnings: Vec<String>,
    key_name: String,
    workspace_id: String,
    /// The key stores request and response bodies in the log.
    store_bodies: bool,
    /// The client's `metadata` (compact JSON), for the log.
    metadata_json: String,
    /// The body as the provider got it (masks applied), for a key that stores bodies.
    request_body: Vec<u8>,
    bodies_truncated: bool,
    /// The request's `Idempotency-Key`, empty when none.
    idempotency_key: String,
    /// Set when the response was replayed: the request that produced it.
    replay_of: String,
    /// The key's requests are admitted by the control plane (balance or limits); `metered`:
    /// it has a balance, so a request that cannot be admitted is refused.
    admission: bool,
    metered: bool,
    /// The admission call in flight.
    admission_token: Option<u32>,
    /// The question of that call, kept to ask again when the control plane that got it could
    /// not answer (another replica may).
    admission_ask: Option<admission::Ask>,
    /// How many more times it may be asked again.
    admission_retries: u8,
    /// `Retry-After` of a refusal (seconds).
    retry_after: Option<u32>,
    /// The request headers as the edge leaves them (read once: every single-header read is a
    /// host call).
    headers: host::Headers,
    /// How often each of [`CLIENT_CREDENTIAL_HEADERS`] (the gateway key) occurs in Envoy's map
    /// until the edge removes them: when the request is forwarded (a direct request's provider
    /// credential replaces a lone one in one header set) or answered here.
    client_credentials: [usize; CLIENT_CREDENTIAL_HEADERS.len()],
}

impl Edge {
    pub fn new(config: EdgeConfig) -> Edge {
        let started_ms = host::now_ms();
        Edge {
            config,
            request_id: new_request_id(started_ms),
            started_ms,
            key_id: String::new(),
            api: None,
            requested_model: String::new(),
            firewall_applied: Vec::new(),
            warnings: Vec::new(),
            key_name: String::new(),
            workspace_id: String::new(),
            store_bodies: false,
            metadata_json: String::new(),
            request_body: Vec::new(),
            bodies_truncated: false,
            idempotency_key: String::new(),
            replay_of: String::new(),
            admission: false,
            metered: false,
            admission_token: None,
            admission_ask: None,
            admission_retries: ADMISSION_RETRIES,
            retry_after: None,
            headers: host::Headers::default(),
            client_credentials: [0; CLIENT_CREDENTIAL_HEADERS.len()],
            stage: Stage::Replied {
                status: 0,
                error: ErrorKind::ServiceUnavailable,
            },
        }
    }

    /// Removes the client's credential headers from Envoy's map (once), but for `replaced`:
    /// the header the provider's credential is set in next, when the client sent it once (a
    /// set replaces the first value only, so a repeated one is removed whole). Called when the
    /// request is forwarded or answered by the edge, so no later filter, access log or tracer
    /// sees the gateway key.
    fn remove_client_credentials(&mut self, replaced: Option<&str>) {
        let counts = std::mem::take(&mut self.client_credentials);
        for (name, count) in CLIENT_CREDENTIAL_HEADERS.into_iter().zip(counts) {
            if count > 0 && !(count == 1 && replaced == Some(name)) {
                host::set_request_header(name, None);
            }
        }
    }

    /// Removes a request header from Envoy's map and from the edge's copy.
    fn remove_request_header(&mut self, name: &str) {
        host::set_request_header(name, None);
        self.headers.remove(name);
    }

    fn reject(&mut self, error: GatewayError) -> Action {
        host::increment(self.config.metrics.rejected, 1);
        self.remove_client_credentials(None);
        let status = error.status();
        self.stage = Stage::Replied {
            status,
            error: error.kind,
        };
        let mut headers = vec![("x-request-id", self.request_id.clone())];
        if let Some(s) = self.retry_after {
            headers.push(("retry-after", s.to_string()));
        }
        headers.extend(self.firewall_headers());
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        host::send_json(status, &error.to_json(&self.request_id), &headers);
        Action::Pause
    }

    /// Keeps what a firewall verdict applied, for the headers and the request log.
    fn record(&mut self, verdict: &Verdict) {
        self.firewall_applied.extend(verdict.labels());
        self.warnings.extend(verdict.warnings());
    }

    /// `x-tokenrouter-firewall` and `x-tokenrouter-warnings`, when there is something to say.
    fn firewall_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if !self.firewall_applied.is_empty() {
            headers.push((
                "x-tokenrouter-firewall",
                firewall::header_value(&self.firewall_applied),
            ));
        }
        if !self.warnings.is_empty() {
            headers.push((
                "x-tokenrouter-warnings",
                firewall::header_value(&self.warnings),
            ));
        }
        headers
    }

    fn on_headers(&mut self, end_of_stream: bool) -> Result<Action, GatewayError> {
        let snapshot = vm::snapshot().ok_or_else(|| {
            GatewayError::new(
                ErrorKind::ServiceUnavailable,
                "The gateway has not received its configuration yet; try again shortly.",
            )
        })?;
        self.headers = host::request_headers();
        // The gateway key goes no further than this filter: out of Envoy's map when the
        // request is forwarded or answered here (`remove_client_credentials`), out of the
        // edge's copy once it has authenticated (rules and traces never see it).
        self.client_credentials = CLIENT_CREDENTIAL_HEADERS.map(|name| self.headers.count(name));
        let path = self.headers.value(":path").unwrap_or_default();
        let api = ClientApi::from_path(&path).ok_or_else(|| {
            GatewayError::new(ErrorKind::NotFound, format!("Unknown endpoint '{path}'."))
        })?;
        self.api = Some(api);
        if self.headers.get(":method") != Some(api.method()) {
            return Err(GatewayError::invalid(format!(
                "Use {} for {}.",
                api.method(),
                api.as_str()
            )));
        }
        let key = vm::with_key_hashes(|cache| {
            auth::authenticate_cached(
                &snapshot,
                self.headers.get("authorization"),
                self.headers.get("x-api-key"),
                cache,
            )
        })?;
        self.key_id = key.id.clone();
        self.key_name = key.name.clone();
        self.workspace_id = key.workspace_id.clone();
        self.store_bodies = key.store_bodies;
        self.admission = key.admission;
        self.metered = key.metered;
        for name in CLIENT_CREDENTIAL_HEADERS {
            self.headers.remove(name);
        }
        if api == ClientApi::Models {
            // The catalogue is answered here, from the snapshot; nothing is forwarded.
            self.stage = Stage::Served { status: 200 };
            self.remove_client_credentials(None);
            host::send_json(
                200,
                &models::list_json(&snapshot),
                &[("x-request-id", &self.request_id)],
            );
            return Ok(Action::Pause);
        }
        // Internal headers are the filter's own: a client's are dropped.
        let dropped: Vec<String> = self
            .headers
            .names()
            .filter(|n| n.starts_with("x-tr-"))
            .map(str::to_string)
            .collect();
        for name in &dropped {
            self.remove_request_header(name);
        }
        // Handled here, with the control plane; a provider never sees it (a retry by the
        // gateway is another attempt of the same request, not a new request).
        if let Some(key) = idempotency::parse_key(self.headers.get("idempotency-key"))? {
            self.idempotency_key = key;
            self.remove_request_header("idempotency-key");
        }
        if end_of_stream {
            return Err(GatewayError::invalid(
                "The request has no body; expected a JSON object.",
            ));
        }
        let max_body = self
            .config
            .max_request_body_bytes
            .map_or(snapshot.max_request_body_bytes, |own| {
                own.min(snapshot.max_request_body_bytes)
            });
        let declared = self
            .headers
            .get("content-length")
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(too_large(max_body));
        }
        self.stage = Stage::AwaitingBody { snapshot, max_body };
        Ok(Action::Pause)
    }

    fn on_body(&mut self, size: usize, end_of_stream: bool) -> Result<Action, GatewayError> {
        let Stage::AwaitingBody { snapshot, max_body } = &self.stage else {
            return Ok(Action::Continue);
        };
        let (snapshot, max_body) = (Rc::clone(snapshot), *max_body);
        if size as u64 > max_body {
            return Err(too_large(max_body));
        }
        if !end_of_stream {
            return Ok(Action::Pause);
        }
        if !self.idempotency_key.is_empty() {
            if let Some(token) = self.begin_idempotent(size) {
                self.stage = Stage::AwaitingIdempotency {
                    snapshot,
                    size,
                    token,
                };
                return Ok(Action::Pause);
            }
        }
        self.route(snapshot, size)
    }

    /// Asks the control plane for the request's `Idempotency-Key` verdict; `None` when it cannot
    /// be asked (not configured, call refused), and the request then goes on without it (the
    /// client is told in `x-tokenrouter-warnings`): a gateway whose control plane is away keeps
    /// serving.
    fn begin_idempotent(&mut self, size: usize) -> Option<u32> {
        let body = host::request_body(size).unwrap_or_default();
        let method = self.headers.get(":method").unwrap_or_default();
        let path = self.headers.get(":path").unwrap_or_default();
        let begin = IdempotencyBegin {
            key_id: self.key_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            request_sha256: idempotency::fingerprint(method, path, &body).to_vec(),
            request_id: self.request_id.clone(),
        };
        let call = self.config.control.as_ref().map(|control| {
            let auth = format!("Bearer {}", control.token);
            self.dispatch_grpc_call(
                &control.cluster,
                "tokenrouter.sync.v1.EdgeCalls",
                "BeginIdempotent",
                vec![("authorization", auth.as_bytes())],
                Some(&begin.encode_to_vec()),
                IDEMPOTENCY_CALL_TIMEOUT,
            )
        });
        match call {
            Some(Ok(token)) => Some(token),
            other => {
                log::warn!("Idempotency-Key not checked: {other:?}");
                self.idempotency_unavailable();
                None
            }
        }
    }

    /// The request goes on without its `Idempotency-Key` (and says so).
    fn idempotency_unavailable(&mut self) {
        self.idempotency_key.clear();
        self.warnings.push(
            "Idempotency-Key could not be checked (control plane unavailable); the request was \
             sent once without it."
                .into(),
        );
    }

    /// The control plane's verdict on the request's `Idempotency-Key`: go on, replay the
    /// recorded response, or refuse.
    fn on_idempotency_verdict(&mut self, token: u32, status: u32, size: usize) {
        let Stage::AwaitingIdempotency {
            snapshot,
            size: body_size,
            token: expected,
        } = &self.stage
        else {
            return;
        };
        if *expected != token {
            return;
        }
        let (snapshot, body_size) = (Rc::clone(snapshot), *body_size);
        // PROCEED is the all-default message: an empty body.
        let verdict = if status == 0 {
            let body = self
                .get_grpc_call_response_body(0, size)
                .unwrap_or_default();
            IdempotencyVerdict::decode(body.as_slice()).ok()
        } else {
            None
        };
        let outcome = verdict
            .as_ref()
            .and_then(|v| Outcome::try_from(v.outcome).ok());
        let result = match (verdict, outcome) {
            (Some(v), Some(Outcome::Replay)) => {
                self.replay(v);
                return;
            }
            (Some(v), Some(Outcome::InFlight)) => {
                Err(idempotency::in_flight(&v.original_request_id))
            }
            (Some(v), Some(Outcome::Mismatch)) => {
                Err(idempotency::mismatch(&v.original_request_id))
            }
            (Some(_), Some(Outcome::Proceed)) => self.route(snapshot, body_size),
            _ => {
                log::warn!("Idempotency-Key verdict unavailable (grpc status {status})");
                self.idempotency_unavailable();
                self.route(snapshot, body_size)
            }
        };
        match result {
            Ok(Action::Continue) => self.resume_http_request(),
            // Waiting for admission.
            Ok(_) => {}
            Err(e) => {
                // Refused before anything was sent: the claim (if any) is released by the
                // record of this request.
                self.reject(e);
            }
        }
    }

    /// Answers with the response recorded for the same key and body.
    fn replay(&mut self, v: IdempotencyVerdict) {
        self.remove_client_credentials(None);
        let status = u16::try_from(v.status).unwrap_or(200);
        self.replay_of = v.original_request_id;
        self.stage = Stage::Replayed { status };
        let content_type = if v.content_type.is_empty() {
            "application/json".to_string()
        } else {
            v.content_type
        };
        let headers = vec![
            ("content-type", content_type.as_str()),
            ("x-request-id", self.request_id.as_str()),
            ("x-tokenrouter-replay-of", self.replay_of.as_str()),
            ("idempotent-replayed", "true"),
        ];
        if let Err(e) =
            proxy_wasm::hostcalls::send_http_response(u32::from(status), headers, Some(&v.body))
        {
            log::error!("sending a replayed response failed: {e:?}");
        }
    }

    /// Parses, checks and routes the whole request body of `size` bytes, and sends it on.
    fn route(&mut self, snapshot: Rc<Snapshot>, size: usize) -> Result<Action, GatewayError> {
        let body = host::request_body(size).unwrap_or_default();
        // One clock read for the decision, the translation and the attempt's start (each read
        // is a host call).
        let now_ms = host::now_ms();
        let api = self.api.unwrap_or(ClientApi::ChatCompletions);
        let mut request = ClientRequest::parse_api(api, &body)?;
        self.requested_model = request.model.clone();
        let fw = snapshot.firewall();
        let subject = Subject::new(&self.key_id, &self.workspace_id);
        if fw.applies(Scope::Prompt, subject) || fw.applies(Scope::Metadata, subject) {
            // Before routing: a blocked prompt reaches no provider; a masked one is what the
            // provider gets.
            let mut inspection = Inspection::new(fw, subject);
            formats::request_walker(api)(request.body_mut(), &mut |scope, text| {
                inspection.check_in_place(scope, text)
            });
            let verdict = inspection.verdict();
            self.record(&verdict);
            if let Some(e) = verdict.error() {
                return Err(e);
            }
        }
        // As the provider gets it: after the firewall's masks.
        if let Some(metadata) = request.body_mut().get("metadata").filter(|m| m.is_object()) {
            self.metadata_json = serde_json::to_string(metadata).unwrap_or_default();
            if self.metadata_json.len() > MAX_STORED_METADATA {
                self.metadata_json = r#"{"_truncated":true}"#.into();
            }
        }
        let feats = features::features(api, request.body_mut(), body.len());
        let headers = &self.headers;
        let header = |name: &str| headers.get(name);
        // Read once: the kinds steer the decision, the keys go into the plan for the attempts.
        let byok_keys: Vec<(String, String)> = BYOK_HEADERS
            .iter()
            .filter_map(|(kind, h)| self.headers.value(h).map(|v| ((*kind).to_string(), v)))
            .collect();
        let byok: Vec<ProviderKind> = byok_keys
            .iter()
            .filter_map(|(k, _)| ProviderKind::parse(k))
            .collect();
        let scores = vm::scores().unwrap_or_else(|| Rc::new(ScoreBoard::default()));
        let random = REQUEST_IDS.with(|(a, _, n)| a.hash_one(n.get() ^ 0x5eed));
        let mut decision = {
            let input = RouteInput {
                api,
                model: &request.model,
                router_mode: request.router_mode.as_deref(),
                metadata: request.metadata.as_ref(),
                features: &feats,
                stream: request.stream,
                key_id: &self.key_id,
                header: &header,
                byok: &byok,
                random,
                now_ms,
            };
            routing::decide_traced(&snapshot, &scores, &input, routing::Tracing::Served)?
        };
        self.warnings.extend(decision.warnings.iter().cloned());
        let Some(first) = decision.attempts.first() else {
            return Err(GatewayError::new(
                ErrorKind::Routing,
                "No eligible providers available for this request.",
            ));
        };
        let new_body = request.upstream_body(&first.upstream_model);
        if self.store_bodies {
            self.request_body =
                bounded_copy(&new_body, MAX_STORED_BODY, &mut self.bodies_truncated);
        }
        let direct = match self.direct_cluster(&decision) {
            Some(cluster) => Some(self.send_direct(
                &cluster,
                first,
                request.stream,
                &new_body,
                size,
                &byok_keys,
                snapshot.per_try_timeout_ms,
                now_ms,
            )?),
            None => {
                self.send_planned(
                    &decision,
                    request.stream,
                    &new_body,
                    size,
                    byok_keys,
                    snapshot.per_try_timeout_ms,
                )?;
                None
            }
        };
        // No explicit `clear_route_cache`: Envoy clears the route cache itself whenever a
        // filter sets or removes a request header (its wasm context's header-map writes), and
        // the request's headers were set just above; the foreign function cost Envoy's worker
        // ≈ 5 200 instructions per request (finding 24).
        let chain = decision
            .attempts
            .iter()
            .map(|t| Planned {
                provider: t.provider.name.clone(),
                model: t.upstream_model.clone(),
                price: t.price,
            })
            .collect();
        let ask = self.admission.then(|| {
            let (output_tokens, reserve_picos) =
                admission::reservation(&snapshot, &decision.attempts, &feats);
            admission::Ask {
                key_id: self.key_id.clone(),
                request_id: self.request_id.clone(),
                input_tokens: feats.est_input_tokens,
                output_tokens,
                reserve_picos,
            }
        });
        let (trace_json, trace_header) = vm::render_trace(std::mem::take(&mut decision.trace));
        self.stage = Stage::Routed(Box::new(Routed {
            snapshot: Rc::clone(&snapshot),
            chain,
            served: 0,
            mode: decision.mode.map(|m| m.as_str()),
            tier: decision.tier.map(|t| t.as_str()),
            trace_json,
            trace_header,
            ttfb_ms: 0,
            stream: request.stream,
            client_wants_usage: request.client_wants_usage,
            status: 0,
            ended: false,
            response: ResponseWatch::NotStarted,
            annotator: None,
            client_body: Vec::new(),
            client_body_cut: false,
            content_type: String::new(),
            checked_usage: None,
            released_at_ms: None,
            direct,
        }));
        let action = match ask {
            Some(ask) => {
                let action = self.ask_admission(&ask);
                self.admission_ask = Some(ask);
                action
            }
            None => Ok(Action::Continue),
        };
        if matches!(action, Ok(Action::Continue)) {
            self.dispatched(now_ms);
        }
        action
    }

    /// The direct cluster for a decision the edge sends itself: one attempt, in the provider's
    /// own cluster, on an Envoy whose control plane pushes direct clusters.
    fn direct_cluster(&self, decision: &Decision<'_>) -> Option<String> {
        let [only] = decision.attempts.as_slice() else {
            return None;
        };
        let provider = &only.provider.name;
        (self.config.direct_clusters && routing::is_provider_cluster(&decision.cluster, provider))
            .then(|| routing::direct_cluster_name(provider))
    }

    /// Sends a request through the upstream filter (of its provider's or a chain's cluster):
    /// the plan for every attempt's filter goes into the VM, and into internal headers for a
    /// first attempt whose filter no longer finds it there.
    fn send_planned(
        &mut self,
        decision: &Decision<'_>,
        stream: bool,
        body: &[u8],
        size: usize,
        byok: Vec<(String, String)>,
        per_try_timeout_ms: u32,
    ) -> Result<(), GatewayError> {
        let api = self.api.unwrap_or(ClientApi::ChatCompletions);
        let retries = decision.attempts.len().saturating_sub(1);
        // Each attempt's upstream filter sets its provider's credential.
        self.remove_client_credentials(None);
        host::set_request_header("x-tr-cluster", Some(&decision.cluster));
        host::set_request_header(
            "x-tr-attempts",
            Some(&routing::attempts_header(&decision.attempts)),
        );
        // The upstream filter finds the plan by it (x-request-id, set in the headers callback,
        // is the same id).
        host::set_request_header("x-tr-request-id", Some(&self.request_id));
        attempts::plan(
            &self.request_id,
            attempts::Plan {
                chain: decision
                    .attempts
                    .iter()
                    .map(|t| (t.provider.name.clone(), t.upstream_model.clone()))
                    .collect(),
                credentials: decision.attempts.iter().map(credential_of).collect(),
                client_api: api.as_str().to_string(),
                stream,
                body_len: Some(body.len()),
                byok,
            },
        );
        host::set_request_header("x-tr-client-api", Some(api.as_str()));
        host::set_request_header("x-tr-stream", Some(if stream { "1" } else { "0" }));
        host::set_request_header("x-envoy-max-retries", Some(&retries.to_string()));
        self.set_per_try_timeout(per_try_timeout_ms);
        self.forward_body(size, body)
    }

    /// `x-envoy-upstream-rq-per-try-timeout-ms`, unless the route has the same.
    fn set_per_try_timeout(&self, ms: u32) {
        if self.config.envoy_does.route_per_try_timeout_ms != Some(ms) {
            host::set_request_header(
                "x-envoy-upstream-rq-per-try-timeout-ms",
                Some(&ms.to_string()),
            );
        }
    }

    /// Replaces the client's body (`size` bytes in Envoy's buffer) with the one to forward, and
    /// its `content-length` where that differs from the client's (a header set costs Envoy's
    /// worker 2 600–3 400 instructions, and a compact body with sorted keys forwarded under
    /// the client's own model name keeps its length).
    fn forward_body(&self, size: usize, body: &[u8]) -> Result<(), GatewayError> {
        let length = body.len().to_string();
        if self.headers.get("content-length") != Some(length.as_str()) {
            host::set_request_header("content-length", Some(&length));
        }
        if !host::set_request_body(size, body) {
            return Err(GatewayError::new(
                ErrorKind::ServiceUnavailable,
                "The gateway could not forward the request body.",
            ));
        }
        Ok(())
    }

    /// Sends a one-attempt request to its provider's direct cluster, prepared here as the
    /// upstream filter would: no internal headers but the cluster (which the route removes),
    /// the client's credentials and BYOK headers out, the provider's credential, authority,
    /// path and the translated body in. Returns the attempt's translator for the answer.
    #[allow(clippy::too_many_arguments)]
    fn send_direct(
        &mut self,
        cluster: &str,
        target: &Target<'_>,
        stream: bool,
        body: &[u8],
        size: usize,
        byok: &[(String, String)],
        per_try_timeout_ms: u32,
        now_ms: i64,
    ) -> Result<Box<Direct>, GatewayError> {
        let api = self.api.unwrap_or(ClientApi::ChatCompletions);
        let provider = target.provider;
        let credential =
            byok_credential(byok, provider.kind).unwrap_or_else(|| credential_of(target));
        let mut translator = translator_for(api, provider.kind)?;
        let UpstreamRequest {
            path,
            set_headers,
            default_headers,
            remove_headers,
            body: new_body,
        } = translator.request(
            body,
            &AttemptTarget {
                provider: &provider.name,
                kind: provider.kind,
                base_url: &provider.base_url,
                upstream_model: &target.upstream_model,
                stream,
                request_id: &self.request_id,
                now_unix_s: u64::try_from(now_ms / 1000).unwrap_or(0),
            },
        )?;
        // A client's own x-envoy-* headers, credential headers of any provider kind and BYOK
        // keys: only those that are there (each removal is a host call).
        let removed: Vec<String> = self
            .headers
            .names()
            .filter(|n| {
                INTERNAL_HEADERS.contains(n)
                    || CREDENTIAL_HEADERS.contains(n)
                    || BYOK_HEADERS.iter().any(|(_, h)| h == n)
                    || remove_headers.iter().any(|r| r == n)
            })
            .map(str::to_string)
            .collect();
        for name in &removed {
            self.remove_request_header(name);
        }
        let credential_header =
            (!credential.is_empty()).then(|| provider.kind.credential_header(&credential));
        self.remove_client_credentials(credential_header.as_ref().map(|(name, _)| *name));
        host::set_request_header("x-tr-cluster", Some(cluster));
        self.set_per_try_timeout(per_try_timeout_ms);
        // A header set costs Envoy's worker ≈ 3 400 instructions (`--only instructions`); the
        // provider's path is often the client's already.
        if self.headers.get(":path") != Some(path.as_str()) {
            host::set_request_header(":path", Some(&path));
        }
        if !self.config.envoy_does.auto_host_rewrite {
            host::set_request_header(":authority", Some(&provider.base_url.authority()));
        }
        for (name, value) in &default_headers {
            if !self.headers.contains(name) {
                host::set_request_header(name, Some(value));
            }
        }
        for (name, value) in &set_headers {
            host::set_request_header(name, Some(value));
        }
        if let Some((name, value)) = &credential_header {
            host::set_request_header(name, Some(value));
        }
        self.forward_body(size, new_body.as_deref().unwrap_or(body))?;
        Ok(Box::new(Direct {
            translator,
            provider: provider.name.clone(),
            held: None,
            recorded: false,
            tried: attempts::Tried::default(),
        }))
    }

    /// The routed request leaves for its provider: a direct request's one attempt starts now
    /// (the upstream filter starts each attempt of the others).
    fn dispatched(&mut self, now_ms: i64) {
        let Stage::Routed(routed) = &mut self.stage else {
            return;
        };
        if let (Some(direct), Some(p)) = (routed.direct.as_mut(), routed.chain.first()) {
            direct.tried.start(&p.provider, &p.model, now_ms);
        }
    }

    /// Asks the control plane's Rate Limit Service whether the routed request may go; the
    /// answer resumes or refuses it ([`Edge::on_admission`]).
    fn ask_admission(&mut self, ask: &admission::Ask) -> Result<Action, GatewayError> {
        let call = self.config.control.as_ref().map(|control| {
            let auth = format!("Bearer {}", control.token);
            self.dispatch_grpc_call(
                &control.cluster,
                admission::SERVICE,
                admission::METHOD,
                vec![("authorization", auth.as_bytes())],
                Some(&ask.encode()),
                ADMISSION_CALL_TIMEOUT,
            )
        });
        match call {
            Some(Ok(token)) => {
                self.admission_token = Some(token);
                Ok(Action::Pause)
            }
            other => {
                log::warn!("admission not asked: {other:?}");
                self.admission_unavailable().map(|()| Action::Continue)
            }
        }
    }

    /// The control plane cannot judge the request: a metered key's request is refused (it
    /// would go unpaid), any other goes on, saying so.
    fn admission_unavailable(&mut self) -> Result<(), GatewayError> {
        if self.metered {
            return Err(GatewayError::new(
                ErrorKind::ServiceUnavailable,
                "The balance of this key cannot be checked right now (control plane \
                 unavailable); try again shortly.",
            ));
        }
        self.warnings.push(
            "Rate limits could not be checked (control plane unavailable); the request was \
             sent without them."
                .into(),
        );
        Ok(())
    }

    /// The Rate Limit Service's answer for the routed request.
    fn on_admission(&mut self, status: u32, size: usize) {
        self.admission_token = None;
        if matches!(status, GRPC_UNAVAILABLE | GRPC_INTERNAL) && self.admission_retries > 0 {
            // The replica it went to is gone (connection refused or reset: it was killed or is
            // restarting); Envoy ejects it, so the control cluster's next host answers. The
            // control plane admits a request id once, so asking again never reserves twice.
            self.admission_retries -= 1;
            if let Some(ask) = self.admission_ask.clone() {
                log::info!("admission unavailable (grpc status {status}); asking again");
                match self.ask_admission(&ask) {
                    Ok(Action::Pause) => return,
                    Ok(_) => {
                        self.dispatched(host::now_ms());
                        self.resume_http_request();
                        return;
                    }
                    Err(e) => {
                        let _ = attempts::take(&self.request_id, host::now_ms());
                        self.reject(e);
                        return;
                    }
                }
            }
        }
        let answer = if status == 0 {
            let body = self
                .get_grpc_call_response_body(0, size)
                .unwrap_or_default();
            admission::verdict(&body)
        } else {
            Err(None)
        };
        let result = match answer {
            Ok(()) => Ok(()),
            Err(Some((error, retry_after))) => {
                self.retry_after = retry_after;
                Err(error)
            }
            Err(None) => {
                log::warn!("admission answer unavailable (grpc status {status})");
                self.admission_unavailable()
            }
        };
        match result {
            Ok(()) => {
                self.dispatched(host::now_ms());
                self.resume_http_request();
            }
            Err(e) => {
                // Nothing was sent: the plan goes.
                let _ = attempts::take(&self.request_id, host::now_ms());
                self.reject(e);
            }
        }
    }

    /// The request's usage record, without its rule trace: that stays the request's shared
    /// text until its batch is encoded ([`vm::enqueue_usage`]).
    fn usage_record(&mut self) -> UsageRecord {
        let (released_at_ms, direct_tried) = match &mut self.stage {
            Stage::Routed(routed) => (
                routed.released_at_ms,
                routed.direct.as_mut().map(|d| std::mem::take(&mut d.tried)),
            ),
            _ => (None, None),
        };
        let now_ms = released_at_ms.unwrap_or_else(host::now_ms);
        let mut r = UsageRecord {
            request_id: self.request_id.clone(),
            started_at_unix_ms: self.started_ms,
            key_id: self.key_id.clone(),
            requested_model: self.requested_model.clone(),
            client_api: self.api.map(|a| a.as_str().to_string()).unwrap_or_default(),
            latency_ms: u64::try_from(now_ms.saturating_sub(self.started_ms)).unwrap_or(0),
            key_name: self.key_name.clone(),
            workspace_id: self.workspace_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            metadata_json: self.metadata_json.clone(),
            request_body: self.request_body.clone(),
            bodies_truncated: self.bodies_truncated,
            retry_after_s: self.retry_after.unwrap_or(0),
            ..UsageRecord::default()
        };
        let api = self.api.unwrap_or(ClientApi::ChatCompletions);
        match &self.stage {
            Stage::Routed(routed) => {
                let usage = match &routed.response {
                    ResponseWatch::Json {
                        copy,
                        overflowed: false,
                    } => routed
                        .checked_usage
                        .or_else(|| usage::from_client_body(api, copy)),
                    ResponseWatch::Sse(observer) | ResponseWatch::GuardedSse(observer, _) => {
                        observer.usage()
                    }
                    ResponseWatch::GuardedJson { body } => usage::from_client_body(api, body),
                    _ => None,
                }
                .unwrap_or_default();
                let served = routed.served();
                r.provider = served.map(|p| p.provider.clone()).unwrap_or_default();
                r.model = served.map(|p| p.model.clone()).unwrap_or_default();
                r.status = u32::from(routed.status);
                r.stream = routed.stream;
                r.mode = routed.mode.unwrap_or_default().to_string();
                r.tier = routed.tier.unwrap_or_default().to_string();
                if self.store_bodies {
                    let kept = routed.client_body.len().min(MAX_STORED_BODY);
                    r.response_body = routed.client_body[..kept].to_vec();
                    r.bodies_truncated |= routed.client_body_cut || kept < routed.client_body.len();
                }
                if !self.idempotency_key.is_empty() && !routed.client_body_cut {
                    r.idempotent_response = routed.client_body.clone();
                    r.response_content_type = routed.content_type.clone();
                }
                r.ttfb_ms = routed.ttfb_ms;
                let (tried, retry_after) = match direct_tried {
                    Some(tried) => tried.close(now_ms),
                    None => attempts::take(&self.request_id, now_ms),
                };
                r.attempts = tried;
                r.retry_after_s = retry_after;
                let price = served.map(|p| p.price).unwrap_or_default();
                fill_usage(&mut r, &usage, &price);
                // Envoy's response code details, read only when needed: whose side ended it.
                let details = || host::property(&["response", "code_details"]);
                // A held direct answer that never became whole: the provider's connection
                // reset (Envoy then answered 502 itself, through the bootstrap's local-reply
                // mapper), or the client went away.
                let mut held_left = false;
                if routed.direct.as_ref().is_some_and(|d| d.held.is_some()) {
                    held_left = !details().is_some_and(|d| d.starts_with("upstream_reset"));
                    r.status = if held_left { 499 } else { 502 };
                }
                let cut = match &routed.response {
                    ResponseWatch::Sse(observer) | ResponseWatch::GuardedSse(observer, _) => {
                        observer.cut_short()
                    }
                    _ => false,
                };
                // A stream without its final event is the provider's fault (ended early, or
                // its connection reset), unless the client reset it: no filter callback ran
                // after a reset, and Envoy's response code details say whose side it was.
                let client_left = cut
                    && !routed.ended
                    && !details().is_some_and(|d| d.starts_with(UPSTREAM_RESET_DETAILS));
                if held_left {
                    r.error_type = CLIENT_CLOSED.into();
                } else if r.status >= 400 || r.status == 0 || (cut && !client_left) {
                    r.error_type = ErrorKind::Provider.type_str().into();
                } else if client_left {
                    r.error_type = CLIENT_CLOSED.into();
                }
            }
            Stage::Replied { status, error } => {
                r.status = u32::from(*status);
                r.error_type = error.type_str().into();
            }
            Stage::Served { status } => r.status = u32::from(*status),
            Stage::Replayed { status } => {
                // No provider was called, nothing is charged.
                r.status = u32::from(*status);
                r.replay_of = self.replay_of.clone();
            }
            Stage::AwaitingBody { .. } | Stage::AwaitingIdempotency { .. } => {
                // The client went away before its body arrived.
                r.error_type = CLIENT_CLOSED.into();
                r.status = 499;
            }
        }
        if let Stage::Routed(routed) = &self.stage {
            let Routed {
                snapshot, response, ..
            } = routed.as_ref();
            if let ResponseWatch::GuardedSse(_, Some(filter)) = response {
                // A stream's verdict is complete only now; its headers went out long ago.
                let verdict = filter.verdict(snapshot.firewall());
                r.firewall_actions.extend(verdict.labels());
                r.warnings.extend(verdict.warnings());
                if filter.blocked() {
                    r.error_type = ErrorKind::Firewall.type_str().into();
                }
            }
            if let ResponseWatch::GuardedSse(_, None) = response {
                r.error_type = ErrorKind::Firewall.type_str().into();
            }
        }
        r.firewall_actions
            .splice(0..0, self.firewall_applied.iter().cloned());
        r.warnings.splice(0..0, self.warnings.iter().cloned());
        if r.firewall_actions.iter().any(|a| a.starts_with("block:")) {
            r.error_type = ErrorKind::Firewall.type_str().into();
        }
        r
    }

    /// Response headers every routed request gets: request id, the provider and model that
    /// answered, mode, tier, rule trace, attempts, firewall and warnings.
    fn set_route_headers(&self) {
        let Stage::Routed(routed) = &self.stage else {
            return;
        };
        if !self.config.envoy_does.request_id_in_response {
            host::set_response_header("x-request-id", Some(&self.request_id));
        }
        if let Some(p) = routed.served() {
            host::set_response_header("x-tokenrouter-provider", Some(&p.provider));
            host::set_response_header("x-tokenrouter-model", Some(&p.model));
        }
        host::set_response_header(
            "x-tokenrouter-attempts",
            Some(&(routed.served + 1).to_string()),
        );
        if let Some(m) = routed.mode {
            host::set_response_header("x-tokenrouter-mode", Some(m));
        }
        if let Some(t) = routed.tier {
            host::set_response_header("x-tokenrouter-tier", Some(t));
        }
        if let Some(trace) = &routed.trace_header {
            host::set_response_header("x-tokenrouter-rule-trace", Some(trace));
        }
        for (name, value) in self.firewall_headers() {
            host::set_response_header(name, Some(&value));
        }
    }

    /// A direct request's answer body, before the edge's own watch: a held answer is collected
    /// until its end and then judged ([`Edge::release_direct`]); any other chunk goes through
    /// the attempt's translator. Returns the body's size in Envoy's buffer from here on and
    /// the bytes it holds, when read; `Err` with the callback's answer when nothing more is to
    /// be done now.
    fn direct_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<(usize, Option<Vec<u8>>), Action> {
        let Stage::Routed(routed) = &mut self.stage else {
            return Err(Action::Continue);
        };
        let Some(direct) = routed.direct.as_mut() else {
            return Ok((body_size, None));
        };
        let read = if body_size > 0 {
            host::response_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let Some(held) = direct.held.as_mut() else {
            return Ok(
                match direct.translator.response_body(&read, end_of_stream) {
                    ChunkOutput::Replace(out) => {
                        host::set_response_body(body_size, &out);
                        (out.len(), Some(out))
                    }
                    ChunkOutput::Unchanged => (body_size, Some(read)),
                },
            );
        };
        if !held.collect(body_size, &read, end_of_stream) {
            return Err(Action::Pause);
        }
        self.release_direct(body_size)
            .map(|(size, body)| (size, Some(body)))
            .ok_or(Action::Continue)
    }

    /// Lets a held direct answer go: translated when usable (Envoy's buffer then holds all of
    /// it: its size and bytes are returned), else as a 502 naming the provider (`None`; the
    /// client gets the envelope, nothing is watched).
    fn release_direct(&mut self, body_size: usize) -> Option<(usize, Vec<u8>)> {
        let api = self.api.unwrap_or(ClientApi::ChatCompletions);
        let Stage::Routed(routed) = &mut self.stage else {
            return None;
        };
        let direct = routed.direct.as_mut()?;
        let held = direct.held.take()?;
        if direct.recorded {
            return Some(held.pass(body_size, direct.translator.as_mut()));
        }
        direct.recorded = true;
        let tried = &mut direct.tried;
        let released_at_ms = &mut routed.released_at_ms;
        match held.release(
            body_size,
            direct.translator.as_mut(),
            &direct.provider,
            api,
            &self.request_id,
            |status, now| {
                *released_at_ms = Some(now);
                tried.answered(status, None, now);
            },
        ) {
            Released::Usable {
                size,
                body,
                content_type,
                usage,
            } => {
                routed.content_type = content_type;
                routed.checked_usage = usage;
                Some((size, body))
            }
            Released::Unusable => {
                routed.status = 502;
                routed.response = ResponseWatch::Ignored;
                routed.annotator = None;
                None
            }
        }
    }

    /// The end of a held JSON response: checks it (when response rules apply), then masks it or
    /// replaces it with a 422, and adds the `tokenrouter` annotation to a successful one.
    fn check_json_response(&mut self, body_size: usize, whole: Option<Vec<u8>>) {
        let Stage::Routed(routed) = &mut self.stage else {
            return;
        };
        let ResponseWatch::GuardedJson { body } = &mut routed.response else {
            return;
        };
        *body = whole.unwrap_or_else(|| host::response_body(body_size).unwrap_or_default());
        let api = self.api.unwrap_or(ClientApi::ChatCompletions);
        let fw = routed.snapshot.firewall();
        let mut new_body = None;
        let mut verdict = None;
        let subject = Subject::new(&self.key_id, &self.workspace_id);
        if fw.applies(Scope::Response, subject) {
            let mut inspection = Inspection::new(fw, subject);
            let mut value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            if let Some(v) = value.as_mut() {
                formats::response_walker(api)(v, &mut |scope, text| {
                    inspection.check_in_place(scope, text)
                });
            }
            let checked = inspection.verdict();
            if let Some(e) = checked.error() {
                routed.status = e.status();
                host::set_response_header(":status", Some(&e.status().to_string()));
                host::set_response_header("content-type", Some("application/json"));
                new_body = Some(e.to_json(&self.request_id));
            } else if checked
                .applied
                .iter()
                .any(|a| a.action == firewall::Action::Mask)
            {
                new_body = value.and_then(|v| serde_json::to_vec(&v).ok());
            }
            verdict = Some(checked);
        }
        let success = (200..300).contains(&routed.status);
        if let Some(v) = &verdict {
            self.record(v);
        }
        let Stage::Routed(routed) = &mut self.stage else {
            return;
        };
        let ResponseWatch::GuardedJson { body } = &routed.response else {
            return;
        };
        if success {
            if let Some(annotation) =
                annotate::object_json(&self.request_id, &self.firewall_applied, &self.warnings)
            {
                let current = new_body.as_deref().unwrap_or(body);
                if let Some(annotated) = annotate::splice_into_object(current, &annotation) {
                    new_body = Some(annotated);
                }
            }
        }
        let limit = capture_limit(self.store_bodies, &self.idempotency_key);
        if limit > 0 {
            let client = new_body.as_deref().unwrap_or(body);
            routed.client_body = bounded_copy(client, limit, &mut routed.client_body_cut);
        }
        if let Some(new_body) = new_body {
            host::set_response_body(body_size, &new_body);
        }
        for (name, value) in self.firewall_headers() {
            host::set_response_header(name, Some(&value));
        }
    }
}

/// The stored credential an attempt uses: the provider's primary, or the fallback it names.
fn credential_of(t: &Target<'_>) -> String {
    match t.credential.checked_sub(1) {
        Some(i) => t
            .provider
            .fallback_credentials
            .get(i)
            .cloned()
            .unwrap_or_default(),
        None => t.provider.credential.clone(),
    }
}

fn fill_usage(r: &mut UsageRecord, usage: &Usage, price: &Price) {
    r.input_tokens = usage.input;
    r.output_tokens = usage.output;
    r.cached_tokens = usage.cached_input;
    r.reasoning_tokens = usage.reasoning;
    r.cost_picos = cost_picos(usage, price);
}

/// What a client gets instead of a stream the firewall cannot inspect: an error event, once.
fn unsupported_stream(request_id: &str, status: &mut u16) -> Vec<u8> {
    if *status == ErrorKind::Firewall.status() {
        return Vec::new();
    }
    *status = ErrorKind::Firewall.status();
    let e = GatewayError::new(
        ErrorKind::Firewall,
        "Response firewall rules apply, and streamed responses of this API cannot be checked \
         yet; retry without streaming.",
    );
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&e.to_json(request_id));
    out.extend_from_slice(b"\n\n");
    out
}

/// How much of the response the edge keeps: enough for an `Idempotency-Key` replay, else for
/// the log of a key that stores bodies, else nothing.
fn capture_limit(store_bodies: bool, idempotency_key: &str) -> usize {
    if !idempotency_key.is_empty() {
        MAX_IDEMPOTENT_BODY
    } else if store_bodies {
        MAX_STORED_BODY
    } else {
        0
    }
}

/// The first `limit` bytes of `body`; `truncated` is set when that is not all of it.
fn bounded_copy(body: &[u8], limit: usize, truncated: &mut bool) -> Vec<u8> {
    let mut out = Vec::new();
    keep_bounded(&mut out, body, limit, truncated);
    out
}

/// Appends `more` to a kept body up to `limit` bytes.
fn keep_bounded(stored: &mut Vec<u8>, more: &[u8], limit: usize, truncated: &mut bool) {
    let room = limit.saturating_sub(stored.len());
    if more.len() > room {
        *truncated = true;
    }
    stored.extend_from_slice(&more[..more.len().min(room)]);
}

fn too_large(limit: u64) -> GatewayError {
    GatewayError::new(
        ErrorKind::RequestTooLarge,
        format!("The request body exceeds the gateway's limit of {limit} bytes."),
    )
}

thread_local! {
    static REQUEST_IDS: (RandomState, RandomState, Cell<u64>) =
        (RandomState::new(), RandomState::new(), Cell::new(0));
}

/// A 128-bit request id, unique across workers and restarts: `req_`, then 32 hex digits — the
/// request's start in ms (48 bits), then 80 random bits (keys seeded by WASI). Ids of one
/// node's requests sort by time, so the stores' primary-key index on the log grows at its end
/// instead of taking each record at a random page (finding 12 of BENCHMARKS.md).
fn new_request_id(now_ms: i64) -> String {
    REQUEST_IDS.with(|(a, b, n)| {
        let i = n.get().wrapping_add(1);
        n.set(i);
        request_id_text(now_ms, a.hash_one(i), b.hash_one(i))
    })
}

fn request_id_text(now_ms: i64, random_high: u64, random_low: u64) -> String {
    // The id's 16 bytes, big-endian: the low 48 bits of the time, then 80 random bits. Hex of
    // bytes rather than `format!("req_{ms:012x}…")`: formatting machinery cost a request's
    // context creation ≈ 1 300 instructions (natively) of its ≈ 2 300.
    let ms = u64::try_from(now_ms).unwrap_or(0).to_be_bytes();
    let low = random_low.to_be_bytes();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms[2..]);
    bytes[6..14].copy_from_slice(&random_high.to_be_bytes());
    bytes[14..].copy_from_slice(&low[6..]);
    // Into a buffer of the id's length (32 digits for 16 bytes, so it cannot fail): `hex::encode`
    // collects its digits one `char` at a time into a growing `String` (≈ 750 more native
    // instructions per request).
    let mut text = *b"req_00000000000000000000000000000000";
    hex::encode_to_slice(bytes, &mut text[4..])
        .ok()
        .and_then(|()| String::from_utf8(text.to_vec()).ok())
        .unwrap_or_default()
}

impl Context for Edge {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.admission_token == Some(token_id) {
            self.on_admission(status_code, response_size);
        } else {
            self.on_idempotency_verdict(token_id, status_code, response_size);
        }
    }
}

impl HttpContext for Edge {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        host::increment(self.config.metrics.requests, 1);
        // The gateway's request id from the start: providers see it, and so do replies Envoy
        // makes itself (the bootstrap's local_reply_config puts it in their envelope).
        host::set_request_header("x-request-id", Some(&self.request_id));
        match self.on_headers(end_of_stream) {
            Ok(action) => action,
            Err(e) => self.reject(e),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.on_body(body_size, end_of_stream) {
            Ok(action) => action,
            Err(e) => self.reject(e),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Stage::Routed(routed) = &mut self.stage else {
            return Action::Continue;
        };
        let headers = host::response_headers();
        routed.status = headers
            .get(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let now = host::now_ms();
        routed.ttfb_ms = u64::try_from(now.saturating_sub(self.started_ms)).unwrap_or(0);
        // Which attempt answered: the upstream filter's mark, else (a reply the router made
        // itself after the last attempt failed) Envoy's count where the route adds it (the
        // Istio path), or the attempts this worker started for the request.
        let marked = headers.get(ATTEMPT_HEADER);
        let number = marked
            .or(headers.get("x-envoy-attempt-count"))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| {
                match &routed.direct {
                    Some(direct) => direct.tried.started(),
                    None => attempts::started(&self.request_id),
                }
                .max(1)
            });
        // A direct request has no upstream filter to mark its answer: Envoy's response code
        // details tell a provider's 5xx from Envoy's own reply.
        let from_provider = match routed.direct {
            None => marked.is_some(),
            Some(_) => {
                routed.status < 500
                    || host::property(&["response", "code_details"]).as_deref()
                        == Some(VIA_UPSTREAM_DETAILS)
            }
        };
        let mut content_type = headers.value("content-type");
        let mut held = false;
        if let (Some(direct), true) = (routed.direct.as_mut(), from_provider) {
            // What the upstream filter does with an attempt's answer.
            let streamed = content_type
                .as_deref()
                .is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
            if (200..300).contains(&routed.status) && !routed.stream && !streamed {
                // Judged once the body is in (`release_direct`), headers included.
                // A provider that resets before it is whole makes Envoy reply without the edge:
                // the bootstrap's local-reply mapper names the provider from the direct
                // cluster's metadata.
                direct.held = Some(HeldReply::new(routed.status, content_type.clone()));
                held = true;
            } else {
                let retry_after = (routed.status == 429)
                    .then(|| headers.get("retry-after"))
                    .flatten()
                    .and_then(|v| v.trim().parse::<u32>().ok());
                direct.tried.answered(routed.status, retry_after, now);
                direct.recorded = true;
                let mutation = direct
                    .translator
                    .response_headers(routed.status, content_type.as_deref());
                content_type = Some(apply_mutation(&mutation, content_type));
            }
        }
        routed.served = number
            .saturating_sub(1)
            .min(routed.chain.len().saturating_sub(1));
        for name in [ATTEMPT_HEADER, "x-envoy-attempt-count"] {
            if headers.contains(name) {
                host::set_response_header(name, None);
            }
        }
        if !from_provider && routed.status >= 500 {
            // Envoy's own reply (connect failure, reset, per-try timeout on the last attempt):
            // the seeds' envelope, naming the provider.
            let provider = routed
                .served()
                .map(|p| p.provider.clone())
                .unwrap_or_default();
            // The envelope's type and code agree with the status line (503: connect failure
            // or reset; 504: per-try timeout).
            let kind = match routed.status {
                504 => ErrorKind::Timeout,
                503 => ErrorKind::ServiceUnavailable,
                _ => ErrorKind::Provider,
            };
            if kind.status() != routed.status {
                routed.status = kind.status();
                host::set_response_header(":status", Some(&routed.status.to_string()));
            }
            let e = GatewayError {
                kind,
                message: format!(
                    "Provider '{provider}' did not answer (connect failure, reset or timeout) after {number} attempt(s)."
                ),
                provider: Some(provider.clone()),
                raw: None,
            };
            host::set_response_header("content-type", Some("application/json"));
            host::set_response_header("content-length", None);
            routed.response = ResponseWatch::Replace(e.to_json(&self.request_id));
            self.set_route_headers();
            return Action::Continue;
        }
        routed.content_type = content_type.unwrap_or_default();
        let sse = routed.content_type.starts_with("text/event-stream");
        // A response without a body has no text to check (and no body callback to resume it).
        let checked = !end_of_stream
            && (200..300).contains(&routed.status)
            && routed.snapshot.firewall().applies(
                Scope::Response,
                Subject::new(&self.key_id, &self.workspace_id),
            );
        // Rules applied or warnings given so far go into the body too (`annotate`).
        let annotated = !end_of_stream
            && (200..300).contains(&routed.status)
            && (!self.firewall_applied.is_empty() || !self.warnings.is_empty());
        let guarded = checked || (annotated && !sse);
        let api = self.api.unwrap_or(ClientApi::ChatCompletions);
        if sse && (checked || annotated) {
            routed.annotator = Some(SseAnnotator::new(api));
        }
        routed.response = if !(200..300).contains(&routed.status) {
            ResponseWatch::Ignored
        } else if checked && sse {
            host::set_response_header("content-length", None);
            let strip = routed.stream && !routed.client_wants_usage;
            ResponseWatch::GuardedSse(
                ClientStreamObserver::new(api, strip),
                StreamFilter::new(
                    api,
                    Subject::new(&self.key_id, &self.workspace_id),
                    &self.request_id,
                )
                .map(Box::new),
            )
        } else if guarded {
            host::set_response_header("content-length", None);
            ResponseWatch::GuardedJson { body: Vec::new() }
        } else if sse {
            let strip = routed.stream && !routed.client_wants_usage;
            if strip || annotated {
                host::set_response_header("content-length", None);
            }
            ResponseWatch::Sse(ClientStreamObserver::new(api, strip))
        } else {
            ResponseWatch::Json {
                copy: Vec::new(),
                overflowed: false,
            }
        };
        let hold = matches!(routed.response, ResponseWatch::GuardedJson { .. });
        if let (true, Some(direct)) = (hold && !held, routed.direct.as_mut()) {
            // Checked whole: collected here (translated at its end), not in Envoy's buffer,
            // so the translator sees every byte once.
            direct.held = Some(HeldReply::new(routed.status, None));
            held = true;
        }
        self.set_route_headers();
        if held && end_of_stream {
            // Nothing more comes: judged as it is (an empty answer is unusable).
            self.release_direct(0);
            return Action::Continue;
        }
        if hold || held {
            // Held until the body is checked: a blocked answer becomes a 422, an unusable one
            // a 502.
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // A direct request's answer is translated (or held and judged) first: the watch below
        // sees what the client gets.
        let (body_size, mut chunk) = match self.direct_body(body_size, end_of_stream) {
            Ok(translated) => translated,
            Err(action) => return action,
        };
        let mut read = |size: usize| -> Vec<u8> {
            chunk.take().unwrap_or_else(|| {
                if size > 0 {
                    host::response_body(size).unwrap_or_default()
                } else {
                    Vec::new()
                }
            })
        };
        let Stage::Routed(routed) = &mut self.stage else {
            return Action::Continue;
        };
        routed.ended |= end_of_stream;
        match &mut routed.response {
            ResponseWatch::Json { copy, overflowed } => {
                if copy.len() + body_size > MAX_RESPONSE_COPY {
                    *overflowed = true;
                    copy.clear();
                } else if !*overflowed && body_size > 0 {
                    copy.extend_from_slice(&read(body_size));
                }
                let limit = capture_limit(self.store_bodies, &self.idempotency_key);
                if limit > 0 {
                    let chunk = if *overflowed || body_size == 0 {
                        read(body_size)
                    } else {
                        copy.get(copy.len().saturating_sub(body_size)..)
                            .unwrap_or_default()
                            .to_vec()
                    };
                    keep_bounded(
                        &mut routed.client_body,
                        &chunk,
                        limit,
                        &mut routed.client_body_cut,
                    );
                }
            }
            ResponseWatch::Sse(observer) => {
                let chunk = read(body_size);
                let out = observer.feed(&chunk, end_of_stream);
                let limit = capture_limit(self.store_bodies, &self.idempotency_key);
                if routed.annotator.is_none() && limit == 0 {
                    if let ChunkOutput::Replace(out) = out {
                        host::set_response_body(body_size, &out);
                    }
                } else {
                    let out = match out {
                        ChunkOutput::Unchanged => chunk,
                        ChunkOutput::Replace(out) => out,
                    };
                    let out = match routed.annotator.as_mut() {
                        Some(annotator) => annotator.feed(out, end_of_stream, || {
                            annotate::object_json(
                                &self.request_id,
                                &self.firewall_applied,
                                &self.warnings,
                            )
                        }),
                        None => out,
                    };
                    keep_bounded(
                        &mut routed.client_body,
                        &out,
                        limit,
                        &mut routed.client_body_cut,
                    );
                    host::set_response_body(body_size, &out);
                }
            }
            ResponseWatch::GuardedSse(observer, filter) => {
                let chunk = read(body_size);
                let observed = match observer.feed(&chunk, end_of_stream) {
                    ChunkOutput::Unchanged => chunk,
                    ChunkOutput::Replace(out) => out,
                };
                let mut out = match filter {
                    Some(filter) => {
                        filter.feed(routed.snapshot.firewall(), &observed, end_of_stream)
                    }
                    None => unsupported_stream(&self.request_id, &mut routed.status),
                };
                if let (Some(annotator), Some(filter)) = (routed.annotator.as_mut(), filter) {
                    let fw = routed.snapshot.firewall();
                    out = annotator.feed(out, end_of_stream, || {
                        if filter.blocked() {
                            // The error event names the rule; nothing follows it.
                            return None;
                        }
                        let verdict = filter.verdict(fw);
                        let mut applied = self.firewall_applied.clone();
                        applied.extend(verdict.labels());
                        let mut warnings = self.warnings.clone();
                        warnings.extend(verdict.warnings());
                        annotate::object_json(&self.request_id, &applied, &warnings)
                    });
                }
                keep_bounded(
                    &mut routed.client_body,
                    &out,
                    capture_limit(self.store_bodies, &self.idempotency_key),
                    &mut routed.client_body_cut,
                );
                host::set_response_body(body_size, &out);
            }
            ResponseWatch::GuardedJson { .. } => {
                if !end_of_stream {
                    // Envoy buffers the body until its end.
                    return Action::Pause;
                }
                let whole = chunk.take();
                self.check_json_response(body_size, whole);
            }
            ResponseWatch::Replace(envelope) => {
                if !end_of_stream {
                    host::set_response_body(body_size, &[]);
                    return Action::Continue;
                }
                let envelope = std::mem::take(envelope);
                host::set_response_body(body_size, &envelope);
            }
            ResponseWatch::NotStarted | ResponseWatch::Ignored => {}
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let record = self.usage_record();
        self.config.metrics.record(&record);
        let trace = match &self.stage {
            Stage::Routed(routed) => Some(Rc::clone(&routed.trace_json)),
            _ => None,
        };
        vm::enqueue_usage(record, trace);
    }
}

/// HTTP context of a root without a valid role: refuses traffic instead of passing it unchecked.
pub struct Unavailable;

impl Context for Unavailable {}

impl HttpContext for Unavailable {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let e = GatewayError::new(
            ErrorKind::ServiceUnavailable,
            "The gateway filter is not configured.",
        );
        host::send_json(e.status(), &e.to_json(""), &[]);
        Action::Pause
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_start_with_the_time_and_sort_by_it() {
        let id = request_id_text(1_764_900_000_000, u64::MAX, 0x1234_5678);
        assert_eq!(id, "req_019aec3cd100ffffffffffffffff5678");
        assert_eq!(id.len(), 4 + 32);
        let earlier = request_id_text(1_764_900_000_000, 0xffff, 0xffff);
        let later = request_id_text(1_764_900_000_001, 0, 0);
        assert!(earlier < later);
        // A clock that is not set (or before 1970) still gives a well-formed id.
        assert_eq!(&request_id_text(-5, 1, 2)[..16], "req_000000000000");
        // The digits are the ones `format!` gives.
        for (ms, high, low) in [
            (0, 0, 0),
            (1, u64::MAX, u64::MAX),
            (0xfff_ffff_ffff, 0x0123_4567_89ab_cdef, 0xabcd_ef01),
            (i64::MAX, 0x8000_0000_0000_0000, 0x1_0000),
        ] {
            let want = format!(
                "req_{:012x}{high:016x}{:04x}",
                u64::try_from(ms).unwrap_or(0) & 0xffff_ffff_ffff,
                low & 0xffff
            );
            assert_eq!(request_id_text(ms, high, low), want);
        }
    }
}
