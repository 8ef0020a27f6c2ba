//! Anthropic Messages: as a client format (read requests, write replies and events) and as a
//! provider wire format (write requests, read replies and events).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::canonical::{
    Conversation, Event, Finish, Image, OutputFormat, Part, Reply, Role, Tool, ToolCall, ToolChoice,
};
use super::errors::ClientError;
use super::openai_chat::push;
use super::sse::{write_event, SseEvent};
use crate::error::GatewayError;
use crate::upstream::BaseUrl;
use crate::usage::Usage;

/// `max_tokens` sent when the client gave none: Anthropic requires the field, and 4096 is what
/// every current Claude model can produce.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

// ---- wire models -------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct MessagesRequest {
    pub messages: Vec<AnthropicMessage>,
    pub system: Option<Content>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    #[serde(default)]
    pub tools: Vec<AnthropicTool>,
    pub tool_choice: Option<AnthropicToolChoice>,
    pub stream: Option<bool>,
}

#[derive(Deserialize)]
pub struct AnthropicMessage {
    pub role: String,
    pub content: Content,
}

/// A string or content blocks.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: Option<Content>,
        #[serde(default)]
        is_error: bool,
    },
    /// Thinking, documents, server tools: not translated.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub struct AnthropicTool {
    pub name: String,
    pub description: Option<String>,
    /// Absent for Anthropic's server tools, which are not translated.
    pub input_schema: Option<Value>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AnthropicToolChoice {
    Auto,
    Any,
    None,
    Tool { name: String },
}

#[derive(Deserialize)]
pub struct AnthropicReply {
    #[serde(default)]
    pub content: Vec<Block>,
    pub stop_reason: Option<String>,
    pub usage: Option<AnthropicUsage>,
}

#[derive(Deserialize, Default)]
pub struct AnthropicUsage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Updates `u` with the fields present. Anthropic's `input_tokens` excludes cache reads
    /// and writes; ours includes them.
    pub fn apply(&self, u: &mut Usage, fresh_input: &mut u64, cache_write: &mut u64) {
        if let Some(n) = self.input_tokens {
            *fresh_input = n;
        }
        if let Some(n) = self.cache_read_input_tokens {
            u.cached_input = n;
        }
        if let Some(n) = self.cache_creation_input_tokens {
            *cache_write = n;
        }
        if let Some(n) = self.output_tokens {
            u.output = n;
        }
        // Saturating: the counts are the provider's, and may be anything a u64 holds.
        u.input = fresh_input
            .saturating_add(u.cached_input)
            .saturating_add(*cache_write);
    }
}

/// One streamed event (`type` names it; the SSE `event:` line repeats it).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop,
    MessageDelta {
        delta: MessageDelta,
        usage: Option<AnthropicUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub struct StartMessage {
    pub usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub struct MessageDelta {
    pub stop_reason: Option<String>,
}

// ---- client side: read requests ------------------------------------------------------------

/// A Messages request body as a conversation.
pub fn read_request(body: &[u8]) -> Result<Conversation, GatewayError> {
    let req: MessagesRequest = serde_json::from_slice(body).map_err(|e| {
        GatewayError::invalid(format!("The request is not a valid Messages body: {e}."))
    })?;
    let mut c = Conversation {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_tokens,
        stop: req.stop_sequences,
        stream: req.stream.unwrap_or(false),
        tool_choice: req.tool_choice.map(|t| match t {
            AnthropicToolChoice::Auto => ToolChoice::Auto,
            AnthropicToolChoice::Any => ToolChoice::Required,
            AnthropicToolChoice::None => ToolChoice::None,
            AnthropicToolChoice::Tool { name } => ToolChoice::Function(name),
        }),
        tools: req
            .tools
            .into_iter()
            .filter_map(|t| {
                Some(Tool {
                    parameters: t.input_schema?,
                    name: t.name,
                    description: t.description,
                })
            })
            .collect(),
        ..Conversation::default()
    };
    if let Some(system) = req.system {
        c.system.push(content_text(system));
    }
    for m in req.messages {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(GatewayError::invalid(format!(
                    "Unsupported message role '{other}'."
                )))
            }
        };
        push(&mut c, role, content_parts(m.content)?);
    }
    Ok(c)
}

