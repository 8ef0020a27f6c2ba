//! Translation between the client's API and the provider's wire format, per attempt.
//!
//! The edge reads the client's body in its own format only to route it and passes it on in that
//! format with `x-tr-client-api`. In the provider's cluster the upstream filter builds one
//! [`Translator`] per attempt with [`translator_for`], asks it for the upstream request
//! ([`Translator::request`]) and feeds it the provider's response ([`Translator::response_headers`],
//! [`Translator::response_body`]), which comes back in the client's format, SSE included, chunk by
//! chunk.
//!
//! # Layout
//! - [`canonical`]: the neutral conversation / reply / stream-event model.
//! - [`openai_chat`], [`openai_responses`], [`anthropic`], [`gemini`]: typed serde models of one
//!   wire API each, with its reader and writer to and from [`canonical`].
//! - [`sse`]: incremental SSE splitting and writing.
//! - [`errors`]: provider error bodies → the gateway's envelope.
//!
//! Pairs whose client format is the provider's own (Chat Completions → OpenAI-like kinds and
//! Azure, Messages → Anthropic, Embeddings → OpenAI-like kinds and Azure) pass the body through:
//! only the path and headers change, errors are re-shaped, and a stream that ends without its
//! terminal event gets an error event appended. Every other pair goes through [`canonical`],
//! which keeps the code at one reader and one writer per format (3 + 3) instead of one module per
//! pair (9).

pub mod anthropic;
pub mod canonical;
pub mod errors;
pub mod gemini;
pub mod gemini_embeddings;
pub mod openai_chat;
pub mod openai_responses;
pub mod sse;

use crate::error::{ErrorKind, GatewayError};
use crate::request::ClientApi;
use crate::upstream::{BaseUrl, ProviderKind};
use crate::usage::ChunkOutput;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

use canonical::{Event, Reply, ReplyBuilder};
use errors::{ClientError, MAX_ERROR_BODY_BYTES};
use sse::SseSplitter;

/// Azure OpenAI `api-version` used when the provider's base URL carries none
/// (`https://<resource>.openai.azure.com?api-version=2025-01-01-preview` overrides it).
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// Anthropic API version sent with every Messages request.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Largest non-streamed provider body buffered for re-shaping; beyond it the attempt fails with
/// a 502 in the client's format.
pub const MAX_RESPONSE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Why a non-streamed 2xx provider reply cannot be given to the client, or `None` when it can:
/// a reply that is not JSON (by its content type or its bytes), was cut short, or is larger
/// than [`MAX_RESPONSE_BODY_BYTES`] is a failed attempt (the next one in the chain is tried).
pub fn unusable_reply(
    provider: &str,
    content_type: Option<&str>,
    body: &[u8],
    overflowed: bool,
) -> Option<String> {
    check_reply::<IgnoredAny>(provider, content_type, body, overflowed).err()
}

/// [`unusable_reply`] as a `Result`: `Err` with why the reply cannot be given to the client;
/// `Ok` with the reply's top-level `usage` member read as `U`, when the one pass that checks
/// the body could read it (a reply without one, or whose object the pass could not take apart
/// as `U` wants, e.g. with `usage` twice, gives `None`: its usage is then read from the body
/// as before). `crate::usage::check_client_reply` picks `U` by the client's API.
pub fn check_reply<U: DeserializeOwned>(
    provider: &str,
    content_type: Option<&str>,
    body: &[u8],
    overflowed: bool,
) -> Result<Option<U>, String> {
    if let Some(message) = refused_unread(provider, content_type, overflowed) {
        return Err(message);
    }
    /// Every other member is skipped as `serde::de::IgnoredAny` would, so this checks the whole
    /// body in the same pass.
    #[derive(Deserialize)]
    struct Object<U> {
        #[serde(default = "Option::default")]
        usage: Option<U>,
    }
    // Only an object: a derived struct would also take an array, its members as the fields.
    let object = body.trim_ascii_start().first() == Some(&b'{');
    if object {
        if let Ok(parsed) = crate::json::from_slice::<Object<U>>(body) {
            return Ok(parsed.usage);
        }
    }
    // Not an object with at most one `usage`: checked again to say what it is.
    match crate::json::from_slice::<serde::de::IgnoredAny>(body) {
        Err(e) => Err(format!(
            "Provider '{provider}' answered 2xx with a body that is not valid JSON ({e})."
        )),
        Ok(_) if !object => Err(format!(
            "Provider '{provider}' answered 2xx with JSON that is not an object."
        )),
        Ok(_) => Ok(None),
    }
}

/// What refuses a reply before its bytes are read: its size or its content type.
fn refused_unread(provider: &str, content_type: Option<&str>, overflowed: bool) -> Option<String> {
    if overflowed {
        return Some(format!(
            "The reply from provider '{provider}' exceeds {MAX_RESPONSE_BODY_BYTES} bytes."
        ));
    }
    let content_type = content_type.unwrap_or("").trim();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Some(format!(
            "Provider '{provider}' answered 2xx with content type {content_type:?} instead of JSON."
        ));
    }
    None
}

