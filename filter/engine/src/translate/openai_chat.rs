//! OpenAI Chat Completions: as a client format (read requests, write replies and chunks) and as
//! a provider wire format (write requests, read replies and chunks). Mistral, DeepSeek, Azure
//! and OpenAI-compatible hosts speak it too.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::canonical::{
    Conversation, Event, Finish, Image, Message, OutputFormat, Part, Reply, Role, Tool, ToolCall,
    ToolChoice,
};
use super::errors::ClientError;
use super::sse::{write_data, SseEvent};
use crate::error::GatewayError;
use crate::usage::{OpenAiUsage, Usage};

// ---- wire models -------------------------------------------------------------------------

/// A Chat Completions request (the fields translation carries).
#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub tools: Vec<ChatTool>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub stream: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Vec<ChatToolCall>,
    pub tool_call_id: Option<String>,
}

/// Message content: a string or content parts.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: ImageUrl,
    },
    /// Audio, files, refusals: not translated.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

#[derive(Deserialize)]
pub struct ChatToolCall {
    pub id: String,
    pub function: FunctionCall,
}

#[derive(Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Deserialize)]
pub struct ChatTool {
    pub function: FunctionDef,
}

#[derive(Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Deserialize)]
pub struct JsonSchema {
    pub name: String,
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A whole Chat Completions reply.
#[derive(Deserialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub choices: Vec<Choice>,
    pub usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
pub struct Choice {
    pub message: ChoiceMessage,
    pub finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub struct ChoiceMessage {
    pub content: Option<String>,
    pub refusal: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<ChatToolCall>,
}

/// One streamed chunk.
#[derive(Deserialize)]
pub struct ChatChunk {
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    pub usage: Option<OpenAiUsage>,
    pub error: Option<Value>,
}

#[derive(Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    pub delta: Option<Delta>,
    pub finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub struct Delta {
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<DeltaToolCall>,
}

#[derive(Deserialize)]
pub struct DeltaToolCall {
    #[serde(default)]
    pub index: usize,
    pub id: Option<String>,
    pub function: Option<DeltaFunction>,
}

#[derive(Deserialize)]
pub struct DeltaFunction {
    pub name: Option<String>,
    pub arguments: Option<String>,
}

// ---- client side: read requests ------------------------------------------------------------

/// A Chat Completions request body as a conversation.
pub fn read_request(body: &[u8]) -> Result<Conversation, GatewayError> {
    let req: ChatRequest = serde_json::from_slice(body).map_err(|e| {
        GatewayError::invalid(format!(
            "The request is not a valid Chat Completions body: {e}."
        ))
    })?;
    let mut c = Conversation {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        stop: req.stop.map(OneOrMany::into_vec).unwrap_or_default(),
        stream: req.stream.unwrap_or(false),
        tool_choice: req.tool_choice.as_ref().map(read_tool_choice).transpose()?,
        format: match req.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(OutputFormat::JsonObject),
            Some(ResponseFormat::JsonSchema { json_schema }) => Some(OutputFormat::JsonSchema {
                name: json_schema.name,
                schema: json_schema.schema.unwrap_or_else(|| json!({})),
                strict: json_schema.strict.unwrap_or(false),
            }),
        },
        tools: req
            .tools
            .into_iter()
            .map(|t| Tool {
                name: t.function.name,
                description: t.function.description,
                parameters: t
                    .function
                    .parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
            .collect(),
        ..Conversation::default()
    };
    for m in req.messages {
        match m.role.as_str() {
            "system" | "developer" => c.system.push(content_text(m.content)),
            "user" => push(&mut c, Role::User, content_parts(m.content)),
            "assistant" => {
                let mut parts = content_parts(m.content);
                parts.extend(m.tool_calls.into_iter().map(|t| {
                    Part::ToolCall(ToolCall {
                        id: t.id,
                        name: t.function.name,
                        arguments: t.function.arguments,
                    })
                }));
                push(&mut c, Role::Assistant, parts);
            }
            "tool" | "function" => {
                let part = Part::ToolResult {
                    call_id: m.tool_call_id.unwrap_or_default(),
                    content: content_text(m.content),
                    is_error: false,
                };
                push(&mut c, Role::User, vec![part]);
            }
            other => {
                return Err(GatewayError::invalid(format!(
                    "Unsupported message role '{other}'."
                )))
            }
        }
    }
    Ok(c)
}

/// Appends parts to the conversation, merging consecutive turns of one role.
pub(crate) fn push(c: &mut Conversation, role: Role, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match c.messages.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => c.messages.push(Message { role, parts }),
    }
}

fn content_text(content: Option<Content>) -> String {
    match content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(text),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn content_parts(content: Option<Content>) -> Vec<Part> {
    match content {
        None => Vec::new(),
        Some(Content::Text(t)) if t.is_empty() => Vec::new(),
        Some(Content::Text(t)) => vec![Part::Text(t)],
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(Part::Text(text)),
                ContentPart::ImageUrl { image_url } => {
                    Some(Part::Image(Image::from_url(&image_url.url)))
                }
                ContentPart::Other => None,
            })
            .collect(),
    }
}

pub(crate) fn read_tool_choice(v: &Value) -> Result<ToolChoice, GatewayError> {
    match v {
        Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
        Value::String(s) if s == "none" => Ok(ToolChoice::None),
        Value::String(s) if s == "required" => Ok(ToolChoice::Required),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| o.get("name"))
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Function(n.to_string()))
            .ok_or_else(|| GatewayError::invalid("'tool_choice' names no function.")),
        _ => Err(GatewayError::invalid(
            "'tool_choice' must be \"auto\", \"none\", \"required\" or a function.",
        )),
    }
}