fn content_text(c: Content) -> String {
    match c {
        Content::Text(t) => t,
        Content::Blocks(blocks) => blocks
            .into_iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn content_parts(c: Content) -> Result<Vec<Part>, GatewayError> {
    let blocks = match c {
        Content::Text(t) => return Ok(vec![Part::Text(t)]),
        Content::Blocks(b) => b,
    };
    let mut parts = Vec::new();
    for b in blocks {
        match b {
            Block::Text { text } => parts.push(Part::Text(text)),
            Block::Image { source } => parts.push(Part::Image(match source {
                ImageSource::Base64 { media_type, data } => Image::Inline { media_type, data },
                ImageSource::Url { url } => Image::Url(url),
                ImageSource::Other => {
                    return Err(GatewayError::invalid(
                        "Only base64 and url image sources can be translated.",
                    ))
                }
            })),
            Block::ToolUse { id, name, input } => parts.push(Part::ToolCall(ToolCall {
                id,
                name,
                arguments: input.to_string(),
            })),
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => parts.push(Part::ToolResult {
                call_id: tool_use_id,
                content: content.map(content_text).unwrap_or_default(),
                is_error,
            }),
            Block::Other => {}
        }
    }
    Ok(parts)
}

// ---- provider side: write requests ---------------------------------------------------------

/// `/v1/messages` under the base URL (`https://api.anthropic.com` or `…/v1`).
pub fn messages_path(base: &BaseUrl) -> String {
    if base.path.ends_with("/v1") {
        format!("{}/messages", base.path)
    } else {
        format!("{}/v1/messages", base.path)
    }
}

/// The Messages body for a conversation. JSON output modes become a system instruction
/// (Anthropic has no `response_format`).
pub fn write_request(c: &Conversation, model: &str) -> Result<Value, GatewayError> {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(c.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    let mut system = c.system.clone();
    match &c.format {
        None => {}
        Some(OutputFormat::JsonObject) => {
            system.push("Respond with a single JSON object and nothing else.".into())
        }
        Some(OutputFormat::JsonSchema { schema, .. }) => system.push(format!(
            "Respond with a single JSON value that matches this JSON Schema and nothing else: {schema}"
        )),
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let mut messages = Vec::new();
    for m in &c.messages {
        let mut blocks = Vec::new();
        // Tool results must open the user turn that answers the tool calls.
        for p in m
            .parts
            .iter()
            .filter(|p| matches!(p, Part::ToolResult { .. }))
        {
            if let Part::ToolResult {
                call_id,
                content,
                is_error,
            } = p
            {
                let mut b =
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content});
                if *is_error {
                    b["is_error"] = json!(true);
                }
                blocks.push(b);
            }
        }
        for p in &m.parts {
            match p {
                Part::Text(t) if !t.is_empty() => blocks.push(json!({"type": "text", "text": t})),
                Part::Image(Image::Inline { media_type, data }) => blocks.push(json!({
                    "type": "image",
                    "source": {"type": "base64", "media_type": media_type, "data": data},
                })),
                Part::Image(Image::Url(url)) => {
                    blocks.push(json!({"type": "image", "source": {"type": "url", "url": url}}))
                }
                Part::ToolCall(t) => {
                    let input: Value = if t.arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&t.arguments).map_err(|_| {
                            GatewayError::invalid(format!(
                                "The arguments of tool call '{}' are not valid JSON.",
                                t.id
                            ))
                        })?
                    };
                    blocks.push(
                        json!({"type": "tool_use", "id": t.id, "name": t.name, "input": input}),
                    );
                }
                _ => {}
            }
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        if !blocks.is_empty() {
            messages.push(json!({"role": role, "content": blocks}));
        }
    }
    body.insert("messages".into(), Value::Array(messages));
    if !c.tools.is_empty() {
        let tools: Vec<Value> = c
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "input_schema": t.parameters});
                if let Some(d) = &t.description {
                    v["description"] = json!(d);
                }
                v
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = &c.tool_choice {
        let v = match tc {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Function(n) => json!({"type": "tool", "name": n}),
        };
        body.insert("tool_choice".into(), v);
    }
    if let Some(t) = c.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(t) = c.top_p {
        body.insert("top_p".into(), json!(t));
    }
    if !c.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(c.stop));
    }
    if c.stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