/// The client-format error (HTTP 502, `provider_error`, naming the provider) for a 2xx reply
/// [`unusable_reply`] refused.
pub fn unusable_reply_body(
    client: ClientApi,
    provider: &str,
    message: String,
    request_id: &str,
) -> Vec<u8> {
    ClientError::provider_failure(provider, message).body(client, request_id)
}

/// Where one attempt goes, as the upstream filter knows it.
#[derive(Clone, Copy, Debug)]
pub struct AttemptTarget<'a> {
    /// Registered provider name (errors name it).
    pub provider: &'a str,
    pub kind: ProviderKind,
    pub base_url: &'a BaseUrl,
    /// Model name the provider receives (Azure: the deployment).
    pub upstream_model: &'a str,
    /// The client asked for a stream.
    pub stream: bool,
    /// The gateway's request id; reply ids are derived from it and error bodies carry it.
    pub request_id: &'a str,
    /// Unix seconds, for `created` / `created_at` in translated replies.
    pub now_unix_s: u64,
}

/// What the upstream filter sends instead of the client's request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// `:path`, query included.
    pub path: String,
    pub set_headers: Vec<(String, String)>,
    /// Headers to set only when the request does not carry them (a Messages client's own
    /// `anthropic-version` wins over our default).
    pub default_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    /// New body; `None` sends the body unchanged.
    pub body: Option<Vec<u8>>,
}

/// Response header changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeaderMutation {
    pub set_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
}

/// One attempt's translation, holding its streaming state.
pub trait Translator {
    /// The upstream request for the client's body (in the client's format, model already
    /// rewritten by the edge). A body the translation cannot express is a 400.
    fn request(
        &mut self,
        client_body: &[u8],
        target: &AttemptTarget<'_>,
    ) -> Result<UpstreamRequest, GatewayError>;

    /// Whether [`Translator::request`] reads the client's body. When it does not, the upstream
    /// filter lets the body stream through instead of buffering it.
    fn needs_request_body(&self) -> bool {
        true
    }

    /// Called once with the provider's status and content type, before any body chunk.
    fn response_headers(
        &mut self,
        status: u16,
        content_type: Option<&str>,
    ) -> ResponseHeaderMutation;

    /// Called with every body chunk. Never fails: once headers are on their way, failures
    /// (bad provider JSON, a broken stream) become an error body or error event in the
    /// client's format.
    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput;
}

/// The provider wire formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    OpenAiChat,
    Anthropic,
    Gemini,
}

fn wire_of(kind: ProviderKind) -> Wire {
    match kind {
        ProviderKind::Anthropic => Wire::Anthropic,
        ProviderKind::Gemini => Wire::Gemini,
        ProviderKind::OpenAi
        | ProviderKind::Mistral
        | ProviderKind::DeepSeek
        | ProviderKind::Azure
        | ProviderKind::OpenAiCompatible => Wire::OpenAiChat,
    }
}

/// How a (client API, provider kind) pair is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pairing {
    /// Same wire format: bodies pass through.
    Passthrough,
    /// Through the canonical form.
    Hub,
    GeminiEmbeddings,
}

/// How the gateway serves a (client API, provider kind) pair; a 422 `routing_error` for pairs
/// it cannot serve (embeddings on Anthropic, `GET /v1/models`, which is never forwarded). The
/// one place that decides which pairs exist.
fn pairing(client: ClientApi, kind: ProviderKind) -> Result<Pairing, GatewayError> {
    match (client, wire_of(kind)) {
        (ClientApi::ChatCompletions, Wire::OpenAiChat)
        | (ClientApi::Messages, Wire::Anthropic)
        | (ClientApi::Embeddings, Wire::OpenAiChat) => Ok(Pairing::Passthrough),
        (ClientApi::ChatCompletions | ClientApi::Responses | ClientApi::Messages, _) => {
            Ok(Pairing::Hub)
        }
        (ClientApi::Embeddings, Wire::Gemini) => Ok(Pairing::GeminiEmbeddings),
        (ClientApi::Embeddings, _) => Err(GatewayError::new(
            ErrorKind::Routing,
            format!("Provider kind '{kind}' does not serve embeddings through this gateway."),
        )),
        (ClientApi::Models, _) => Err(GatewayError::new(
            ErrorKind::Routing,
            "GET /v1/models is answered by the gateway, not forwarded.",
        )),
    }
}

/// Whether the gateway serves requests of `client` on a provider of `kind`: [`translator_for`]'s
/// answer without building the translator (the routing decision asks it of every candidate).
pub fn check_pairing(client: ClientApi, kind: ProviderKind) -> Result<(), GatewayError> {
    pairing(client, kind).map(|_| ())
}

/// The translator for a (client API, provider kind) pair; a 422 `routing_error` for pairs the
/// gateway cannot serve ([`check_pairing`]).
pub fn translator_for(
    client: ClientApi,
    kind: ProviderKind,
) -> Result<Box<dyn Translator>, GatewayError> {
    Ok(match pairing(client, kind)? {
        Pairing::Passthrough => Box::new(Passthrough::new(client, kind)),
        Pairing::Hub => Box::new(Hub::new(client, kind)),
        Pairing::GeminiEmbeddings => Box::new(gemini_embeddings::GeminiEmbeddings::default()),
    })
}