// ---- provider side: write requests ---------------------------------------------------------

/// The Chat Completions body for a conversation.
pub fn write_request(c: &Conversation, model: &str) -> Value {
    let mut messages = Vec::new();
    for s in &c.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    for m in &c.messages {
        match m.role {
            Role::User => {
                // Tool results become `tool` messages, which must follow the assistant turn.
                let mut content = Vec::new();
                for p in &m.parts {
                    match p {
                        Part::ToolResult {
                            call_id,
                            content: text,
                            ..
                        } => messages.push(
                            json!({"role": "tool", "tool_call_id": call_id, "content": text}),
                        ),
                        Part::Text(t) => content.push(json!({"type": "text", "text": t})),
                        Part::Image(i) => content
                            .push(json!({"type": "image_url", "image_url": {"url": i.to_url()}})),
                        Part::ToolCall(_) => {}
                    }
                }
                if content.is_empty() {
                    continue;
                }
                let only_text = content.iter().all(|p| p["type"] == "text");
                let content = if only_text {
                    Value::String(
                        content
                            .iter()
                            .filter_map(|p| p["text"].as_str())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                } else {
                    Value::Array(content)
                };
                messages.push(json!({"role": "user", "content": content}));
            }
            Role::Assistant => {
                let text: String = m
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) => Some(t.as_str()),
                        _ => None,
                    })
                    .collect();
                let calls: Vec<Value> = m
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::ToolCall(t) => Some(json!({
                            "id": t.id, "type": "function",
                            "function": {"name": t.name, "arguments": t.arguments},
                        })),
                        _ => None,
                    })
                    .collect();
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                messages.push(msg);
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    if !c.tools.is_empty() {
        let tools: Vec<Value> = c
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = &c.tool_choice {
        let v = match tc {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(n) => json!({"type": "function", "function": {"name": n}}),
        };
        body.insert("tool_choice".into(), v);
    }
    if let Some(t) = c.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(t) = c.top_p {
        body.insert("top_p".into(), json!(t));
    }
    if let Some(n) = c.max_tokens {
        // `max_tokens` rather than `max_completion_tokens`: every OpenAI-compatible host knows it.
        body.insert("max_tokens".into(), json!(n));
    }
    if !c.stop.is_empty() {
        body.insert("stop".into(), json!(c.stop));
    }
    match &c.format {
        None => {}
        Some(OutputFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(OutputFormat::JsonSchema {
            name,
            schema,
            strict,
        }) => {
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}),
            );
        }
    }
    if c.stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

// ---- provider side: read replies -----------------------------------------------------------

pub fn finish_from(reason: &str) -> Finish {
    match reason {
        "length" => Finish::Length,
        "tool_calls" | "function_call" => Finish::ToolCalls,
        "content_filter" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

pub fn finish_str(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
        Finish::ContentFilter => "content_filter",
    }
}

/// A whole Chat Completions reply; `Err` says why it cannot be read.
pub fn read_reply(body: &[u8]) -> Result<Reply, String> {
    let c: ChatCompletion = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let choice = c.choices.into_iter().next().ok_or("no choices")?;
    Ok(Reply {
        text: choice
            .message
            .content
            .or(choice.message.refusal)
            .unwrap_or_default(),
        tool_calls: choice
            .message
            .tool_calls
            .into_iter()
            .map(|t| ToolCall {
                id: t.id,
                name: t.function.name,
                arguments: t.function.arguments,
            })
            .collect(),
        finish: choice.finish_reason.as_deref().map(finish_from),
        usage: c.usage.map(Usage::from).unwrap_or_default(),
    })
}

/// Reads Chat Completions chunks.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// Tool call indexes already announced.
    started_calls: Vec<usize>,
}

