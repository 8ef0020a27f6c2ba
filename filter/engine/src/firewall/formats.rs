//! Where the texts are in each client API's bodies.
//!
//! A walker visits every text of a body that the firewall must see, as `&mut String`, with its
//! scope; the caller checks (and masks in place) each one. Adding a client API means adding
//! one walker per body kind (request, response, stream event) and one arm in
//! [`request_walker`] / [`response_walker`] / [`stream_walker`].
//!
//! Texts visited, per client API (the edge sees requests and responses in the client's format):
//! - Chat Completions request: every message's `content` (string, or the `text`/`refusal` of its
//!   parts) for every role (system, developer, user, assistant, tool), assistant
//!   `tool_calls[].function.arguments` and the legacy `function_call.arguments` → prompt;
//!   string values of `metadata` → metadata. Response: each choice's `message.content`,
//!   `refusal` and call arguments. `chat.completion.chunk` events: the same fields under
//!   `delta`, each a stream of its own per choice (and per tool call).
//! - Responses request: `instructions`, `input` (string, or items' content parts, `arguments`,
//!   `output`), `metadata`. Response: `output[]` content text and `arguments`.
//! - Messages request: `system`, content blocks (`text`, `tool_result.content`, every string of
//!   `tool_use.input`), `metadata`. Response: `content` blocks.
//! - Embeddings request: `input`. Responses and Messages streams have no walker yet.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::stream::{StreamGuard, TextStream};
use super::{Firewall, Scope};
use crate::error::GatewayError;
use crate::request::ClientApi;
use crate::usage::{event_data, find_event_end};

/// Visits one text with its scope.
pub type Visit<'v> = dyn FnMut(Scope, &mut String) + 'v;

/// Visits every text of a request body.
pub type RequestWalker = fn(&mut Map<String, Value>, &mut Visit<'_>);
/// Visits every text of a (non-streamed) response body.
pub type ResponseWalker = fn(&mut Value, &mut Visit<'_>);
/// Visits every text of one stream event, keyed by the stream it belongs to.
pub type StreamWalker = fn(&mut Value, &mut dyn FnMut(Slot, &mut String));

/// The request walker of a client API.
pub fn request_walker(api: ClientApi) -> RequestWalker {
    match api {
        ClientApi::ChatCompletions => chat_completions_request,
        ClientApi::Responses => responses_request,
        ClientApi::Messages => messages_request,
        ClientApi::Embeddings => embeddings_request,
        ClientApi::Models => |_, _| {},
    }
}

/// The response walker of a client API.
pub fn response_walker(api: ClientApi) -> ResponseWalker {
    match api {
        ClientApi::ChatCompletions => chat_completions_response,
        ClientApi::Responses => responses_response,
        ClientApi::Messages => messages_response,
        // Vectors and model lists carry no text a rule could match.
        ClientApi::Embeddings | ClientApi::Models => |_, _| {},
    }
}

/// The stream-event walker of a client API; `None` where streams are not inspected yet (the
/// edge then refuses to stream unchecked text when response rules apply).
pub fn stream_walker(api: ClientApi) -> Option<StreamWalker> {
    match api {
        ClientApi::ChatCompletions => Some(chat_completions_chunk),
        ClientApi::Responses | ClientApi::Messages | ClientApi::Embeddings | ClientApi::Models => {
            None
        }
    }
}

fn visit_string(v: &mut Value, scope: Scope, visit: &mut Visit<'_>) {
    if let Value::String(s) = v {
        visit(scope, s);
    }
}

/// A message `content`: a string or an array of parts.
fn visit_content(content: &mut Value, scope: Scope, visit: &mut Visit<'_>) {
    match content {
        Value::String(s) => visit(scope, s),
        Value::Array(parts) => {
            for part in parts.iter_mut().filter_map(Value::as_object_mut) {
                for field in ["text", "refusal"] {
                    if let Some(v) = part.get_mut(field) {
                        visit_string(v, scope, visit);
                    }
                }
            }
        }
        _ => {}
    }
}

/// `tool_calls[].function.arguments` and `function_call.arguments` of a message or delta.
fn visit_calls(message: &mut Map<String, Value>, scope: Scope, visit: &mut Visit<'_>) {
    if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for call in calls {
            if let Some(args) = call.pointer_mut("/function/arguments") {
                visit_string(args, scope, visit);
            }
        }
    }
    if let Some(args) = message
        .get_mut("function_call")
        .and_then(|f| f.get_mut("arguments"))
    {
        visit_string(args, scope, visit);
    }
}

/// OpenAI Chat Completions request.
pub fn chat_completions_request(body: &mut Map<String, Value>, visit: &mut Visit<'_>) {
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        for message in messages.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(content) = message.get_mut("content") {
                visit_content(content, Scope::Prompt, visit);
            }
            visit_calls(message, Scope::Prompt, visit);
        }
    }
    visit_metadata(body, visit);
}