/// Path of an operation for an OpenAI-style provider: the base URL's path replaces the
/// client's `/v1`; Azure uses deployment URLs with an `api-version`.
fn openai_path(target: &AttemptTarget<'_>, op: &str) -> Result<String, GatewayError> {
    let base = target.base_url;
    if target.kind != ProviderKind::Azure {
        return Ok([base.path.as_str(), "/", op].concat());
    }
    let version = base
        .query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api-version=")))
        .unwrap_or(AZURE_DEFAULT_API_VERSION);
    Ok(format!(
        "{}/openai/deployments/{}/{op}?api-version={version}",
        base.path,
        path_segment(target.upstream_model)?
    ))
}

/// A model name as one path segment: letters, digits and `-._~` pass, anything else is refused
/// rather than escaped (no provider's model names need more).
fn path_segment(model: &str) -> Result<&str, GatewayError> {
    let ok = !model.is_empty()
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if ok {
        Ok(model)
    } else {
        Err(GatewayError::invalid(format!(
            "Model name '{model}' cannot be used in the provider's URL."
        )))
    }
}

/// What the translator knows about the attempt once the request went out.
#[derive(Clone, Debug, Default)]
struct AttemptInfo {
    provider: String,
    model: String,
    request_id: String,
    now_unix_s: u64,
    stream: bool,
}

impl AttemptInfo {
    fn from(target: &AttemptTarget<'_>) -> AttemptInfo {
        AttemptInfo {
            provider: target.provider.to_string(),
            model: target.upstream_model.to_string(),
            request_id: target.request_id.to_string(),
            now_unix_s: target.now_unix_s,
            stream: target.stream,
        }
    }

    /// A reply id for the client's format, derived from the request id.
    fn reply_id(&self, prefix: &str) -> String {
        let id = self
            .request_id
            .strip_prefix("req_")
            .unwrap_or(&self.request_id);
        format!("{prefix}{id}")
    }
}

/// A bounded copy of a body we must see whole.
#[derive(Debug, Default)]
struct BodyBuffer {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl BodyBuffer {
    fn push(&mut self, chunk: &[u8], limit: usize) {
        if self.bytes.len() + chunk.len() > limit {
            self.overflowed = true;
            let room = limit.saturating_sub(self.bytes.len());
            self.bytes
                .extend_from_slice(&chunk[..room.min(chunk.len())]);
        } else {
            self.bytes.extend_from_slice(chunk);
        }
    }
}

fn error_headers() -> ResponseHeaderMutation {
    ResponseHeaderMutation {
        set_headers: vec![("content-type".into(), "application/json".into())],
        remove_headers: vec!["content-length".into()],
    }
}

/// The terminal marker of a client-format stream, watched on pass-through streams.
fn is_terminal(client: ClientApi, event: &sse::SseEvent) -> bool {
    match client {
        ClientApi::ChatCompletions => event.data.starts_with(b"[DONE]"),
        ClientApi::Messages => {
            event.event.as_deref() == Some("message_stop")
                || event.event.as_deref() == Some("error")
        }
        _ => false,
    }
}

/// A pair whose client format is the provider's own.
struct Passthrough {
    client: ClientApi,
    kind: ProviderKind,
    info: AttemptInfo,
    state: PassState,
}

enum PassState {
    Pending,
    /// 2xx JSON: forwarded untouched.
    Body,
    /// 2xx SSE: forwarded untouched while watching for the terminal event.
    Stream {
        splitter: SseSplitter,
        terminated: bool,
        /// Last two bytes forwarded, so an appended error event starts on a fresh event.
        tail: [u8; 2],
    },
    /// Non-2xx: buffered and re-shaped into the envelope.
    Error {
        status: u16,
        body: BodyBuffer,
    },
}

impl Passthrough {
    fn new(client: ClientApi, kind: ProviderKind) -> Passthrough {
        Passthrough {
            client,
            kind,
            info: AttemptInfo::default(),
            state: PassState::Pending,
        }
    }
}

impl Translator for Passthrough {
    fn needs_request_body(&self) -> bool {
        false
    }

    fn request(
        &mut self,
        _client_body: &[u8],
        target: &AttemptTarget<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.info = AttemptInfo::from(target);
        let mut req = UpstreamRequest::default();
        match (self.client, self.kind) {
            (ClientApi::Messages, _) => {
                req.path = anthropic::messages_path(target.base_url);
                req.default_headers
                    .push(("anthropic-version".into(), ANTHROPIC_VERSION.into()));
            }
            (ClientApi::Embeddings, _) => req.path = openai_path(target, "embeddings")?,
            _ => req.path = openai_path(target, "chat/completions")?,
        }
        Ok(req)
    }