// ---- provider side: read replies -----------------------------------------------------------

pub fn finish_from(reason: &str) -> Finish {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => Finish::Length,
        "tool_use" => Finish::ToolCalls,
        "refusal" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

pub fn finish_str(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
        Finish::ContentFilter => "refusal",
    }
}

/// A whole Messages reply; `Err` says why it cannot be read.
pub fn read_reply(body: &[u8]) -> Result<Reply, String> {
    let r: AnthropicReply = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut reply = Reply {
        finish: r.stop_reason.as_deref().map(finish_from),
        ..Reply::default()
    };
    if let Some(u) = r.usage {
        u.apply(&mut reply.usage, &mut 0, &mut 0);
    }
    for b in r.content {
        match b {
            Block::Text { text } => reply.text.push_str(&text),
            Block::ToolUse { id, name, input } => reply.tool_calls.push(ToolCall {
                id,
                name,
                arguments: input.to_string(),
            }),
            _ => {}
        }
    }
    Ok(reply)
}

/// Status for an Anthropic in-stream error type.
fn status_of_error_type(t: &str) -> u16 {
    match t {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// Reads Messages stream events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// Content block index → tool call index, for tool_use blocks.
    tool_blocks: Vec<(usize, usize)>,
    usage: Usage,
    /// Uncached input tokens, kept apart so later partial usage objects add up right.
    fresh_input: u64,
    cache_write: u64,
}

impl StreamDecoder {
    pub fn event(&mut self, e: &SseEvent, out: &mut Vec<Event>) -> Result<(), ClientError> {
        if e.data.is_empty() {
            return Ok(());
        }
        let ev: StreamEvent = serde_json::from_slice(&e.data).map_err(|err| {
            ClientError::provider_failure("", format!("unreadable stream event: {err}"))
        })?;
        match ev {
            StreamEvent::MessageStart { message } => {
                if let Some(u) = message.usage {
                    u.apply(
                        &mut self.usage,
                        &mut self.fresh_input,
                        &mut self.cache_write,
                    );
                    out.push(Event::Usage(self.usage));
                }
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                Block::Text { text } if !text.is_empty() => out.push(Event::Text(text)),
                Block::ToolUse { id, name, .. } => {
                    let call = self.tool_blocks.len();
                    self.tool_blocks.push((index, call));
                    out.push(Event::ToolCallStart {
                        index: call,
                        id,
                        name,
                    });
                }
                _ => {}
            },
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => out.push(Event::Text(text)),
                BlockDelta::InputJsonDelta { partial_json } => {
                    let call = self.tool_blocks.iter().find(|(b, _)| *b == index);
                    if let Some(&(_, call)) = call {
                        if !partial_json.is_empty() {
                            out.push(Event::ToolCallArgs {
                                index: call,
                                arguments: partial_json,
                            });
                        }
                    }
                }
                BlockDelta::Other => {}
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(r) = delta.stop_reason {
                    out.push(Event::Finish(finish_from(&r)));
                }
                if let Some(u) = usage {
                    u.apply(
                        &mut self.usage,
                        &mut self.fresh_input,
                        &mut self.cache_write,
                    );
                    out.push(Event::Usage(self.usage));
                }
            }
            StreamEvent::MessageStop => out.push(Event::End),
            StreamEvent::Error { error } => {
                let status = status_of_error_type(error["type"].as_str().unwrap_or(""));
                let body = json!({"type": "error", "error": error}).to_string();
                return Err(ClientError::from_provider("", status, body.as_bytes()));
            }
            StreamEvent::ContentBlockStop | StreamEvent::Ping | StreamEvent::Other => {}
        }
        Ok(())
    }
}