/// OpenAI Chat Completions response (`chat.completion`).
pub fn chat_completions_response(body: &mut Value, visit: &mut Visit<'_>) {
    let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices {
        if let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut) {
            for field in ["content", "refusal"] {
                if let Some(v) = message.get_mut(field) {
                    visit_content(v, Scope::Response, visit);
                }
            }
            visit_calls(message, Scope::Response, visit);
        }
    }
}

/// Every string inside `v` (objects and arrays walked), e.g. Anthropic `tool_use.input`.
fn visit_all_strings(v: &mut Value, scope: Scope, visit: &mut Visit<'_>) {
    match v {
        Value::String(s) => visit(scope, s),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| visit_all_strings(i, scope, visit)),
        Value::Object(o) => o
            .values_mut()
            .for_each(|i| visit_all_strings(i, scope, visit)),
        _ => {}
    }
}

fn visit_metadata(body: &mut Map<String, Value>, visit: &mut Visit<'_>) {
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        for value in metadata.values_mut() {
            visit_string(value, Scope::Metadata, visit);
        }
    }
}

/// OpenAI Responses request: `instructions`, `input` (a string, or items: message `content`,
/// `function_call.arguments`, `function_call_output.output`), `metadata`.
pub fn responses_request(body: &mut Map<String, Value>, visit: &mut Visit<'_>) {
    if let Some(v) = body.get_mut("instructions") {
        visit_string(v, Scope::Prompt, visit);
    }
    match body.get_mut("input") {
        Some(Value::String(s)) => visit(Scope::Prompt, s),
        Some(Value::Array(items)) => {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(content) = item.get_mut("content") {
                    visit_content(content, Scope::Prompt, visit);
                }
                for field in ["arguments", "output"] {
                    if let Some(v) = item.get_mut(field) {
                        visit_content(v, Scope::Prompt, visit);
                    }
                }
            }
        }
        _ => {}
    }
    visit_metadata(body, visit);
}

/// OpenAI Responses response: `output[]` message text and function-call arguments.
pub fn responses_response(body: &mut Value, visit: &mut Visit<'_>) {
    let Some(items) = body.get_mut("output").and_then(Value::as_array_mut) else {
        return;
    };
    for item in items.iter_mut().filter_map(Value::as_object_mut) {
        if let Some(content) = item.get_mut("content") {
            visit_content(content, Scope::Response, visit);
        }
        if let Some(v) = item.get_mut("arguments") {
            visit_string(v, Scope::Response, visit);
        }
    }
}

/// An Anthropic content block list (or string): `text`, `tool_result.content`, `tool_use.input`.
fn visit_anthropic_blocks(content: &mut Value, scope: Scope, visit: &mut Visit<'_>) {
    match content {
        Value::String(s) => visit(scope, s),
        Value::Array(blocks) => {
            for block in blocks.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(v) = block.get_mut("text") {
                    visit_string(v, scope, visit);
                }
                if let Some(inner) = block.get_mut("content") {
                    visit_anthropic_blocks(inner, scope, visit);
                }
                if let Some(input) = block.get_mut("input") {
                    visit_all_strings(input, scope, visit);
                }
            }
        }
        _ => {}
    }
}

/// Anthropic Messages request: `system`, every message's content blocks, `metadata`.
pub fn messages_request(body: &mut Map<String, Value>, visit: &mut Visit<'_>) {
    if let Some(system) = body.get_mut("system") {
        visit_anthropic_blocks(system, Scope::Prompt, visit);
    }
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        for message in messages.iter_mut() {
            if let Some(content) = message.get_mut("content") {
                visit_anthropic_blocks(content, Scope::Prompt, visit);
            }
        }
    }
    visit_metadata(body, visit);
}

/// Anthropic Messages response: `content` blocks.
pub fn messages_response(body: &mut Value, visit: &mut Visit<'_>) {
    if let Some(content) = body.get_mut("content") {
        visit_anthropic_blocks(content, Scope::Response, visit);
    }
}

/// OpenAI Embeddings request: `input` (a string or an array of strings).
pub fn embeddings_request(body: &mut Map<String, Value>, visit: &mut Visit<'_>) {
    match body.get_mut("input") {
        Some(Value::String(s)) => visit(Scope::Prompt, s),
        Some(Value::Array(items)) => {
            for item in items.iter_mut() {
                visit_string(item, Scope::Prompt, visit);
            }
        }
        _ => {}
    }
}

/// Which stream of a response a piece of text belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    pub choice: u32,
    pub field: SlotField,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotField {
    Content,
    Refusal,
    /// Arguments of the tool call with this `index`.
    ToolArguments(u32),
    FunctionArguments,
}