impl StreamDecoder {
    pub fn event(&mut self, e: &SseEvent, out: &mut Vec<Event>) -> Result<(), ClientError> {
        if e.data.starts_with(b"[DONE]") {
            out.push(Event::End);
            return Ok(());
        }
        let chunk: ChatChunk = serde_json::from_slice(&e.data).map_err(|err| {
            ClientError::provider_failure("", format!("unreadable stream chunk: {err}"))
        })?;
        if let Some(err) = chunk.error {
            let body = json!({"error": err}).to_string();
            return Err(ClientError::from_provider("", 502, body.as_bytes()));
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(t) = delta.content.filter(|t| !t.is_empty()) {
                    out.push(Event::Text(t));
                }
                for call in delta.tool_calls {
                    let f = call.function.unwrap_or(DeltaFunction {
                        name: None,
                        arguments: None,
                    });
                    if !self.started_calls.contains(&call.index) {
                        self.started_calls.push(call.index);
                        out.push(Event::ToolCallStart {
                            index: call.index,
                            id: call.id.unwrap_or_default(),
                            name: f.name.unwrap_or_default(),
                        });
                    }
                    if let Some(a) = f.arguments.filter(|a| !a.is_empty()) {
                        out.push(Event::ToolCallArgs {
                            index: call.index,
                            arguments: a,
                        });
                    }
                }
            }
            if let Some(r) = choice.finish_reason {
                out.push(Event::Finish(finish_from(&r)));
            }
        }
        if let Some(u) = chunk.usage {
            out.push(Event::Usage(u.into()));
        }
        Ok(())
    }
}

// ---- client side: write replies ------------------------------------------------------------

pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input.saturating_add(u.output),
        "prompt_tokens_details": {"cached_tokens": u.cached_input},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

/// A whole reply as a `chat.completion`.
pub fn write_reply(id: &str, model: &str, created: u64, reply: Reply) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if reply.text.is_empty() && !reply.tool_calls.is_empty() { Value::Null } else { Value::String(reply.text) },
        "refusal": null,
    });
    if !reply.tool_calls.is_empty() {
        message["tool_calls"] = reply
            .tool_calls
            .iter()
            .map(|t| json!({"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}))
            .collect();
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_str(reply.finish.unwrap_or(Finish::Stop)),
        }],
        "usage": usage_json(&reply.usage),
    })
}

/// Writes canonical events as `chat.completion.chunk`s. The usage chunk (`choices: []`) is
/// always sent before `[DONE]`; the edge removes it when the client did not ask for it.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    created: u64,
    started: bool,
    usage: Usage,
}

impl StreamEncoder {
    pub fn new(id: String, model: String, created: u64) -> StreamEncoder {
        StreamEncoder {
            id,
            model,
            created,
            started: false,
            usage: Usage::default(),
        }
    }

    fn chunk(&self, delta: Value, finish: Option<Finish>, out: &mut Vec<u8>) {
        write_data(
            out,
            &json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null,
                             "finish_reason": finish.map(finish_str)}],
            }),
        );
    }

    pub fn event(&mut self, e: Event, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
        }
        match e {
            Event::Text(t) => self.chunk(json!({"content": t}), None, out),
            Event::ToolCallStart { index, id, name } => self.chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                       "function": {"name": name, "arguments": ""}}]}),
                None,
                out,
            ),
            Event::ToolCallArgs { index, arguments } => self.chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}),
                None,
                out,
            ),
            Event::Finish(f) => self.chunk(json!({}), Some(f), out),
            Event::Usage(u) => self.usage = u,
            Event::End => {
                write_data(
                    out,
                    &json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage_json(&self.usage),
                    }),
                );
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
        }
    }
}

impl StreamEncoder {
    /// Ends a broken stream: the usage known so far (the provider charged it; the edge records
    /// it and removes the chunk if the client did not ask for usage), then the error chunk.
    pub fn error(&mut self, e: &ClientError, request_id: &str, out: &mut Vec<u8>) {
        if self.usage != Usage::default() {
            write_data(
                out,
                &json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": usage_json(&self.usage),
                }),
            );
        }
        write_stream_error(e, request_id, out);
    }
}

/// A Chat Completions stream error: a chunk carrying `error` (the OpenAI SDK raises on it).
pub fn write_stream_error(e: &ClientError, request_id: &str, out: &mut Vec<u8>) {
    write_data(
        out,
        &json!({"error": e.error_object(), "request_id": request_id}),
    );
}