    fn response_headers(
        &mut self,
        status: u16,
        content_type: Option<&str>,
    ) -> ResponseHeaderMutation {
        if !(200..300).contains(&status) {
            self.state = PassState::Error {
                status,
                body: BodyBuffer::default(),
            };
            return error_headers();
        }
        self.state = if content_type.is_some_and(|c| c.starts_with("text/event-stream")) {
            PassState::Stream {
                splitter: SseSplitter::default(),
                terminated: false,
                tail: [b'\n'; 2],
            }
        } else {
            PassState::Body
        };
        ResponseHeaderMutation::default()
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput {
        match &mut self.state {
            PassState::Pending | PassState::Body => ChunkOutput::Unchanged,
            PassState::Stream {
                splitter,
                terminated,
                tail,
            } => {
                let broken = match splitter.feed(chunk, end_of_stream) {
                    Ok(events) => {
                        *terminated |= events.iter().any(|e| is_terminal(self.client, e));
                        None
                    }
                    Err(e) => Some(e.message),
                };
                let broken = broken.or_else(|| {
                    (end_of_stream && !*terminated).then(|| {
                        format!(
                            "The stream from provider '{}' ended before it completed.",
                            self.info.provider
                        )
                    })
                });
                let before = *tail;
                for &b in chunk {
                    *tail = [tail[1], b];
                }
                match broken {
                    None => ChunkOutput::Unchanged,
                    Some(message) => {
                        // From here on nothing more is parsed; the client gets the error event.
                        self.state = PassState::Body;
                        let e = ClientError::provider_failure(&self.info.provider, message);
                        let mut out = chunk.to_vec();
                        let mut ends = before.to_vec();
                        ends.extend_from_slice(chunk);
                        if !ends.ends_with(b"\n\n") {
                            out.extend_from_slice(if ends.ends_with(b"\n") {
                                b"\n"
                            } else {
                                b"\n\n"
                            });
                        }
                        write_stream_error(self.client, &e, &self.info, 0, &mut out);
                        ChunkOutput::Replace(out)
                    }
                }
            }
            PassState::Error { status, body } => {
                body.push(chunk, MAX_ERROR_BODY_BYTES);
                if !end_of_stream {
                    return ChunkOutput::Replace(Vec::new());
                }
                let e = ClientError::from_provider(&self.info.provider, *status, &body.bytes);
                ChunkOutput::Replace(e.body(self.client, &self.info.request_id))
            }
        }
    }
}

/// Writes a client-format stream error event (for pass-through streams, which have no encoder).
fn write_stream_error(
    client: ClientApi,
    e: &ClientError,
    info: &AttemptInfo,
    sequence_number: u64,
    out: &mut Vec<u8>,
) {
    match client {
        ClientApi::Messages => anthropic::write_stream_error(e, &info.request_id, out),
        ClientApi::Responses => openai_responses::write_stream_error(e, sequence_number, out),
        _ => openai_chat::write_stream_error(e, &info.request_id, out),
    }
}

/// Reads a provider's stream events into canonical events.
enum Decoder {
    OpenAiChat(openai_chat::StreamDecoder),
    Anthropic(anthropic::StreamDecoder),
    Gemini(gemini::StreamDecoder),
}

impl Decoder {
    fn new(wire: Wire) -> Decoder {
        match wire {
            Wire::OpenAiChat => Decoder::OpenAiChat(openai_chat::StreamDecoder::default()),
            Wire::Anthropic => Decoder::Anthropic(anthropic::StreamDecoder::default()),
            Wire::Gemini => Decoder::Gemini(gemini::StreamDecoder::default()),
        }
    }

    /// Canonical events of one provider SSE event; `Err` carries the provider's in-stream error.
    fn event(&mut self, e: &sse::SseEvent, out: &mut Vec<Event>) -> Result<(), ClientError> {
        match self {
            Decoder::OpenAiChat(d) => d.event(e, out),
            Decoder::Anthropic(d) => d.event(e, out),
            Decoder::Gemini(d) => d.event(e, out),
        }
    }

    /// The provider's stream ended (Gemini has no terminal event: its last chunk carries the
    /// finish reason).
    fn end(&mut self, out: &mut Vec<Event>) {
        if let Decoder::Gemini(d) = self {
            d.end(out);
        }
    }
}

/// Writes canonical events as the client's stream.
enum Encoder {
    Chat(openai_chat::StreamEncoder),
    Responses(openai_responses::StreamEncoder),
    Messages(anthropic::StreamEncoder),
}

impl Encoder {
    fn new(client: ClientApi, info: &AttemptInfo) -> Encoder {
        match client {
            ClientApi::Responses => Encoder::Responses(openai_responses::StreamEncoder::new(
                info.reply_id("resp_"),
                info.model.clone(),
                info.now_unix_s,
            )),
            ClientApi::Messages => Encoder::Messages(anthropic::StreamEncoder::new(
                info.reply_id("msg_"),
                info.model.clone(),
            )),
            _ => Encoder::Chat(openai_chat::StreamEncoder::new(
                info.reply_id("chatcmpl-"),
                info.model.clone(),
                info.now_unix_s,
            )),
        }
    }

    fn event(&mut self, e: Event, out: &mut Vec<u8>) {
        match self {
            Encoder::Chat(w) => w.event(e, out),
            Encoder::Responses(w) => w.event(e, out),
            Encoder::Messages(w) => w.event(e, out),
        }
    }