// ---- client side: write replies ------------------------------------------------------------

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input.saturating_sub(u.cached_input),
        "output_tokens": u.output,
        "cache_read_input_tokens": u.cached_input,
        "cache_creation_input_tokens": 0,
    })
}

/// A whole reply as a Messages `message`.
pub fn write_reply(id: &str, model: &str, reply: Reply) -> Value {
    let mut content = Vec::new();
    if !reply.text.is_empty() || reply.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": reply.text}));
    }
    for t in reply.tool_calls {
        let input: Value = serde_json::from_str(&t.arguments).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": t.id, "name": t.name, "input": input}));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": finish_str(reply.finish.unwrap_or(Finish::Stop)),
        "stop_sequence": null,
        "usage": usage_json(&reply.usage),
    })
}

/// Writes canonical events as the Messages event sequence: `message_start`, `ping`, then per
/// block `content_block_start` / `content_block_delta`… / `content_block_stop`, then
/// `message_delta` (stop reason and usage) and `message_stop`.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    started: bool,
    /// Index of the open content block, and whether it is a text block.
    open: Option<(usize, bool)>,
    next_block: usize,
    /// Tool call index → its content block index.
    tool_blocks: Vec<(usize, usize)>,
    finish: Option<Finish>,
    usage: Usage,
}

impl StreamEncoder {
    pub fn new(id: String, model: String) -> StreamEncoder {
        StreamEncoder {
            id,
            model,
            started: false,
            open: None,
            next_block: 0,
            tool_blocks: Vec::new(),
            finish: None,
            usage: Usage::default(),
        }
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open(&mut self, block: Value, text: bool, out: &mut Vec<u8>) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        self.open = Some((index, text));
        index
    }

    pub fn event(&mut self, e: Event, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            write_event(
                out,
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": usage_json(&self.usage),
                }}),
            );
            write_event(out, "ping", &json!({"type": "ping"}));
        }
        match e {
            Event::Text(text) => {
                let index = match self.open {
                    Some((i, true)) => i,
                    _ => self.open(json!({"type": "text", "text": ""}), true, out),
                };
                write_event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": text}}),
                );
            }
            Event::ToolCallStart { index, id, name } => {
                let block = self.open(
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    false,
                    out,
                );
                self.tool_blocks.push((index, block));
            }
            Event::ToolCallArgs { index, arguments } => {
                if let Some(&(_, block)) = self.tool_blocks.iter().find(|(c, _)| *c == index) {
                    write_event(
                        out,
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": block,
                                "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                    );
                }
            }
            Event::Finish(f) => self.finish = Some(f),
            Event::Usage(u) => self.usage = u,
            Event::End => {
                self.close(out);
                let mut usage = usage_json(&self.usage);
                if let Value::Object(u) = &mut usage {
                    u.remove("cache_creation_input_tokens");
                }
                write_event(
                    out,
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": finish_str(self.finish.unwrap_or(Finish::Stop)),
                                      "stop_sequence": null},
                            "usage": usage}),
                );
                write_event(out, "message_stop", &json!({"type": "message_stop"}));
            }
        }
    }
}

/// A Messages stream error: `event: error` (the Anthropic SDK raises on it), carrying the
/// gateway's envelope fields too.
pub fn write_stream_error(e: &ClientError, request_id: &str, out: &mut Vec<u8>) {
    write_event(
        out,
        "error",
        &json!({"type": "error", "error": e.error_object(), "request_id": request_id}),
    );
}
