//! Bounded parsing of client request bodies, and their rewrite for the chosen upstream.

use serde_json::{Map, Value};

use crate::error::GatewayError;

/// Most messages one request may carry.
pub const MAX_MESSAGES: usize = 10_000;

/// Client-facing APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientApi {
    ChatCompletions,
}

impl ClientApi {
    /// From the request path (query string ignored); `None` for paths we do not serve.
    pub fn from_path(path: &str) -> Option<ClientApi> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(ClientApi::ChatCompletions),
            _ => None,
        }
    }

    /// Name recorded in the request log.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientApi::ChatCompletions => "chat.completions",
        }
    }
}

/// A parsed OpenAI Chat Completions request. The body is kept as a JSON object so fields we do
/// not interpret reach the provider unchanged.
#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// The client asked for the trailing usage chunk (`stream_options.include_usage`).
    pub client_wants_usage: bool,
    body: Map<String, Value>,
}

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> Result<ChatRequest, GatewayError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::invalid(
                "The request body is empty; expected a JSON object.",
            ));
        }
        let body: Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| {
            GatewayError::invalid(format!("The request body is not a valid JSON object: {e}."))
        })?;
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_string(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(GatewayError::invalid(
                    "Missing required parameter: 'model'.",
                ))
            }
            Some(_) => return Err(GatewayError::invalid("'model' must be a string.")),
        };
        match body.get("messages") {
            Some(Value::Array(m)) if m.is_empty() => {
                return Err(GatewayError::invalid(
                    "'messages' must contain at least one message.",
                ))
            }
            Some(Value::Array(m)) if m.len() > MAX_MESSAGES => {
                return Err(GatewayError::invalid(format!(
                    "'messages' has {} entries; at most {MAX_MESSAGES} are accepted.",
                    m.len()
                )))
            }
            Some(Value::Array(_)) => {}
            None => {
                return Err(GatewayError::invalid(
                    "Missing required parameter: 'messages'.",
                ))
            }
            Some(_) => return Err(GatewayError::invalid("'messages' must be an array.")),
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(GatewayError::invalid("'stream' must be a boolean.")),
        };
        let client_wants_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(ChatRequest {
            model,
            stream,
            client_wants_usage,
            body,
        })
    }

    /// The body for an OpenAI-style upstream: the upstream model name, and for streams the
    /// trailing usage chunk requested so the gateway can count tokens.
    pub fn upstream_body(&mut self, upstream_model: &str) -> Vec<u8> {
        self.body
            .insert("model".into(), Value::String(upstream_model.to_string()));
        if self.stream && !self.client_wants_usage {
            let options = self
                .body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            } else {
                *options = serde_json::json!({"include_usage": true});
            }
        }
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rewrites() {
        let mut r = ChatRequest::parse(
            br#"{"model":" openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0.2}"#,
        )
        .unwrap();
        assert_eq!(r.model, "openai/gpt-4o-mini");
        assert!(r.stream && !r.client_wants_usage);
        let out: Value = serde_json::from_slice(&r.upstream_body("gpt-4o-mini")).unwrap();
        assert_eq!(out["model"], "gpt-4o-mini");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["temperature"], 0.2);
    }

    #[test]
    fn non_streaming_body_is_left_alone_but_for_model() {
        let mut r = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"user":"u1"}"#,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&r.upstream_body("up")).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"model":"up","messages":[{"role":"user","content":"x"}],"user":"u1"})
        );
    }

    #[test]
    fn client_usage_request_is_kept() {
        let r = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(r.client_wants_usage);
    }

    #[test]
    fn bad_bodies_are_400() {
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        let many = format!(
            r#"{{"model":"m","messages":[{}]}}"#,
            vec![r#"{"role":"user","content":"x"}"#; MAX_MESSAGES + 1].join(",")
        );
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty"),
            (b"  ", "empty"),
            (b"{", "not a valid JSON"),
            (b"[]", "not a valid JSON"),
            (b"\xff\xfe", "not a valid JSON"),
            (deep.as_bytes(), "not a valid JSON"),
            (
                br#"{"messages":[{"role":"user","content":"x"}]}"#,
                "'model'",
            ),
            (
                br#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
                "'model'",
            ),
            (br#"{"model":7,"messages":[]}"#, "'model' must be a string"),
            (br#"{"model":"m"}"#, "'messages'"),
            (br#"{"model":"m","messages":{}}"#, "must be an array"),
            (br#"{"model":"m","messages":[]}"#, "at least one"),
            (many.as_bytes(), "at most"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "boolean",
            ),
        ];
        for (body, want) in cases {
            let e = ChatRequest::parse(body).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(
                e.message.contains(want),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            ClientApi::from_path("/v1/chat/completions"),
            Some(ClientApi::ChatCompletions)
        );
        assert_eq!(
            ClientApi::from_path("/v1/chat/completions?x=1"),
            Some(ClientApi::ChatCompletions)
        );
        assert_eq!(ClientApi::from_path("/v1/nope"), None);
    }
}
