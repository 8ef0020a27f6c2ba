//! Google Gemini `generateContent` / `streamGenerateContent?alt=sse` as a provider wire format:
//! write requests, read replies and streamed chunks.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::canonical::{
    Conversation, Event, Finish, Image, OutputFormat, Part, Reply, Role, ToolCall, ToolChoice,
};
use super::errors::ClientError;
use super::sse::SseEvent;
use crate::error::GatewayError;
use crate::upstream::BaseUrl;
use crate::usage::Usage;

// ---- wire models -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    pub usage_metadata: Option<UsageMetadata>,
    pub prompt_feedback: Option<PromptFeedback>,
    pub error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub content: Option<CandidateContent>,
    pub finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub struct CandidateContent {
    #[serde(default)]
    pub parts: Vec<GeminiPart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeminiPart {
    pub text: Option<String>,
    /// Thought summaries are not part of the answer.
    #[serde(default)]
    pub thought: bool,
    pub function_call: Option<FunctionCall>,
}

#[derive(Deserialize)]
pub struct FunctionCall {
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    pub block_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
}

impl From<UsageMetadata> for Usage {
    /// Gemini counts thinking tokens apart from candidate tokens; both are billed as output.
    fn from(u: UsageMetadata) -> Usage {
        Usage {
            input: u.prompt_token_count,
            // Saturating: the counts are the provider's, and may be anything a u64 holds.
            output: u
                .candidates_token_count
                .saturating_add(u.thoughts_token_count),
            cached_input: u.cached_content_token_count,
            reasoning: u.thoughts_token_count,
        }
    }
}

// ---- write requests ------------------------------------------------------------------------

/// `…/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse` for streams; the
/// base URL may end in `/v1beta` (or `/v1`) or name the host only.
pub fn path(base: &BaseUrl, model: &str, stream: bool) -> String {
    let prefix = api_prefix(base);
    if stream {
        format!("{prefix}/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{prefix}/models/{model}:generateContent")
    }
}

/// The API version prefix of Gemini paths: the base URL's own `/v1beta` or `/v1`, else
/// `/v1beta` after the base path.
pub fn api_prefix(base: &BaseUrl) -> String {
    if base.path.ends_with("/v1beta") || base.path.ends_with("/v1") {
        base.path.clone()
    } else {
        format!("{}/v1beta", base.path)
    }
}

/// Media type of an image URL, from its extension (Gemini's `fileData` needs one).
fn media_type_of(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else if path.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    }
}

fn json_args(arguments: &str, call_id: &str) -> Result<Value, GatewayError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(arguments).map_err(|_| {
        GatewayError::invalid(format!(
            "The arguments of tool call '{call_id}' are not valid JSON."
        ))
    })
}

