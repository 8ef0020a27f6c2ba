//! OpenAI Responses as a client format: read requests, write `response` objects and the
//! Responses SSE event sequence (`response.created`, `response.in_progress`,
//! `response.output_item.added`, `response.content_part.added`, `response.output_text.delta`,
//! `response.output_text.done`, `response.content_part.done`, `response.output_item.done`,
//! `response.function_call_arguments.delta|done`, `response.completed`), each with its
//! `sequence_number`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::canonical::{
    Conversation, Event, Finish, Image, OutputFormat, Part, Reply, Role, Tool, ToolCall,
};
use super::errors::ClientError;
use super::openai_chat::{push, read_tool_choice};
use super::sse::write_event;
use crate::error::GatewayError;
use crate::usage::Usage;

// ---- wire models -------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct ResponsesRequest {
    pub input: Input,
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Vec<ResponsesTool>,
    pub tool_choice: Option<Value>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub text: Option<TextConfig>,
    pub stream: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<InputItem>),
}

/// An input item: a message (`type` "message" or absent), a `function_call` or a
/// `function_call_output`.
#[derive(Deserialize)]
pub struct InputItem {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub role: Option<String>,
    pub content: Option<ItemContent>,
    pub call_id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
    pub output: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum ItemContent {
    Text(String),
    Parts(Vec<InputPart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputPart {
    InputText {
        text: String,
    },
    OutputText {
        text: String,
    },
    InputImage {
        image_url: Option<String>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub struct ResponsesTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

#[derive(Deserialize)]
pub struct TextConfig {
    pub format: Option<TextFormat>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TextFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

// ---- read requests -------------------------------------------------------------------------

/// A Responses request body as a conversation.
pub fn read_request(body: &[u8]) -> Result<Conversation, GatewayError> {
    let req: ResponsesRequest = serde_json::from_slice(body).map_err(|e| {
        GatewayError::invalid(format!("The request is not a valid Responses body: {e}."))
    })?;
    let mut c = Conversation {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_output_tokens,
        stream: req.stream.unwrap_or(false),
        tool_choice: req.tool_choice.as_ref().map(read_tool_choice).transpose()?,
        format: match req.text.and_then(|t| t.format) {
            None | Some(TextFormat::Text) => None,
            Some(TextFormat::JsonObject) => Some(OutputFormat::JsonObject),
            Some(TextFormat::JsonSchema {
                name,
                schema,
                strict,
            }) => Some(OutputFormat::JsonSchema {
                name,
                schema,
                strict: strict.unwrap_or(false),
            }),
        },
        ..Conversation::default()
    };
    for t in req.tools {
        match (t.kind.as_str(), t.name) {
            ("function", Some(name)) => c.tools.push(Tool {
                name,
                description: t.description,
                parameters: t
                    .parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }),
            (kind, _) => {
                return Err(GatewayError::invalid(format!(
                "Tool type '{kind}' cannot be routed to other providers; only function tools can."
            )))
            }
        }
    }
    c.system.extend(req.instructions);
    let items = match req.input {
        Input::Text(t) => {
            push(&mut c, Role::User, vec![Part::Text(t)]);
            return Ok(c);
        }
        Input::Items(items) => items,
    };
    for item in items {
        match item.kind.as_deref() {
            None | Some("message") => {
                let parts = item_parts(item.content);
                match item.role.as_deref() {
                    Some("system" | "developer") => c.system.push(
                        parts
                            .into_iter()
                            .filter_map(|p| match p {
                                Part::Text(t) => Some(t),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ),
                    Some("assistant") => push(&mut c, Role::Assistant, parts),
                    Some("user") | None => push(&mut c, Role::User, parts),
                    Some(other) => {
                        return Err(GatewayError::invalid(format!(
                            "Unsupported input role '{other}'."
                        )))
                    }
                }
            }
            Some("function_call") => push(
                &mut c,
                Role::Assistant,
                vec![Part::ToolCall(ToolCall {
                    id: item.call_id.unwrap_or_default(),
                    name: item.name.unwrap_or_default(),
                    arguments: item.arguments.unwrap_or_default(),
                })],
            ),
            Some("function_call_output") => push(
                &mut c,
                Role::User,
                vec![Part::ToolResult {
                    call_id: item.call_id.unwrap_or_default(),
                    content: match item.output {
                        Some(Value::String(s)) => s,
                        Some(v) => v.to_string(),
                        None => String::new(),
                    },
                    is_error: false,
                }],
            ),
            // Reasoning items and other provider state do not translate.
            Some(_) => {}
        }
    }
    Ok(c)
}

fn item_parts(content: Option<ItemContent>) -> Vec<Part> {
    match content {
        None => Vec::new(),
        Some(ItemContent::Text(t)) => vec![Part::Text(t)],
        Some(ItemContent::Parts(parts)) => parts
            .into_iter()
            .filter_map(|p| match p {
                InputPart::InputText { text } | InputPart::OutputText { text } => {
                    Some(Part::Text(text))
                }
                InputPart::InputImage { image_url } => {
                    image_url.map(|u| Part::Image(Image::from_url(&u)))
                }
                InputPart::Other => None,
            })
            .collect(),
    }
}

// ---- write replies -------------------------------------------------------------------------

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input,
        // `cache_write_tokens`: the SDK's type requires it; no provider reports it to us.
        "input_tokens_details": {"cached_tokens": u.cached_input, "cache_write_tokens": 0},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input.saturating_add(u.output),
    })
}

/// `status` and `incomplete_details` for a finish reason.
fn status_of(finish: Option<Finish>) -> (&'static str, Value) {
    match finish {
        Some(Finish::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some(Finish::ContentFilter) => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A `response` object with the fields the SDK's `Response` type requires.
fn response_object(
    id: &str,
    model: &str,
    created: u64,
    status: &str,
    incomplete: Value,
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "usage": usage.map(usage_json),
        "metadata": {},
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": if status == "completed" {
            json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
        } else {
            json!([])
        },
    })
}

fn call_item(id: &str, call: &ToolCall, status: &str) -> Value {
    json!({
        "type": "function_call", "id": id, "call_id": call.id, "name": call.name,
        "arguments": call.arguments, "status": status,
    })
}

/// Item ids derived from the response id (`resp_X` → `msg_X`, `fc_X_1`).
fn item_id(response_id: &str, prefix: &str, n: usize) -> String {
    let base = response_id.strip_prefix("resp_").unwrap_or(response_id);
    if n == 0 {
        format!("{prefix}{base}")
    } else {
        format!("{prefix}{base}_{n}")
    }
}

/// A whole reply as a `response` object.
pub fn write_reply(id: &str, model: &str, created: u64, reply: Reply) -> Value {
    let mut output = Vec::new();
    if !reply.text.is_empty() || reply.tool_calls.is_empty() {
        output.push(message_item(
            &item_id(id, "msg_", 0),
            &reply.text,
            "completed",
        ));
    }
    for (n, call) in reply.tool_calls.iter().enumerate() {
        output.push(call_item(&item_id(id, "fc_", n), call, "completed"));
    }
    let (status, incomplete) = status_of(reply.finish);
    response_object(
        id,
        model,
        created,
        status,
        incomplete,
        output,
        Some(&reply.usage),
    )
}

/// The output item being streamed.
#[derive(Debug)]
enum OpenItem {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call: ToolCall,
        index: usize,
    },
}

/// Writes canonical events as the Responses event sequence.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    created: u64,
    sequence: u64,
    started: bool,
    open: Option<OpenItem>,
    /// Finished output items, in order.
    done: Vec<Value>,
    calls: usize,
    finish: Option<Finish>,
    usage: Usage,
}

impl StreamEncoder {
    pub fn new(id: String, model: String, created: u64) -> StreamEncoder {
        StreamEncoder {
            id,
            model,
            created,
            sequence: 0,
            started: false,
            open: None,
            done: Vec::new(),
            calls: 0,
            finish: None,
            usage: Usage::default(),
        }
    }

    fn emit(&mut self, kind: &str, mut data: Value, out: &mut Vec<u8>) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        write_event(out, kind, &data);
    }

    fn snapshot(&self, status: &str, incomplete: Value, usage: Option<&Usage>) -> Value {
        response_object(
            &self.id,
            &self.model,
            self.created,
            status,
            incomplete,
            self.done.clone(),
            usage,
        )
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.snapshot("in_progress", Value::Null, None);
        self.emit("response.created", json!({"response": r}), out);
        self.emit("response.in_progress", json!({"response": r}), out);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let output_index = self.done.len();
        match self.open.take() {
            None => {}
            Some(OpenItem::Message { id, text }) => {
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0,
                           "text": text, "logprobs": []}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": part}),
                    out,
                );
                let item = message_item(&id, &text, "completed");
                self.emit(
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                    out,
                );
                self.done.push(item);
            }
            Some(OpenItem::Call { id, call, .. }) => {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": output_index, "name": call.name,
                           "arguments": call.arguments}),
                    out,
                );
                let item = call_item(&id, &call, "completed");
                self.emit(
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                    out,
                );
                self.done.push(item);
            }
        }
    }

    pub fn event(&mut self, e: Event, out: &mut Vec<u8>) {
        self.start(out);
        let output_index = self.done.len();
        match e {
            Event::Text(delta) => {
                if !matches!(self.open, Some(OpenItem::Message { .. })) {
                    self.close(out);
                    let output_index = self.done.len();
                    let id = item_id(&self.id, "msg_", output_index);
                    self.emit(
                        "response.output_item.added",
                        json!({"output_index": output_index, "item": message_item(&id, "", "in_progress")}),
                        out,
                    );
                    self.emit(
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": output_index, "content_index": 0,
                               "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                        out,
                    );
                    self.open = Some(OpenItem::Message {
                        id,
                        text: String::new(),
                    });
                }
                let output_index = self.done.len();
                if let Some(OpenItem::Message { id, text }) = &mut self.open {
                    text.push_str(&delta);
                    let id = id.clone();
                    self.emit(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": output_index, "content_index": 0,
                               "delta": delta, "logprobs": []}),
                        out,
                    );
                }
            }
            Event::ToolCallStart { index, id, name } => {
                self.close(out);
                let output_index = self.done.len();
                let item = item_id(&self.id, "fc_", self.calls);
                self.calls += 1;
                let call = ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                };
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": call_item(&item, &call, "in_progress")}),
                    out,
                );
                self.open = Some(OpenItem::Call {
                    id: item,
                    call,
                    index,
                });
            }
            Event::ToolCallArgs { index, arguments } => {
                if let Some(OpenItem::Call {
                    id,
                    call,
                    index: open,
                }) = &mut self.open
                {
                    if *open == index {
                        call.arguments.push_str(&arguments);
                        let id = id.clone();
                        self.emit(
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": output_index, "delta": arguments}),
                            out,
                        );
                    }
                }
            }
            Event::Finish(f) => self.finish = Some(f),
            Event::Usage(u) => self.usage = u,
            Event::End => {
                self.close(out);
                let (status, incomplete) = status_of(self.finish);
                let r = self.snapshot(status, incomplete, Some(&self.usage.clone()));
                let kind = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                self.emit(kind, json!({"response": r}), out);
            }
        }
    }

    /// An `error` event followed by `response.failed`.
    pub fn error(&mut self, e: &ClientError, out: &mut Vec<u8>) {
        self.start(out);
        write_stream_error(e, self.sequence, out);
        self.sequence += 1;
        let mut r = self.snapshot("failed", Value::Null, Some(&self.usage.clone()));
        r["error"] = json!({"code": "server_error", "message": e.message});
        self.emit("response.failed", json!({"response": r}), out);
    }
}

/// A Responses `error` event.
pub fn write_stream_error(e: &ClientError, sequence_number: u64, out: &mut Vec<u8>) {
    write_event(
        out,
        "error",
        &json!({"type": "error", "code": e.kind.type_str(), "message": e.message,
                "param": null, "sequence_number": sequence_number}),
    );
}
