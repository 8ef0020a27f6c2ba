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
//!   `output`), `metadata`. Response: `output[]` content text and `arguments`. Stream events:
//!   the `delta` of `response.output_text.delta`, `response.refusal.delta` and
//!   `response.function_call_arguments.delta`, a stream per output index (and content part);
//!   the events that repeat a whole text are rewritten to the text sent ([`StreamFilter`]).
//! - Messages request: `system`, content blocks (`text`, `tool_result.content`, every string of
//!   `tool_use.input`), `metadata`. Response: `content` blocks. Stream events:
//!   `content_block_delta` `text_delta.text` and `input_json_delta.partial_json`, a stream per
//!   content block index. Thinking blocks are not checked (they are signed; a changed one
//!   would be refused when sent back).
//! - Embeddings request: `input`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::stream::{StreamGuard, TextStream};
use super::{Firewall, Scope, Subject};
use crate::error::GatewayError;
use crate::request::ClientApi;
use crate::translate::errors::ClientError;
use crate::translate::sse::{write_data, write_event};
use crate::translate::{anthropic, openai_responses};
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

/// The stream-event walker of a client API; `None` for APIs that do not stream (the edge
/// refuses to pass an unexpected stream unchecked when response rules apply).
pub fn stream_walker(api: ClientApi) -> Option<StreamWalker> {
    match api {
        ClientApi::ChatCompletions => Some(chat_completions_chunk),
        ClientApi::Responses => Some(responses_event),
        ClientApi::Messages => Some(messages_event),
        // Neither streams.
        ClientApi::Embeddings | ClientApi::Models => None,
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
    /// The choice index (Chat Completions), output index (Responses) or content block index
    /// (Messages).
    pub choice: u32,
    pub field: SlotField,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotField {
    /// Chat Completions `delta.content`; Messages text block.
    Content,
    Refusal,
    /// Arguments of the tool call with this `index`.
    ToolArguments(u32),
    /// Chat Completions `delta.function_call`; Responses `function_call` item; Messages
    /// `tool_use` block (its input as JSON text).
    FunctionArguments,
    /// Responses: `output_text` of the content part with this index.
    OutputText(u32),
    /// Responses: `refusal` of the content part with this index.
    OutputRefusal(u32),
}

fn index_of(v: &Value) -> u32 {
    u32_field(v, "index")
}

fn u32_field(v: &Value, name: &str) -> u32 {
    v.get(name)
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
        // `Output*` slots are Responses' own; Chat Completions chunks never carry them.
        SlotField::Content
        | SlotField::Refusal
        | SlotField::OutputText(_)
        | SlotField::OutputRefusal(_) => {
            let name = if matches!(field, SlotField::Refusal | SlotField::OutputRefusal(_)) {
                "refusal"
            } else {
                "content"
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

/// OpenAI Responses stream event: the `delta` of `response.output_text.delta`,
/// `response.refusal.delta` and `response.function_call_arguments.delta`, per output index
/// (and content part). The events that repeat a whole text are rewritten by [`StreamFilter`].
pub fn responses_event(event: &mut Value, visit: &mut dyn FnMut(Slot, &mut String)) {
    let part = u32_field(event, "content_index");
    let field = match event.get("type").and_then(Value::as_str) {
        Some("response.output_text.delta") => SlotField::OutputText(part),
        Some("response.refusal.delta") => SlotField::OutputRefusal(part),
        Some("response.function_call_arguments.delta") => SlotField::FunctionArguments,
        _ => return,
    };
    let choice = u32_field(event, "output_index");
    if let Some(Value::String(s)) = event.get_mut("delta") {
        visit(Slot { choice, field }, s);
    }
}

/// Anthropic Messages stream event: `content_block_delta` (`text_delta.text`,
/// `input_json_delta.partial_json`) and the text a `content_block_start` may carry, per
/// content block index.
pub fn messages_event(event: &mut Value, visit: &mut dyn FnMut(Slot, &mut String)) {
    let choice = index_of(event);
    let (holder, field, content) = match event.get("type").and_then(Value::as_str) {
        Some("content_block_delta") => match event.pointer("/delta/type").and_then(Value::as_str) {
            Some("text_delta") => ("delta", "text", SlotField::Content),
            Some("input_json_delta") => ("delta", "partial_json", SlotField::FunctionArguments),
            _ => return,
        },
        Some("content_block_start") => ("content_block", "text", SlotField::Content),
        _ => return,
    };
    if let Some(Value::String(s)) = event.get_mut(holder).and_then(|h| h.get_mut(field)) {
        visit(
            Slot {
                choice,
                field: content,
            },
            s,
        );
    }
}

/// Largest SSE event held while waiting for its end; beyond it the event is refused (the
/// stream ends with an error rather than passing unchecked text).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Applies response-scope rules to a client-format SSE stream (Chat Completions, Responses,
/// Messages), chunk by chunk.
///
/// Each text of the reply (see [`Slot`]) is a [`TextStream`]: text is released as it allows,
/// and what it holds when its text ends is put into an event of the client's format:
/// - Chat Completions: appended to the choice's `finish_reason` chunk (or, if the stream ends
///   without one, to a chunk of its own before `[DONE]`);
/// - Responses: a `…delta` event inserted before the event that ends the text
///   (`response.output_text.done`, `response.function_call_arguments.done`, …); later
///   `sequence_number`s move up by the events inserted. The events that repeat a whole text
///   (`….done`, `response.content_part.done`, `response.output_item.done`,
///   `response.completed`) carry the text the client was sent, i.e. the masked one;
/// - Messages: a `content_block_delta` inserted before the block's `content_block_stop`.
///
/// When a `block` rule matches, the client gets an error in its format and nothing more from
/// the provider: `data: {"error": …}` (Chat Completions), an `error` event then
/// `response.failed` (Responses), `event: error` (Messages).
#[derive(Debug)]
pub struct StreamFilter {
    api: ClientApi,
    /// The request's key and its workspace (see [`Subject`]).
    key_id: String,
    workspace_id: String,
    request_id: String,
    walker: StreamWalker,
    /// Bytes after the last complete event.
    pending: Vec<u8>,
    streams: BTreeMap<Slot, TextStream>,
    /// Responses: the (masked) text sent per slot, which the events that repeat a whole text
    /// carry instead of the provider's.
    sent: BTreeMap<Slot, String>,
    /// Responses: item id per output index, for the delta events the filter inserts.
    item_ids: BTreeMap<u32, String>,
    guard: StreamGuard,
    /// Chat Completions: the last chunk seen, as a template for a chunk that carries the final
    /// held text. Responses: the last `response` object, as a template for `response.failed`.
    template: Option<Value>,
    /// Responses: events inserted so far, added to every later `sequence_number`.
    seq_shift: u64,
    /// Responses: the `sequence_number` of the next event sent.
    next_seq: u64,
    /// Blocked: everything further from the provider is dropped.
    blocked: bool,
}

impl StreamFilter {
    /// A filter for `api`'s streams; `None` when that API's streams cannot be inspected.
    pub fn new(api: ClientApi, subject: Subject<'_>, request_id: &str) -> Option<StreamFilter> {
        Some(StreamFilter {
            api,
            key_id: subject.key_id.to_string(),
            workspace_id: subject.workspace_id.to_string(),
            request_id: request_id.to_string(),
            walker: stream_walker(api)?,
            pending: Vec::new(),
            streams: BTreeMap::new(),
            sent: BTreeMap::new(),
            item_ids: BTreeMap::new(),
            guard: StreamGuard::default(),
            template: None,
            seq_shift: 0,
            next_seq: 0,
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

    /// Ends the stream with `error` in the client's format.
    fn block_with(&mut self, error: GatewayError, out: &mut Vec<u8>) {
        self.blocked = true;
        match self.api {
            ClientApi::Responses => {
                let e = client_error(&error);
                openai_responses::write_stream_error(&e, self.next_seq, out);
                let mut response = self.template.take().unwrap_or_else(|| {
                    serde_json::json!({"id": format!("resp_{}", self.request_id),
                                       "object": "response", "created_at": 0, "model": ""})
                });
                if let Value::Object(r) = &mut response {
                    r.insert("status".into(), Value::from("failed"));
                    r.insert(
                        "error".into(),
                        serde_json::json!({"code": error.kind.type_str(), "message": error.message}),
                    );
                    // Only what the client was already sent could be repeated; repeat nothing.
                    r.insert("output".into(), Value::Array(Vec::new()));
                }
                let failed = serde_json::json!({"type": "response.failed",
                    "sequence_number": self.next_seq + 1, "response": response});
                self.next_seq += 2;
                write_event(out, "response.failed", &failed);
            }
            ClientApi::Messages => {
                anthropic::write_stream_error(&client_error(&error), &self.request_id, out);
            }
            _ => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&error.to_json(&self.request_id));
                out.extend_from_slice(b"\n\n");
            }
        }
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
        if self.api == ClientApi::ChatCompletions && data == b"[DONE]" {
            self.flush_all(firewall, out);
            if !self.blocked {
                out.extend_from_slice(raw);
            }
            return;
        }
        let Ok(mut value) = crate::json::from_slice::<Value>(data) else {
            out.extend_from_slice(raw);
            return;
        };
        match self.api {
            ClientApi::Responses => self.responses_event(firewall, raw, value, out),
            ClientApi::Messages => self.messages_event(firewall, raw, value, out),
            _ => {
                let changed = self.walk(firewall, &mut value);
                self.chat_event(firewall, raw, value, changed, out);
            }
        }
    }

    /// Pushes the texts of one event through their streams; whether any text changed.
    fn walk(&mut self, firewall: &Firewall, value: &mut Value) -> bool {
        let mut changed = false;
        let keep_sent = self.api == ClientApi::Responses;
        let (subject, walker) = (Subject::new(&self.key_id, &self.workspace_id), self.walker);
        let (streams, sent, guard) = (&mut self.streams, &mut self.sent, &mut self.guard);
        walker(value, &mut |slot, text| {
            let released = streams.entry(slot).or_default().push(
                firewall,
                subject,
                Scope::Response,
                text,
                guard,
            );
            if keep_sent {
                sent.entry(slot).or_default().push_str(&released);
            }
            if released != *text {
                *text = released;
                changed = true;
            }
        });
        changed
    }

    /// Ends `slot`'s stream: what it still held, masked (and recorded as sent).
    fn finish_slot(&mut self, firewall: &Firewall, slot: Slot) -> String {
        let Some(mut stream) = self.streams.remove(&slot) else {
            return String::new();
        };
        let subject = Subject::new(&self.key_id, &self.workspace_id);
        let tail = stream.finish(firewall, subject, Scope::Response, &mut self.guard);
        if self.api == ClientApi::Responses && !tail.is_empty() {
            self.sent.entry(slot).or_default().push_str(&tail);
        }
        tail
    }

    /// Chat Completions: one `chat.completion.chunk` whose texts went through [`Self::walk`].
    fn chat_event(
        &mut self,
        firewall: &Firewall,
        raw: &[u8],
        mut value: Value,
        mut changed: bool,
        out: &mut Vec<u8>,
    ) {
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
                let tail = self.finish_slot(firewall, slot);
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
            write_data(out, &value);
        } else {
            out.extend_from_slice(raw);
        }
    }

    /// Releases every open stream: Chat Completions into one chunk built on the last chunk
    /// seen, the other APIs as one delta event per stream.
    fn flush_all(&mut self, firewall: &Firewall, out: &mut Vec<u8>) {
        if self.api != ClientApi::ChatCompletions {
            let mut tails = Vec::new();
            let next_seq = self.next_seq;
            self.flush_tails(firewall, &mut tails);
            if self.guard.blocked(firewall) {
                // The tails are not sent: neither are their sequence numbers.
                self.next_seq = next_seq;
            }
            if !self.check_block(firewall, out) {
                out.extend_from_slice(&tails);
            }
            return;
        }
        let slots: Vec<Slot> = self.streams.keys().copied().collect();
        let mut tails: Vec<(Slot, String)> = Vec::new();
        for slot in slots {
            let tail = self.finish_slot(firewall, slot);
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
        write_data(out, &chunk);
    }

    /// Responses and Messages: ends every open stream, writing what each still held as a
    /// delta event into `out` (which the caller sends only if nothing blocked).
    fn flush_tails(&mut self, firewall: &Firewall, out: &mut Vec<u8>) {
        let slots: Vec<Slot> = self.streams.keys().copied().collect();
        for slot in slots {
            let tail = self.finish_slot(firewall, slot);
            self.write_tail(slot, tail, out);
        }
    }

    /// A delta event of the client's format carrying `tail` (nothing when it is empty).
    fn write_tail(&mut self, slot: Slot, tail: String, out: &mut Vec<u8>) {
        if tail.is_empty() {
            return;
        }
        match self.api {
            ClientApi::Responses => {
                let item_id = self.item_ids.get(&slot.choice).cloned().unwrap_or_default();
                let mut event = serde_json::json!({"item_id": item_id,
                    "output_index": slot.choice, "delta": tail});
                let kind = match slot.field {
                    SlotField::OutputText(part) => {
                        event["content_index"] = Value::from(part);
                        event["logprobs"] = Value::Array(Vec::new());
                        "response.output_text.delta"
                    }
                    SlotField::OutputRefusal(part) => {
                        event["content_index"] = Value::from(part);
                        "response.refusal.delta"
                    }
                    _ => "response.function_call_arguments.delta",
                };
                event["type"] = Value::from(kind);
                event["sequence_number"] = Value::from(self.next_seq);
                self.next_seq += 1;
                self.seq_shift += 1;
                write_event(out, kind, &event);
            }
            ClientApi::Messages => {
                let delta = if slot.field == SlotField::Content {
                    serde_json::json!({"type": "text_delta", "text": tail})
                } else {
                    serde_json::json!({"type": "input_json_delta", "partial_json": tail})
                };
                let event = serde_json::json!({"type": "content_block_delta",
                    "index": slot.choice, "delta": delta});
                write_event(out, "content_block_delta", &event);
            }
            _ => {}
        }
    }

    /// Responses: a text an event repeats whole (`text` of `….done`, an item's content or
    /// arguments) becomes the text the client was sent for `slot`. With `close`, the slot's
    /// stream ends first (its held text goes out as a delta into `pre`). A text no delta
    /// carried is checked whole.
    fn settle(
        &mut self,
        firewall: &Firewall,
        slot: Slot,
        text: Option<&mut Value>,
        close: bool,
        pre: &mut Vec<u8>,
    ) -> bool {
        if close {
            let tail = self.finish_slot(firewall, slot);
            self.write_tail(slot, tail, pre);
        }
        let Some(Value::String(text)) = text else {
            return false;
        };
        let settled = match self.sent.get(&slot) {
            Some(sent) => sent.clone(),
            None if text.is_empty() => return false,
            None => {
                let subject = Subject::new(&self.key_id, &self.workspace_id);
                let mut whole = TextStream::new();
                let mut checked =
                    whole.push(firewall, subject, Scope::Response, text, &mut self.guard);
                checked.push_str(&whole.finish(
                    firewall,
                    subject,
                    Scope::Response,
                    &mut self.guard,
                ));
                self.sent.insert(slot, checked.clone());
                checked
            }
        };
        if settled == *text {
            return false;
        }
        *text = settled;
        true
    }

    /// Responses: an output item (`output[i]`, `response.output_item.*`'s `item`).
    fn settle_item(
        &mut self,
        firewall: &Firewall,
        index: u32,
        item: &mut Value,
        close: bool,
        pre: &mut Vec<u8>,
    ) -> bool {
        if let Some(id) = item.get("id").and_then(Value::as_str) {
            self.item_ids.insert(index, id.to_string());
        }
        let mut changed = false;
        if let Some(parts) = item.get_mut("content").and_then(Value::as_array_mut) {
            for (n, part) in parts.iter_mut().enumerate() {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                changed |= self.settle_part(firewall, index, n, part, close, pre);
            }
        }
        if item.get("arguments").is_some() {
            let slot = Slot {
                choice: index,
                field: SlotField::FunctionArguments,
            };
            changed |= self.settle(firewall, slot, item.get_mut("arguments"), close, pre);
        }
        changed
    }

    /// Responses: one content part (`output_text` or `refusal`).
    fn settle_part(
        &mut self,
        firewall: &Firewall,
        index: u32,
        part_index: u32,
        part: &mut Value,
        close: bool,
        pre: &mut Vec<u8>,
    ) -> bool {
        let mut changed = false;
        for (name, field) in [
            ("text", SlotField::OutputText(part_index)),
            ("refusal", SlotField::OutputRefusal(part_index)),
        ] {
            if part.get(name).is_some() {
                let slot = Slot {
                    choice: index,
                    field,
                };
                changed |= self.settle(firewall, slot, part.get_mut(name), close, pre);
            }
        }
        changed
    }

    /// Responses: one event.
    fn responses_event(
        &mut self,
        firewall: &Firewall,
        raw: &[u8],
        mut value: Value,
        out: &mut Vec<u8>,
    ) {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let index = u32_field(&value, "output_index");
        if let Some(id) = value.get("item_id").and_then(Value::as_str) {
            self.item_ids.insert(index, id.to_string());
        }
        // Events inserted before this one (the held text of texts that end here).
        let mut pre = Vec::new();
        let next_seq = self.next_seq;
        let mut changed = self.walk(firewall, &mut value);
        let part = u32_field(&value, "content_index");
        let done = |field, name| {
            Some((
                Slot {
                    choice: index,
                    field,
                },
                name,
            ))
        };
        let repeated = match kind.as_str() {
            "response.output_text.done" => done(SlotField::OutputText(part), "text"),
            "response.refusal.done" => done(SlotField::OutputRefusal(part), "refusal"),
            "response.function_call_arguments.done" => {
                done(SlotField::FunctionArguments, "arguments")
            }
            _ => None,
        };
        if let Some((slot, name)) = repeated {
            changed |= self.settle(firewall, slot, value.get_mut(name), true, &mut pre);
        }
        let close = kind.ends_with(".done");
        match kind.as_str() {
            "response.content_part.added" | "response.content_part.done" => {
                if let Some(p) = value.get_mut("part") {
                    changed |= self.settle_part(firewall, index, part, p, close, &mut pre);
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                if let Some(item) = value.get_mut("item") {
                    changed |= self.settle_item(firewall, index, item, close, &mut pre);
                }
            }
            _ => {}
        }
        let terminal = matches!(
            kind.as_str(),
            "response.completed" | "response.incomplete" | "response.failed" | "error"
        );
        if terminal {
            self.flush_tails(firewall, &mut pre);
        }
        // `response` snapshots: every output item's text is the one sent (or checked whole).
        if let Some(items) = value
            .pointer_mut("/response/output")
            .and_then(Value::as_array_mut)
        {
            for (n, item) in items.iter_mut().enumerate() {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                changed |= self.settle_item(firewall, n, item, terminal, &mut pre);
            }
        }
        if self.guard.blocked(firewall) {
            // `pre` is not sent: neither are its sequence numbers.
            self.next_seq = next_seq;
        }
        if self.check_block(firewall, out) {
            return;
        }
        if let Some(r) = value.get("response") {
            self.template = Some(r.clone());
        }
        out.extend_from_slice(&pre);
        if let Some(seq) = value.get("sequence_number").and_then(Value::as_u64) {
            if self.seq_shift > 0 {
                value["sequence_number"] = Value::from(seq + self.seq_shift);
                changed = true;
            }
            self.next_seq = seq + self.seq_shift + 1;
        }
        if changed && !kind.is_empty() {
            write_event(out, &kind, &value);
        } else {
            out.extend_from_slice(raw);
        }
    }

    /// Messages: one event.
    fn messages_event(
        &mut self,
        firewall: &Firewall,
        raw: &[u8],
        mut value: Value,
        out: &mut Vec<u8>,
    ) {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut pre = Vec::new();
        let changed = self.walk(firewall, &mut value);
        match kind.as_str() {
            "content_block_stop" => {
                let index = index_of(&value);
                let slots: Vec<Slot> = self
                    .streams
                    .keys()
                    .filter(|s| s.choice == index)
                    .copied()
                    .collect();
                for slot in slots {
                    let tail = self.finish_slot(firewall, slot);
                    self.write_tail(slot, tail, &mut pre);
                }
            }
            "message_delta" | "message_stop" | "error" => self.flush_tails(firewall, &mut pre),
            _ => {}
        }
        if self.check_block(firewall, out) {
            return;
        }
        out.extend_from_slice(&pre);
        if changed {
            write_event(out, &kind, &value);
        } else {
            out.extend_from_slice(raw);
        }
    }
}

/// A firewall error in the shape the translators' stream-error writers take.
fn client_error(e: &GatewayError) -> ClientError {
    ClientError {
        status: e.status(),
        kind: e.kind,
        message: e.message.clone(),
        provider: e.provider.clone().unwrap_or_default(),
        raw: e.raw.clone(),
    }
}