    fn error(&mut self, e: &ClientError, request_id: &str, out: &mut Vec<u8>) {
        match self {
            Encoder::Chat(w) => w.error(e, request_id, out),
            Encoder::Responses(w) => w.error(e, out),
            Encoder::Messages(_) => anthropic::write_stream_error(e, request_id, out),
        }
    }
}

/// A pair translated through [`canonical`].
struct Hub {
    client: ClientApi,
    kind: ProviderKind,
    info: AttemptInfo,
    state: HubState,
}

/// A provider stream being translated.
struct StreamState {
    splitter: SseSplitter,
    decoder: Decoder,
    /// `None` when the client asked for JSON: events are collected instead.
    encoder: Option<Encoder>,
    collected: ReplyBuilder,
    /// The provider's terminal event was seen.
    ended: bool,
}

enum HubState {
    Pending,
    /// Non-2xx: buffered and re-shaped into the envelope.
    Error {
        status: u16,
        body: BodyBuffer,
    },
    /// 2xx JSON: buffered (bounded), re-shaped whole.
    Json(BodyBuffer),
    /// 2xx SSE, translated event by event (boxed: much larger than the other states).
    Stream(Box<StreamState>),
    /// The response was answered (or failed); later chunks are dropped.
    Done,
}

impl Hub {
    fn new(client: ClientApi, kind: ProviderKind) -> Hub {
        Hub {
            client,
            kind,
            info: AttemptInfo::default(),
            state: HubState::Pending,
        }
    }

    /// The client's reply body for a whole canonical reply.
    fn client_reply(&self, reply: Reply) -> Vec<u8> {
        let info = &self.info;
        let v = match self.client {
            ClientApi::Responses => openai_responses::write_reply(
                &info.reply_id("resp_"),
                &info.model,
                info.now_unix_s,
                reply,
            ),
            ClientApi::Messages => {
                anthropic::write_reply(&info.reply_id("msg_"), &info.model, reply)
            }
            _ => openai_chat::write_reply(
                &info.reply_id("chatcmpl-"),
                &info.model,
                info.now_unix_s,
                reply,
            ),
        };
        v.to_string().into_bytes()
    }

    fn fail_json(&mut self, message: String) -> ChunkOutput {
        self.state = HubState::Done;
        let e = ClientError::provider_failure(&self.info.provider, message);
        ChunkOutput::Replace(e.body(self.client, &self.info.request_id))
    }

    fn stream_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput {
        let HubState::Stream(stream) = &mut self.state else {
            return ChunkOutput::Unchanged;
        };
        let StreamState {
            splitter,
            decoder,
            encoder,
            collected,
            ended,
        } = stream.as_mut();
        let mut events = Vec::new();
        let mut failure = match splitter.feed(chunk, end_of_stream) {
            Ok(sse_events) => sse_events
                .iter()
                .find_map(|e| decoder.event(e, &mut events).err())
                .map(|mut e| {
                    // Decoders do not know the provider's name.
                    e.provider.clone_from(&self.info.provider);
                    e
                }),
            Err(e) => Some(ClientError::provider_failure(
                &self.info.provider,
                e.message,
            )),
        };
        if end_of_stream && failure.is_none() {
            decoder.end(&mut events);
        }
        let mut out = Vec::new();
        for e in events {
            *ended |= e == Event::End;
            match encoder {
                Some(w) => w.event(e, &mut out),
                None => collected.push(e),
            }
        }
        if end_of_stream && failure.is_none() && !*ended {
            failure = Some(ClientError::provider_failure(
                &self.info.provider,
                format!(
                    "The stream from provider '{}' ended before it completed.",
                    self.info.provider
                ),
            ));
        }
        if let Some(e) = failure {
            match encoder {
                Some(w) => w.error(&e, &self.info.request_id, &mut out),
                None => out = e.body(self.client, &self.info.request_id),
            }
            self.state = HubState::Done;
            return ChunkOutput::Replace(out);
        }
        if encoder.is_none() && end_of_stream {
            let reply = std::mem::take(&mut collected.reply);
            self.state = HubState::Done;
            return ChunkOutput::Replace(self.client_reply(reply));
        }
        ChunkOutput::Replace(out)
    }
}

impl Translator for Hub {
    fn request(
        &mut self,
        client_body: &[u8],
        target: &AttemptTarget<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.info = AttemptInfo::from(target);
        let conversation = match self.client {
            ClientApi::Responses => openai_responses::read_request(client_body)?,
            ClientApi::Messages => anthropic::read_request(client_body)?,
            _ => openai_chat::read_request(client_body)?,
        };
        let mut req = UpstreamRequest {
            remove_headers: vec!["content-length".into()],
            ..UpstreamRequest::default()
        };
        let body = match wire_of(self.kind) {
            Wire::OpenAiChat => {
                req.path = openai_path(target, "chat/completions")?;
                openai_chat::write_request(&conversation, target.upstream_model)
            }
            Wire::Anthropic => {
                req.path = anthropic::messages_path(target.base_url);
                req.set_headers
                    .push(("anthropic-version".into(), ANTHROPIC_VERSION.into()));
                anthropic::write_request(&conversation, target.upstream_model)?
            }
            Wire::Gemini => {
                req.path = gemini::path(
                    target.base_url,
                    path_segment(target.upstream_model)?,
                    conversation.stream,
                );
                gemini::write_request(&conversation)?
            }
        };
        let body = body.to_string().into_bytes();
        req.set_headers
            .push(("content-length".into(), body.len().to_string()));
        req.set_headers
            .push(("content-type".into(), "application/json".into()));
        req.body = Some(body);
        Ok(req)
    }

