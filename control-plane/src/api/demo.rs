//! The built-in demo provider: a tiny, deterministic model that speaks OpenAI's Chat
//! Completions wire format exactly (JSON and SSE), so `cargo xtask up` works without any
//! provider account. Its token counts are whitespace word counts (an estimate; it is a demo, and
//! as an uncatalogued `openai-compatible` model it is priced at zero).

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The model `GET /demo/v1/models` lists; any model name is accepted.
pub const DEMO_MODEL: &str = "echo";
const GREETING: &str = "Hello from the tokenrouter demo provider. You said:";
const FINGERPRINT: &str = "fp_tokenrouter_demo";

/// `POST /demo/v1/chat/completions`.
pub async fn chat_completions(body: Bytes) -> Response {
    match Reply::from_request(&body) {
        Ok(reply) if reply.stream => sse(reply.chunks()),
        Ok(reply) => Json(reply.completion()).into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

/// `GET /demo/v1/models`.
pub async fn models() -> impl IntoResponse {
    Json(json!({
        "object": "list",
        "data": [{"id": DEMO_MODEL, "object": "model", "created": 0, "owned_by": "tokenrouter"}],
    }))
}

/// Everything the answer depends on, taken from the request.
#[derive(Debug)]
struct Reply {
    id: String,
    model: String,
    created: u64,
    content: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    stream: bool,
    include_usage: bool,
}

impl Reply {
    fn from_request(body: &[u8]) -> Result<Reply, String> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|e| format!("request body is not valid JSON: {e}"))?;
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .ok_or("you must provide a model parameter")?;
        let messages = request
            .get("messages")
            .and_then(Value::as_array)
            .filter(|m| !m.is_empty())
            .ok_or("'messages' must be a non-empty array")?;
        let texts: Vec<(String, String)> = messages
            .iter()
            .map(|m| {
                let role = m
                    .get("role")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                (role, text_of(m.get("content")))
            })
            .collect();
        let said = texts
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map(|(_, text)| text.as_str())
            .unwrap_or("");
        let content = format!("{GREETING} {said}").trim_end().to_string();
        let prompt_tokens = texts.iter().map(|(_, t)| words(t)).sum();
        let digest = Sha256::digest(body);
        Ok(Reply {
            id: format!("chatcmpl-demo{}", hex::encode(&digest[..12])),
            model: model.to_string(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            completion_tokens: words(&content),
            content,
            prompt_tokens,
            stream: request
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        })
    }

    fn completion(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": self.content,
                    "refusal": null,
                    "annotations": []
                },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT
        })
    }

    /// The SSE events: role, one chunk per word, finish, optional usage.
    fn chunks(&self) -> Vec<Value> {
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            });
            if self.include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut out = vec![chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        )];
        for (i, word) in self.content.split(' ').enumerate() {
            let piece = if i == 0 {
                word.to_string()
            } else {
                format!(" {word}")
            };
            out.push(chunk(json!({"content": piece}), Value::Null));
        }
        out.push(chunk(json!({}), json!("stop")));
        if self.include_usage {
            out.push(json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT,
                "choices": [],
                "usage": self.usage()
            }));
        }
        out
    }
}

/// Text of a message's `content`: a string, or the `text` parts of an array.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn sse(events: Vec<Value>) -> Response {
    let mut body = String::new();
    for e in events {
        body.push_str("data: ");
        body.push_str(&e.to_string());
        body.push_str("\n\n");
    }
    body.push_str("data: [DONE]\n\n");
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}
    });
    (status, Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const REQUEST: &str = r#"{"model":"echo","messages":[
        {"role":"system","content":"be brief"},
        {"role":"user","content":[{"type":"text","text":"hi there"}]}]}"#;

    #[test]
    fn completion_is_openai_shaped_and_deterministic() {
        let reply = Reply::from_request(REQUEST.as_bytes()).unwrap();
        let c = reply.completion();
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(
            c["choices"][0]["message"]["content"],
            "Hello from the tokenrouter demo provider. You said: hi there"
        );
        assert_eq!(c["usage"]["prompt_tokens"], 4);
        assert_eq!(c["usage"]["completion_tokens"], 10);
        assert_eq!(c["usage"]["total_tokens"], 14);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(
            c["usage"]["completion_tokens_details"]["reasoning_tokens"],
            0
        );
        assert_eq!(
            reply.id,
            Reply::from_request(REQUEST.as_bytes()).unwrap().id
        );
    }

    #[test]
    fn stream_chunks_rebuild_the_content() {
        let body = REQUEST.replace(
            "\"model\"",
            "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"model\"",
        );
        let reply = Reply::from_request(body.as_bytes()).unwrap();
        assert!(reply.stream && reply.include_usage);
        let chunks = reply.chunks();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, reply.content);
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
        assert_eq!(usage["usage"]["completion_tokens"], 10);
    }

    #[test]
    fn bad_requests() {
        for body in [
            "nope",
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","messages":[]}"#,
        ] {
            assert!(Reply::from_request(body.as_bytes()).is_err(), "{body}");
        }
    }
}
