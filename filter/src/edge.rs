//! The edge (downstream) filter: one context per client request.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tokenrouter_engine::money::{cost_picos, Price};
use tokenrouter_engine::request::{ChatRequest, ClientApi};
use tokenrouter_engine::usage::{self, ChunkOutput, OpenAiStreamObserver, Usage};
use tokenrouter_engine::{auth, routing, ErrorKind, GatewayError, Snapshot};
use tokenrouter_proto::sync::v1::UsageRecord;

use crate::{host, vm};

/// Largest non-streaming response body we copy to read its `usage` (the body itself is never
/// held back from the client).
const MAX_RESPONSE_COPY: usize = 8 * 1024 * 1024;

/// Envoy stats the edge defines (visible on the admin `/stats` endpoint).
#[derive(Clone, Default)]
pub struct Metrics {
    requests: Option<u32>,
    rejected: Option<u32>,
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            requests: host::define_counter("tokenrouter.requests"),
            rejected: host::define_counter("tokenrouter.rejected"),
        }
    }
}

/// What every request context of the edge gets from the root.
#[derive(Clone, Default)]
pub struct EdgeConfig {
    pub metrics: Metrics,
    /// Body limit of this Envoy (from the plugin configuration).
    pub max_request_body_bytes: Option<u64>,
}

/// Where the request stands.
enum Stage {
    /// Authenticated; waiting for the whole body.
    AwaitingBody {
        snapshot: Rc<Snapshot>,
        max_body: u64,
    },
    /// Sent to a provider.
    Routed(Routed),
    /// Answered by the gateway itself.
    Replied { status: u16, error: ErrorKind },
}

struct Routed {
    provider: String,
    model: String,
    price: Price,
    stream: bool,
    client_wants_usage: bool,
    status: u16,
    response: ResponseWatch,
}

/// How the response body is watched for usage.
enum ResponseWatch {
    NotStarted,
    Json { copy: Vec<u8>, overflowed: bool },
    Sse(OpenAiStreamObserver),
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
}

impl Edge {
    pub fn new(config: EdgeConfig) -> Edge {
        Edge {
            config,
            request_id: new_request_id(),
            started_ms: host::now_ms(),
            key_id: String::new(),
            api: None,
            requested_model: String::new(),
            stage: Stage::Replied {
                status: 0,
                error: ErrorKind::ServiceUnavailable,
            },
        }
    }

    fn reject(&mut self, error: GatewayError) -> Action {
        host::increment(self.config.metrics.rejected, 1);
        let status = error.status();
        self.stage = Stage::Replied {
            status,
            error: error.kind,
        };
        host::send_json(
            status,
            &error.to_json(&self.request_id),
            &[("x-request-id", &self.request_id)],
        );
        Action::Pause
    }

    fn on_headers(&mut self, end_of_stream: bool) -> Result<Action, GatewayError> {
        let snapshot = vm::snapshot().ok_or_else(|| {
            GatewayError::new(
                ErrorKind::ServiceUnavailable,
                "The gateway has not received its configuration yet; try again shortly.",
            )
        })?;
        let path = host::request_header(":path").unwrap_or_default();
        let api = ClientApi::from_path(&path).ok_or_else(|| {
            GatewayError::new(ErrorKind::NotFound, format!("Unknown endpoint '{path}'."))
        })?;
        self.api = Some(api);
        if host::request_header(":method").as_deref() != Some("POST") {
            return Err(GatewayError::invalid(format!(
                "Use POST for {}.",
                api.as_str()
            )));
        }
        let key = auth::authenticate(
            &snapshot,
            host::request_header("authorization").as_deref(),
            host::request_header("x-api-key").as_deref(),
        )?;
        self.key_id = key.id.clone();
        // The gateway key goes no further than this filter.
        host::set_request_header("authorization", None);
        host::set_request_header("x-api-key", None);
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
        let declared = host::request_header("content-length").and_then(|v| v.parse::<u64>().ok());
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
        let body = host::request_body(size).unwrap_or_default();
        let api = self.api.unwrap_or(ClientApi::ChatCompletions);
        let mut request = ChatRequest::parse(&body)?;
        self.requested_model = request.model.clone();
        let target = routing::resolve(&snapshot, &request.model)?;
        routing::check_pair(api, &target)?;
        let new_body = request.upstream_body(&target.upstream_model);
        let provider = &target.provider;
        host::set_request_header("x-tr-cluster", Some(&provider.cluster));
        host::set_request_header("x-tr-provider", Some(&provider.name));
        host::set_request_header("x-tr-model", Some(&target.upstream_model));
        host::set_request_header("x-tr-request-id", Some(&self.request_id));
        host::set_request_header("content-length", Some(&new_body.len().to_string()));
        if !host::set_request_body(size, &new_body) {
            return Err(GatewayError::new(
                ErrorKind::ServiceUnavailable,
                "The gateway could not forward the request body.",
            ));
        }
        host::clear_route_cache();
        self.stage = Stage::Routed(Routed {
            provider: provider.name.clone(),
            model: target.upstream_model.clone(),
            price: target.price,
            stream: request.stream,
            client_wants_usage: request.client_wants_usage,
            status: 0,
            response: ResponseWatch::NotStarted,
        });
        Ok(Action::Continue)
    }