    fn response_headers(
        &mut self,
        status: u16,
        content_type: Option<&str>,
    ) -> ResponseHeaderMutation {
        if !(200..300).contains(&status) {
            self.state = HubState::Error {
                status,
                body: BodyBuffer::default(),
            };
            return error_headers();
        }
        let sse = content_type.is_some_and(|c| c.starts_with("text/event-stream"));
        let wire = wire_of(self.kind);
        let client_type = if self.info.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        self.state = if sse {
            HubState::Stream(Box::new(StreamState {
                splitter: SseSplitter::default(),
                decoder: Decoder::new(wire),
                encoder: self
                    .info
                    .stream
                    .then(|| Encoder::new(self.client, &self.info)),
                collected: ReplyBuilder::default(),
                ended: false,
            }))
        } else {
            HubState::Json(BodyBuffer::default())
        };
        ResponseHeaderMutation {
            set_headers: vec![("content-type".into(), client_type.into())],
            remove_headers: vec!["content-length".into()],
        }
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput {
        match &mut self.state {
            HubState::Pending => ChunkOutput::Unchanged,
            HubState::Done => ChunkOutput::Replace(Vec::new()),
            HubState::Error { status, body } => {
                body.push(chunk, MAX_ERROR_BODY_BYTES);
                if !end_of_stream {
                    return ChunkOutput::Replace(Vec::new());
                }
                let e = ClientError::from_provider(&self.info.provider, *status, &body.bytes);
                self.state = HubState::Done;
                ChunkOutput::Replace(e.body(self.client, &self.info.request_id))
            }
            HubState::Json(body) => {
                body.push(chunk, MAX_RESPONSE_BODY_BYTES);
                if body.overflowed {
                    return self.fail_json(format!(
                        "The reply from provider '{}' exceeds {MAX_RESPONSE_BODY_BYTES} bytes.",
                        self.info.provider
                    ));
                }
                if !end_of_stream {
                    return ChunkOutput::Replace(Vec::new());
                }
                let bytes = std::mem::take(&mut body.bytes);
                let reply = match wire_of(self.kind) {
                    Wire::OpenAiChat => openai_chat::read_reply(&bytes),
                    Wire::Anthropic => anthropic::read_reply(&bytes),
                    Wire::Gemini => gemini::read_reply(&bytes),
                };
                let reply = match reply {
                    Ok(r) => r,
                    Err(message) => {
                        return self.fail_json(format!(
                            "Provider '{}' sent a reply the gateway cannot read: {message}",
                            self.info.provider
                        ))
                    }
                };
                self.state = HubState::Done;
                if self.info.stream {
                    // The client asked for a stream and the provider answered whole: stream it.
                    let mut encoder = Encoder::new(self.client, &self.info);
                    let mut out = Vec::new();
                    for e in reply.into_events() {
                        encoder.event(e, &mut out);
                    }
                    return ChunkOutput::Replace(out);
                }
                ChunkOutput::Replace(self.client_reply(reply))
            }
            HubState::Stream(_) => self.stream_chunk(chunk, end_of_stream),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn unusable_replies_are_named() {
        let json = br#"{"id":"x","choices":[]}"#;
        /// Content type, body, overflowed, a part of the reason (`None`: usable).
        type Case<'a> = (Option<&'a str>, &'a [u8], bool, Option<&'a str>);
        let cases: [Case; 8] = [
            (Some("application/json"), json, false, None),
            (Some("application/json; charset=utf-8"), json, false, None),
            (Some("application/problem+json"), json, false, None),
            (
                Some("text/html"),
                b"<html></html>",
                false,
                Some("content type"),
            ),
            (None, json, false, Some("content type")),
            (
                Some("application/json"),
                br#"{"id":"x","choi"#,
                false,
                Some("not valid JSON"),
            ),
            (
                Some("application/json"),
                b"[1]",
                false,
                Some("not an object"),
            ),
            (Some("application/json"), json, true, Some("exceeds")),
        ];
        for (content_type, body, overflowed, expected) in cases {
            let got = unusable_reply("openai", content_type, body, overflowed);
            match (expected, &got) {
                (None, None) => {}
                (Some(part), Some(message)) => {
                    assert!(message.contains(part), "{message}");
                    assert!(message.contains("'openai'"), "{message}");
                }
                _ => panic!("{content_type:?} {body:?}: {got:?}"),
            }
        }
        let body = unusable_reply_body(ClientApi::Messages, "openai", "bad".into(), "req_1");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "provider_error");
        assert_eq!(v["error"]["provider"], "openai");
        assert_eq!(v["error"]["code"], 502);
    }

    fn target<'a>(kind: ProviderKind, base: &'a BaseUrl, stream: bool) -> AttemptTarget<'a> {
        AttemptTarget {
            provider: "p1",
            kind,
            base_url: base,
            upstream_model: "m1",
            stream,
            request_id: "req_abc",
            now_unix_s: 1,
        }
    }