fn index_of(v: &Value) -> u32 {
    v.get("index")
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(0)
}

/// OpenAI `chat.completion.chunk` event.
pub fn chat_completions_chunk(event: &mut Value, visit: &mut dyn FnMut(Slot, &mut String)) {
    let Some(choices) = event.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices {
        let index = index_of(choice);
        let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
            continue;
        };
        for (field, slot) in [
            ("content", SlotField::Content),
            ("refusal", SlotField::Refusal),
        ] {
            if let Some(Value::String(s)) = delta.get_mut(field) {
                visit(
                    Slot {
                        choice: index,
                        field: slot,
                    },
                    s,
                );
            }
        }
        if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for call in calls {
                let call_index = index_of(call);
                if let Some(Value::String(s)) = call.pointer_mut("/function/arguments") {
                    visit(
                        Slot {
                            choice: index,
                            field: SlotField::ToolArguments(call_index),
                        },
                        s,
                    );
                }
            }
        }
        if let Some(Value::String(s)) = delta
            .get_mut("function_call")
            .and_then(|f| f.get_mut("arguments"))
        {
            visit(
                Slot {
                    choice: index,
                    field: SlotField::FunctionArguments,
                },
                s,
            );
        }
    }
}

/// Puts text released at the end of a stream back into a chunk's choice `delta`.
fn put_chat_tail(choice: &mut Map<String, Value>, field: SlotField, text: String) {
    let delta = choice
        .entry("delta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(delta) = delta else {
        return;
    };
    match field {
        SlotField::Content | SlotField::Refusal => {
            let name = if field == SlotField::Content {
                "content"
            } else {
                "refusal"
            };
            let joined = match delta.get(name) {
                Some(Value::String(s)) => format!("{s}{text}"),
                _ => text,
            };
            delta.insert(name.into(), Value::String(joined));
        }
        SlotField::ToolArguments(index) => {
            let calls = delta
                .entry("tool_calls")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(calls) = calls {
                calls.push(serde_json::json!({"index": index, "function": {"arguments": text}}));
            }
        }
        SlotField::FunctionArguments => {
            delta.insert(
                "function_call".into(),
                serde_json::json!({"arguments": text}),
            );
        }
    }
}

/// Largest SSE event held while waiting for its end; beyond it the event is refused (the
/// stream ends with an error rather than passing unchecked text).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Applies response-scope rules to an OpenAI Chat Completions SSE stream, chunk by chunk.
///
/// Text is released as [`TextStream`] allows; what is held when a choice finishes is appended
/// to that choice's `finish_reason` chunk (or, if the stream ends without one, to a chunk of
/// its own before `[DONE]`). When a `block` rule matches, the client gets
/// `data: {"error": …}` in the gateway's envelope and nothing more from the provider.
#[derive(Debug)]
pub struct ChatStreamFilter {
    key_id: String,
    request_id: String,
    walker: StreamWalker,
    /// Bytes after the last complete event.
    pending: Vec<u8>,
    streams: BTreeMap<Slot, TextStream>,
    guard: StreamGuard,
    /// The last chunk seen, as a template for a chunk that carries the final held text.
    template: Option<Value>,
    /// Blocked: everything further from the provider is dropped.
    blocked: bool,
}

impl ChatStreamFilter {
    /// A filter for `api`'s streams; `None` when that API's streams cannot be inspected.
    pub fn new(api: ClientApi, key_id: &str, request_id: &str) -> Option<ChatStreamFilter> {
        Some(ChatStreamFilter {
            key_id: key_id.to_string(),
            request_id: request_id.to_string(),
            walker: stream_walker(api)?,
            pending: Vec::new(),
            streams: BTreeMap::new(),
            guard: StreamGuard::default(),
            template: None,
            blocked: false,
        })
    }

    /// Whether a `block` rule stopped the stream.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// What matched so far.
    pub fn verdict(&self, firewall: &Firewall) -> super::Verdict {
        self.guard.verdict(firewall)
    }

    /// Feeds the next body chunk; returns the bytes to send instead.
    pub fn feed(&mut self, firewall: &Firewall, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if self.blocked {
            return out;
        }
        self.pending.extend_from_slice(chunk);
        let pending = std::mem::take(&mut self.pending);
        let mut consumed = 0;
        while let Some((event_len, sep_len)) = find_event_end(&pending[consumed..]) {
            let event = &pending[consumed..consumed + event_len + sep_len];
            self.event(firewall, event, &mut out);
            consumed += event_len + sep_len;
            if self.blocked {
                return out;
            }
        }
        self.pending = pending;
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_EVENT_BYTES {
            self.pending.clear();
            self.block_with(
                GatewayError::new(
                    crate::error::ErrorKind::Firewall,
                    "The response could not be checked by the firewall (an event exceeds 1 MiB).",
                ),
                &mut out,
            );
            return out;
        }
        if end_of_stream {
            if !self.pending.is_empty() {
                let mut tail = std::mem::take(&mut self.pending);
                tail.extend_from_slice(b"\n\n");
                self.event(firewall, &tail, &mut out);
            }
            if !self.blocked {
                self.flush_all(firewall, &mut out);
            }
        }
        out
    }