    fn usage_record(&self) -> UsageRecord {
        let mut r = UsageRecord {
            request_id: self.request_id.clone(),
            started_at_unix_ms: self.started_ms,
            key_id: self.key_id.clone(),
            requested_model: self.requested_model.clone(),
            client_api: self.api.map(|a| a.as_str().to_string()).unwrap_or_default(),
            latency_ms: u64::try_from(host::now_ms().saturating_sub(self.started_ms)).unwrap_or(0),
            ..UsageRecord::default()
        };
        match &self.stage {
            Stage::Routed(routed) => {
                let usage = match &routed.response {
                    ResponseWatch::Json {
                        copy,
                        overflowed: false,
                    } => usage::from_openai_body(copy),
                    ResponseWatch::Sse(observer) => observer.usage,
                    _ => None,
                }
                .unwrap_or_default();
                r.provider = routed.provider.clone();
                r.model = routed.model.clone();
                r.status = u32::from(routed.status);
                r.stream = routed.stream;
                fill_usage(&mut r, &usage, &routed.price);
                if routed.status >= 400 || routed.status == 0 {
                    r.error_type = ErrorKind::Provider.type_str().into();
                }
            }
            Stage::Replied { status, error } => {
                r.status = u32::from(*status);
                r.error_type = error.type_str().into();
            }
            Stage::AwaitingBody { .. } => {
                // The client went away before its body arrived.
                r.error_type = "client_closed_request".into();
                r.status = 499;
            }
        }
        r
    }
}

fn fill_usage(r: &mut UsageRecord, usage: &Usage, price: &Price) {
    r.input_tokens = usage.input;
    r.output_tokens = usage.output;
    r.cached_tokens = usage.cached_input;
    r.reasoning_tokens = usage.reasoning;
    r.cost_picos = cost_picos(usage, price);
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

/// A 128-bit request id, unique across workers and restarts (random keys seeded by WASI).
fn new_request_id() -> String {
    REQUEST_IDS.with(|(a, b, n)| {
        let i = n.get().wrapping_add(1);
        n.set(i);
        format!("req_{:016x}{:016x}", a.hash_one(i), b.hash_one(i))
    })
}

impl Context for Edge {}

impl HttpContext for Edge {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        host::increment(self.config.metrics.requests, 1);
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Stage::Routed(routed) = &mut self.stage else {
            return Action::Continue;
        };
        routed.status = host::response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let sse = host::response_header("content-type")
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        routed.response = if !(200..300).contains(&routed.status) {
            ResponseWatch::Ignored
        } else if sse {
            let strip = routed.stream && !routed.client_wants_usage;
            if strip {
                host::set_response_header("content-length", None);
            }
            ResponseWatch::Sse(OpenAiStreamObserver::new(strip))
        } else {
            ResponseWatch::Json {
                copy: Vec::new(),
                overflowed: false,
            }
        };
        host::set_response_header("x-request-id", Some(&self.request_id));
        host::set_response_header("x-tokenrouter-provider", Some(&routed.provider));
        host::set_response_header("x-tokenrouter-model", Some(&routed.model));
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Stage::Routed(routed) = &mut self.stage else {
            return Action::Continue;
        };
        match &mut routed.response {
            ResponseWatch::Json { copy, overflowed } => {
                if copy.len() + body_size > MAX_RESPONSE_COPY {
                    *overflowed = true;
                    copy.clear();
                } else if !*overflowed && body_size > 0 {
                    copy.extend_from_slice(&host::response_body(body_size).unwrap_or_default());
                }
            }
            ResponseWatch::Sse(observer) => {
                let chunk = if body_size > 0 {
                    host::response_body(body_size).unwrap_or_default()
                } else {
                    Vec::new()
                };
                if let ChunkOutput::Replace(out) = observer.feed(&chunk, end_of_stream) {
                    host::set_response_body(body_size, &out);
                }
            }
            ResponseWatch::NotStarted | ResponseWatch::Ignored => {}
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        vm::enqueue_usage(self.usage_record().encode_to_vec());
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