    fn out(o: ChunkOutput, chunk: &[u8]) -> Vec<u8> {
        match o {
            ChunkOutput::Unchanged => chunk.to_vec(),
            ChunkOutput::Replace(b) => b,
        }
    }

    #[test]
    fn every_pair_has_a_translator_or_a_typed_422() {
        use ClientApi::*;
        for client in ClientApi::ALL {
            for kind in ProviderKind::ALL {
                let want_ok = match client {
                    ChatCompletions | Responses | Messages => true,
                    Embeddings => wire_of(kind) != Wire::Anthropic,
                    Models => false,
                };
                match translator_for(client, kind) {
                    Ok(_) => assert!(want_ok, "{client:?} {kind}"),
                    Err(e) => {
                        assert!(!want_ok, "{client:?} {kind}: {}", e.message);
                        assert_eq!(e.status(), 422, "{client:?} {kind}");
                    }
                }
                let checked = check_pairing(client, kind).map_err(|e| e.message);
                let built = translator_for(client, kind)
                    .map(|_| ())
                    .map_err(|e| e.message);
                assert_eq!(checked, built, "{client:?} {kind}");
            }
        }
    }

    #[test]
    fn first_token_is_forwarded_before_the_stream_ends() {
        let base = BaseUrl::parse("https://api.anthropic.com").unwrap();
        let mut t = translator_for(ClientApi::ChatCompletions, ProviderKind::Anthropic).unwrap();
        let body = br#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        t.request(body, &target(ProviderKind::Anthropic, &base, true))
            .unwrap();
        t.response_headers(200, Some("text/event-stream"));
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n";
        let delta = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel";
        t.response_body(start, false);
        // Half an event: nothing to say yet.
        assert!(
            !String::from_utf8(out(t.response_body(delta, false), delta))
                .unwrap()
                .contains("Hel")
        );
        let rest = b"lo\"}}\n\n";
        let got = String::from_utf8(out(t.response_body(rest, false), rest)).unwrap();
        assert!(got.contains(r#""content":"Hello""#), "{got}");
    }

    #[test]
    fn provider_errors_keep_their_status_in_the_clients_shape() {
        let base = BaseUrl::parse("https://h/v1").unwrap();
        let provider_body = br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        for client in [
            ClientApi::ChatCompletions,
            ClientApi::Responses,
            ClientApi::Messages,
        ] {
            let mut t = translator_for(client, ProviderKind::OpenAi).unwrap();
            let body = match client {
                ClientApi::Responses => br#"{"model":"m1","input":"x"}"#.to_vec(),
                _ => br#"{"model":"m1","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#
                    .to_vec(),
            };
            t.request(&body, &target(ProviderKind::OpenAi, &base, false))
                .unwrap();
            let h = t.response_headers(429, Some("application/json"));
            assert!(h.remove_headers.contains(&"content-length".to_string()));
            let (a, b) = provider_body.split_at(10);
            assert_eq!(out(t.response_body(a, false), a), b"");
            let v: serde_json::Value =
                serde_json::from_slice(&out(t.response_body(b, true), b)).unwrap();
            assert_eq!(v["error"]["type"], "rate_limit_error", "{client:?}");
            assert_eq!(v["error"]["http_status"], 429);
            assert_eq!(v["error"]["message"], "slow down");
            assert_eq!(v["error"]["provider"], "p1");
            assert_eq!(v["request_id"], "req_abc");
        }
    }

    #[test]
    fn oversized_provider_reply_is_a_502_not_a_truncated_body() {
        let base = BaseUrl::parse("https://api.anthropic.com").unwrap();
        let mut t = translator_for(ClientApi::ChatCompletions, ProviderKind::Anthropic).unwrap();
        t.request(
            br#"{"model":"m1","messages":[{"role":"user","content":"x"}]}"#,
            &target(ProviderKind::Anthropic, &base, false),
        )
        .unwrap();
        t.response_headers(200, Some("application/json"));
        let big = vec![b' '; MAX_RESPONSE_BODY_BYTES + 1];
        let v: serde_json::Value =
            serde_json::from_slice(&out(t.response_body(&big, false), &big)).unwrap();
        assert_eq!(v["error"]["http_status"], 502);
        assert_eq!(out(t.response_body(b"more", true), b"more"), b"");
    }

    #[test]
    fn unreadable_provider_json_is_a_502_in_the_clients_shape() {
        let base = BaseUrl::parse("https://g").unwrap();
        let mut t = translator_for(ClientApi::Messages, ProviderKind::Gemini).unwrap();
        t.request(
            br#"{"model":"m1","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
            &target(ProviderKind::Gemini, &base, false),
        )
        .unwrap();
        t.response_headers(200, Some("application/json"));
        let v: serde_json::Value =
            serde_json::from_slice(&out(t.response_body(b"<html>", true), b"")).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["error"]["http_status"].as_u64()),
            (Some("error"), Some(502))
        );
    }