    fn block_with(&mut self, error: GatewayError, out: &mut Vec<u8>) {
        self.blocked = true;
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&error.to_json(&self.request_id));
        out.extend_from_slice(b"\n\n");
    }

    fn check_block(&mut self, firewall: &Firewall, out: &mut Vec<u8>) -> bool {
        if self.guard.blocked(firewall) {
            if let Some(e) = self.guard.verdict(firewall).error() {
                self.block_with(e, out);
            } else {
                self.blocked = true;
            }
            return true;
        }
        false
    }

    /// One complete event (with its separator).
    fn event(&mut self, firewall: &Firewall, raw: &[u8], out: &mut Vec<u8>) {
        let Some(data) = event_data(raw) else {
            out.extend_from_slice(raw);
            return;
        };
        if data == b"[DONE]" {
            self.flush_all(firewall, out);
            if !self.blocked {
                out.extend_from_slice(raw);
            }
            return;
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
            out.extend_from_slice(raw);
            return;
        };
        let mut changed = false;
        let (key_id, walker) = (self.key_id.clone(), self.walker);
        {
            let streams = &mut self.streams;
            let guard = &mut self.guard;
            walker(&mut value, &mut |slot, text| {
                let released = streams.entry(slot).or_default().push(
                    firewall,
                    &key_id,
                    Scope::Response,
                    text,
                    guard,
                );
                if released != *text {
                    *text = released;
                    changed = true;
                }
            });
        }
        // Choices that finish in this chunk release what they still hold.
        let finished: Vec<u32> = value
            .get("choices")
            .and_then(Value::as_array)
            .map(|choices| {
                choices
                    .iter()
                    .filter(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
                    .map(index_of)
                    .collect()
            })
            .unwrap_or_default();
        for index in finished {
            let slots: Vec<Slot> = self
                .streams
                .keys()
                .filter(|s| s.choice == index)
                .copied()
                .collect();
            for slot in slots {
                let Some(mut stream) = self.streams.remove(&slot) else {
                    continue;
                };
                let tail = stream.finish(firewall, &key_id, Scope::Response, &mut self.guard);
                if tail.is_empty() {
                    continue;
                }
                if let Some(choice) = value
                    .get_mut("choices")
                    .and_then(Value::as_array_mut)
                    .and_then(|cs| cs.iter_mut().find(|c| index_of(c) == index))
                    .and_then(Value::as_object_mut)
                {
                    put_chat_tail(choice, slot.field, tail);
                    changed = true;
                }
            }
        }
        if self.check_block(firewall, out) {
            return;
        }
        if value.get("choices").is_some() {
            self.template = Some(value.clone());
        }
        if changed {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&serde_json::to_vec(&value).unwrap_or_default());
            out.extend_from_slice(b"\n\n");
        } else {
            out.extend_from_slice(raw);
        }
    }

    /// Releases every open stream into one chunk built on the last chunk seen.
    fn flush_all(&mut self, firewall: &Firewall, out: &mut Vec<u8>) {
        let streams = std::mem::take(&mut self.streams);
        let mut tails: Vec<(Slot, String)> = Vec::new();
        for (slot, mut stream) in streams {
            let tail = stream.finish(firewall, &self.key_id, Scope::Response, &mut self.guard);
            if !tail.is_empty() {
                tails.push((slot, tail));
            }
        }
        if self.check_block(firewall, out) || tails.is_empty() {
            return;
        }
        let mut chunk = self.template.clone().unwrap_or_else(
            || serde_json::json!({"object": "chat.completion.chunk", "choices": []}),
        );
        let mut choices: BTreeMap<u32, Map<String, Value>> = BTreeMap::new();
        for (slot, tail) in tails {
            let choice = choices.entry(slot.choice).or_insert_with(|| {
                let mut c = Map::new();
                c.insert("index".into(), Value::from(slot.choice));
                c.insert("delta".into(), Value::Object(Map::new()));
                c.insert("finish_reason".into(), Value::Null);
                c
            });
            put_chat_tail(choice, slot.field, tail);
        }
        if let Value::Object(o) = &mut chunk {
            o.insert(
                "choices".into(),
                Value::Array(choices.into_values().map(Value::Object).collect()),
            );
            if o.contains_key("usage") {
                o.insert("usage".into(), Value::Null);
            }
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }
}