/// The `generateContent` body for a conversation. Tool results need the function's name,
/// which Gemini's `functionResponse` requires and OpenAI's tool messages lack: it is taken from
/// the earlier tool call with the same id.
pub fn write_request(c: &Conversation) -> Result<Value, GatewayError> {
    let mut contents = Vec::new();
    let mut names: Vec<(&str, &str)> = Vec::new();
    for m in &c.messages {
        let mut parts = Vec::new();
        for p in &m.parts {
            match p {
                Part::Text(t) if !t.is_empty() => parts.push(json!({"text": t})),
                Part::Text(_) => {}
                Part::Image(Image::Inline { media_type, data }) => {
                    parts.push(json!({"inlineData": {"mimeType": media_type, "data": data}}))
                }
                Part::Image(Image::Url(url)) => parts
                    .push(json!({"fileData": {"mimeType": media_type_of(url), "fileUri": url}})),
                Part::ToolCall(t) => {
                    names.push((t.id.as_str(), t.name.as_str()));
                    parts.push(json!({"functionCall": {
                        "id": t.id, "name": t.name, "args": json_args(&t.arguments, &t.id)?,
                    }}));
                }
                Part::ToolResult {
                    call_id, content, ..
                } => {
                    let name = names
                        .iter()
                        .rev()
                        .find(|(id, _)| id == call_id)
                        .map(|(_, n)| *n)
                        .ok_or_else(|| {
                            GatewayError::invalid(format!(
                                "Tool result '{call_id}' answers no earlier tool call."
                            ))
                        })?;
                    let response = match serde_json::from_str::<Value>(content) {
                        Ok(v @ Value::Object(_)) => v,
                        Ok(v) => json!({"result": v}),
                        Err(_) => json!({"result": content}),
                    };
                    parts.push(json!({"functionResponse": {
                        "id": call_id, "name": name, "response": response,
                    }}));
                }
            }
        }
        if parts.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        contents.push(json!({"role": role, "parts": parts}));
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !c.system.is_empty() {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": c.system.join("\n\n")}]}),
        );
    }
    if !c.tools.is_empty() {
        let decls: Vec<Value> = c
            .tools
            .iter()
            .map(|t| {
                // JSON Schema as the client wrote it; `parameters` accepts only an OpenAPI subset.
                let mut d = json!({"name": t.name, "parametersJsonSchema": t.parameters});
                if let Some(desc) = &t.description {
                    d["description"] = json!(desc);
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(tc) = &c.tool_choice {
        let config = match tc {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Function(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    let mut g = Map::new();
    if let Some(t) = c.temperature {
        g.insert("temperature".into(), json!(t));
    }
    if let Some(t) = c.top_p {
        g.insert("topP".into(), json!(t));
    }
    if let Some(n) = c.max_tokens {
        g.insert("maxOutputTokens".into(), json!(n));
    }
    if !c.stop.is_empty() {
        g.insert("stopSequences".into(), json!(c.stop));
    }
    match &c.format {
        None => {}
        Some(OutputFormat::JsonObject) => {
            g.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(OutputFormat::JsonSchema { schema, .. }) => {
            g.insert("responseMimeType".into(), json!("application/json"));
            g.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if !g.is_empty() {
        body.insert("generationConfig".into(), Value::Object(g));
    }
    Ok(Value::Object(body))
}

// ---- read replies --------------------------------------------------------------------------

pub fn finish_from(reason: &str) -> Finish {
    match reason {
        "MAX_TOKENS" => Finish::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            Finish::ContentFilter
        }
        _ => Finish::Stop,
    }
}

/// Id of the `n`th tool call of a reply when Gemini sent none.
fn call_id(given: Option<String>, n: usize) -> String {
    given.unwrap_or_else(|| format!("call_{n}"))
}

/// A whole `generateContent` reply; `Err` says why it cannot be read.
pub fn read_reply(body: &[u8]) -> Result<Reply, String> {
    let r: GenerateContentResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut reply = Reply {
        usage: r.usage_metadata.map(Usage::from).unwrap_or_default(),
        ..Reply::default()
    };
    if r.prompt_feedback.and_then(|f| f.block_reason).is_some() {
        reply.finish = Some(Finish::ContentFilter);
    }
    if let Some(c) = r.candidates.into_iter().next() {
        for p in c.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(f) = p.function_call {
                let n = reply.tool_calls.len();
                reply.tool_calls.push(ToolCall {
                    id: call_id(f.id, n),
                    name: f.name,
                    arguments: f.args.unwrap_or_else(|| json!({})).to_string(),
                });
            } else if let Some(t) = p.text.filter(|_| !p.thought) {
                reply.text.push_str(&t);
            }
        }
        if let Some(reason) = c.finish_reason {
            reply.finish = Some(match finish_from(&reason) {
                Finish::Stop if !reply.tool_calls.is_empty() => Finish::ToolCalls,
                f => f,
            });
        }
    }
    Ok(reply)
}

/// Reads `streamGenerateContent?alt=sse` chunks: each is a whole `GenerateContentResponse`
/// with the next parts; the last carries `finishReason`. There is no terminal event, so a
/// stream counts as complete when it ends after a finish reason.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    calls: usize,
    finished: bool,
}

impl StreamDecoder {
    pub fn event(&mut self, e: &SseEvent, out: &mut Vec<Event>) -> Result<(), ClientError> {
        if e.data.is_empty() {
            return Ok(());
        }
        let r: GenerateContentResponse = serde_json::from_slice(&e.data).map_err(|err| {
            ClientError::provider_failure("", format!("unreadable stream chunk: {err}"))
        })?;
        if let Some(err) = r.error {
            let status = err["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500);
            let body = json!({"error": err}).to_string();
            return Err(ClientError::from_provider("", status, body.as_bytes()));
        }
        if r.prompt_feedback.and_then(|f| f.block_reason).is_some() {
            self.finished = true;
            out.push(Event::Finish(Finish::ContentFilter));
        }
        if let Some(c) = r.candidates.into_iter().next() {
            for p in c.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(f) = p.function_call {
                    let index = self.calls;
                    self.calls += 1;
                    out.push(Event::ToolCallStart {
                        index,
                        id: call_id(f.id, index),
                        name: f.name,
                    });
                    out.push(Event::ToolCallArgs {
                        index,
                        arguments: f.args.unwrap_or_else(|| json!({})).to_string(),
                    });
                } else if let Some(t) = p.text.filter(|t| !p.thought && !t.is_empty()) {
                    out.push(Event::Text(t));
                }
            }
            if let Some(reason) = c.finish_reason {
                self.finished = true;
                out.push(Event::Finish(match finish_from(&reason) {
                    Finish::Stop if self.calls > 0 => Finish::ToolCalls,
                    f => f,
                }));
            }
        }
        if let Some(u) = r.usage_metadata {
            out.push(Event::Usage(u.into()));
        }
        Ok(())
    }

    /// The stream ended: complete if a finish reason was seen.
    pub fn end(&mut self, out: &mut Vec<Event>) {
        if self.finished {
            out.push(Event::End);
        }
    }
}