    #[test]
    fn json_reply_is_streamed_when_the_client_asked_for_a_stream() {
        let base = BaseUrl::parse("https://api.anthropic.com").unwrap();
        let mut t = translator_for(ClientApi::ChatCompletions, ProviderKind::Anthropic).unwrap();
        t.request(
            br#"{"model":"m1","messages":[{"role":"user","content":"x"}],"stream":true}"#,
            &target(ProviderKind::Anthropic, &base, true),
        )
        .unwrap();
        let h = t.response_headers(200, Some("application/json"));
        assert!(h
            .set_headers
            .contains(&("content-type".into(), "text/event-stream".into())));
        let reply = br#"{"content":[{"type":"text","text":"hey"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}"#;
        let got = String::from_utf8(out(t.response_body(reply, true), reply)).unwrap();
        assert!(
            got.contains(r#""content":"hey""#) && got.ends_with("data: [DONE]\n\n"),
            "{got}"
        );
    }

    #[test]
    fn provider_paths() {
        // (kind, base URL, client, stream, want path)
        let cases = [
            (
                ProviderKind::OpenAi,
                "https://api.openai.com/v1",
                ClientApi::ChatCompletions,
                false,
                "/v1/chat/completions",
            ),
            (
                ProviderKind::DeepSeek,
                "https://api.deepseek.com",
                ClientApi::Responses,
                false,
                "/chat/completions",
            ),
            (
                ProviderKind::Azure,
                "https://r.openai.azure.com",
                ClientApi::Embeddings,
                false,
                "/openai/deployments/m1/embeddings?api-version=2024-10-21",
            ),
            (
                ProviderKind::Anthropic,
                "https://api.anthropic.com/v1",
                ClientApi::Messages,
                false,
                "/v1/messages",
            ),
            (
                ProviderKind::Anthropic,
                "https://proxy/anthropic",
                ClientApi::ChatCompletions,
                false,
                "/anthropic/v1/messages",
            ),
            (
                ProviderKind::Gemini,
                "https://generativelanguage.googleapis.com/v1beta",
                ClientApi::ChatCompletions,
                true,
                "/v1beta/models/m1:streamGenerateContent?alt=sse",
            ),
        ];
        for (kind, base, client, stream, want) in cases {
            let base = BaseUrl::parse(base).unwrap();
            let body = match client {
                ClientApi::Responses | ClientApi::Embeddings => {
                    format!(r#"{{"model":"m1","input":"x","stream":{stream}}}"#)
                }
                _ => format!(
                    r#"{{"model":"m1","messages":[{{"role":"user","content":"x"}}],"stream":{stream}}}"#
                ),
            };
            let mut t = translator_for(client, kind).unwrap();
            let r = t
                .request(body.as_bytes(), &target(kind, &base, stream))
                .unwrap();
            assert_eq!(r.path, want, "{kind} {client:?}");
        }
    }

    /// Found by fuzzing (`fuzz/`, target `translate_response`): token counts near `u64::MAX`
    /// in a provider's reply overflowed when added up (Gemini's output + thinking tokens, the
    /// `total_tokens` of Chat Completions and Responses replies): a panic in debug builds, a
    /// wrapped count in release builds.
    #[test]
    fn huge_provider_token_counts_saturate() {
        let max = u64::MAX;
        let cases: [(ClientApi, ProviderKind, &str, &str, &str); 3] = [
            (
                ClientApi::ChatCompletions,
                ProviderKind::Gemini,
                r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":18446744073709551615,"thoughtsTokenCount":1}}"#,
                "/usage/completion_tokens",
                "/usage/total_tokens",
            ),
            (
                ClientApi::ChatCompletions,
                ProviderKind::Anthropic,
                r#"{"content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":18446744073709551615,"output_tokens":1}}"#,
                "/usage/prompt_tokens",
                "/usage/total_tokens",
            ),
            (
                ClientApi::Responses,
                ProviderKind::Anthropic,
                r#"{"content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":18446744073709551615,"output_tokens":1}}"#,
                "/usage/input_tokens",
                "/usage/total_tokens",
            ),
        ];
        for (client, kind, reply, count, total) in cases {
            let base = BaseUrl::parse("https://h").unwrap();
            let mut t = translator_for(client, kind).unwrap();
            let body = match client {
                ClientApi::Responses => br#"{"model":"m1","input":"x"}"#.to_vec(),
                _ => br#"{"model":"m1","messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            };
            t.request(&body, &target(kind, &base, false)).unwrap();
            t.response_headers(200, Some("application/json"));
            let got = out(t.response_body(reply.as_bytes(), true), b"");
            let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
            assert_eq!(v.pointer(count), Some(&max.into()), "{client:?} {kind}");
            assert_eq!(v.pointer(total), Some(&max.into()), "{client:?} {kind}");
        }
    }

    #[test]
    fn model_names_that_cannot_be_a_path_segment_are_400() {
        let base = BaseUrl::parse("https://g").unwrap();
        let mut t = translator_for(ClientApi::ChatCompletions, ProviderKind::Gemini).unwrap();
        let mut tg = target(ProviderKind::Gemini, &base, false);
        tg.upstream_model = "../../admin";
        let e = t
            .request(
                br#"{"model":"x","messages":[{"role":"user","content":"x"}]}"#,
                &tg,
            )
            .unwrap_err();
        assert_eq!(e.status(), 400);
    }
}
