//! Bounded parsing of client request bodies, and their rewrite for the chosen upstream.

use serde_json::{Map, Value};

use crate::error::GatewayError;

/// Most messages one request may carry.
pub const MAX_MESSAGES: usize = 10_000;

/// Client-facing APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientApi {
    /// `POST /v1/chat/completions` (OpenAI Chat Completions).
    ChatCompletions,
    /// `POST /v1/responses` (OpenAI Responses).
    Responses,
    /// `POST /v1/messages` (Anthropic Messages).
    Messages,
    /// `POST /v1/embeddings` (OpenAI Embeddings).
    Embeddings,
    /// `GET /v1/models`: answered by the gateway from its catalogue, never forwarded.
    Models,
}

impl ClientApi {
    pub const ALL: [ClientApi; 5] = [
        ClientApi::ChatCompletions,
        ClientApi::Responses,
        ClientApi::Messages,
        ClientApi::Embeddings,
        ClientApi::Models,
    ];

    /// From the request path (query string ignored); `None` for paths we do not serve.
    pub fn from_path(path: &str) -> Option<ClientApi> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(ClientApi::ChatCompletions),
            "/v1/responses" => Some(ClientApi::Responses),
            "/v1/messages" => Some(ClientApi::Messages),
            "/v1/embeddings" => Some(ClientApi::Embeddings),
            "/v1/models" => Some(ClientApi::Models),
            _ => None,
        }
    }

    /// From [`ClientApi::as_str`] (the `x-tr-client-api` header's value).
    pub fn parse(s: &str) -> Option<ClientApi> {
        ClientApi::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Name recorded in the request log and sent in `x-tr-client-api`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientApi::ChatCompletions => "chat.completions",
            ClientApi::Responses => "responses",
            ClientApi::Messages => "messages",
            ClientApi::Embeddings => "embeddings",
            ClientApi::Models => "models",
        }
    }

    /// The HTTP method the API is served on.
    pub fn method(self) -> &'static str {
        match self {
            ClientApi::Models => "GET",
            _ => "POST",
        }
    }
}

/// Most input items of a Responses request, or inputs of an Embeddings request.
pub const MAX_INPUT_ITEMS: usize = 10_000;

/// Most `metadata` entries (OpenAI's documented limit), and their key and value lengths.
pub const MAX_METADATA_ENTRIES: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;

/// Routing modes accepted in a Responses request's `router_mode` (and `auto:<mode>` models).
pub const ROUTER_MODES: [&str; 5] = ["balance", "balanced", "cost", "quality", "latency"];

/// The Chat Completions parser the edge used before every API had one; same as
/// [`ClientRequest::parse_api`] with [`ClientApi::ChatCompletions`].
pub type ChatRequest = ClientRequest;

/// The routing fields of a client request, read in the client's own format. The body is kept
/// as a JSON object so fields the edge does not interpret reach the upstream filter unchanged.
#[derive(Debug)]
pub struct ClientRequest {
    pub api: ClientApi,
    pub model: String,
    pub stream: bool,
    /// The client asked for the trailing usage chunk (`stream_options.include_usage`, Chat
    /// Completions only); when it did not, the edge removes the chunk the gateway asked for.
    pub client_wants_usage: bool,
    /// `metadata` (string values), for routing rules.
    pub metadata: Option<Map<String, Value>>,
    /// Responses `router_mode` (our extension), one of [`ROUTER_MODES`].
    pub router_mode: Option<String>,
    /// Bytes of the client's body: what the upstream body is sized for.
    client_len: usize,
    body: Map<String, Value>,
}

impl ClientRequest {
    /// Parses a Chat Completions body (the edge's call before every API had a parser).
    pub fn parse(bytes: &[u8]) -> Result<ClientRequest, GatewayError> {
        ClientRequest::parse_api(ClientApi::ChatCompletions, bytes)
    }

    /// Parses and bounds the routing fields of a body in `api`'s format.
    pub fn parse_api(api: ClientApi, bytes: &[u8]) -> Result<ClientRequest, GatewayError> {
        if api == ClientApi::Models {
            return Err(GatewayError::invalid(
                "GET /v1/models takes no request body.",
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::invalid(
                "The request body is empty; expected a JSON object.",
            ));
        }
        let body: Map<String, Value> = crate::json::from_slice(bytes).map_err(|e| {
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
        match api {
            ClientApi::ChatCompletions | ClientApi::Messages => {
                check_items(&body, "messages", MAX_MESSAGES, false)?
            }
            ClientApi::Responses | ClientApi::Embeddings => {
                check_items(&body, "input", MAX_INPUT_ITEMS, true)?
            }
            ClientApi::Models => {}
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b && api != ClientApi::Embeddings,
            Some(_) => return Err(GatewayError::invalid("'stream' must be a boolean.")),
        };
        let client_wants_usage = api == ClientApi::ChatCompletions
            && body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let metadata = parse_metadata(body.get("metadata"))?;
        let router_mode = match body.get("router_mode") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) if ROUTER_MODES.contains(&m.as_str()) => Some(m.clone()),
            Some(_) => {
                return Err(GatewayError::invalid(format!(
                    "'router_mode' must be one of {}.",
                    ROUTER_MODES.join(", ")
                )))
            }
        };
        Ok(ClientRequest {
            api,
            model,
            stream,
            client_wants_usage,
            metadata,
            router_mode,
            client_len: bytes.len(),
            body,
        })
    }

    /// The body in the client's format, for the firewall's walkers (which mask texts in place
    /// before [`ClientRequest::upstream_body`] serialises it).
    pub fn body_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.body
    }

    /// The body passed on to the upstream filter, still in the client's format: the upstream
    /// model name, our own fields (`router_mode`) removed, and for Chat Completions streams the
    /// trailing usage chunk requested so the gateway can count tokens.
    pub fn upstream_body(&mut self, upstream_model: &str) -> Vec<u8> {
        self.body
            .insert("model".into(), Value::String(upstream_model.to_string()));
        self.body.remove("router_mode");
        if self.api == ClientApi::ChatCompletions && self.stream && !self.client_wants_usage {
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
        // Sized for it at once: `to_vec` starts at 128 bytes and grows (a copy each time).
        let mut out = Vec::with_capacity(self.client_len.saturating_add(64));
        match serde_json::to_writer(&mut out, &self.body) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }
}

/// `field` must be a non-empty array of at most `max` entries (or, when `string_ok`, a string).
fn check_items(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
    string_ok: bool,
) -> Result<(), GatewayError> {
    match body.get(field) {
        Some(Value::String(_)) if string_ok => Ok(()),
        Some(Value::Array(m)) if m.is_empty() => Err(GatewayError::invalid(format!(
            "'{field}' must contain at least one entry."
        ))),
        Some(Value::Array(m)) if m.len() > max => Err(GatewayError::invalid(format!(
            "'{field}' has {} entries; at most {max} are accepted.",
            m.len()
        ))),
        Some(Value::Array(_)) => Ok(()),
        None | Some(Value::Null) => Err(GatewayError::invalid(format!(
            "Missing required parameter: '{field}'."
        ))),
        Some(_) if string_ok => Err(GatewayError::invalid(format!(
            "'{field}' must be a string or an array."
        ))),
        Some(_) => Err(GatewayError::invalid(format!(
            "'{field}' must be an array."
        ))),
    }
}

fn parse_metadata(v: Option<&Value>) -> Result<Option<Map<String, Value>>, GatewayError> {
    let m = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(GatewayError::invalid("'metadata' must be an object.")),
    };
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(GatewayError::invalid(format!(
            "'metadata' has {} entries; at most {MAX_METADATA_ENTRIES} are accepted.",
            m.len()
        )));
    }
    for (k, v) in m {
        let ok = k.chars().count() <= MAX_METADATA_KEY_CHARS
            && v.as_str()
                .is_some_and(|s| s.chars().count() <= MAX_METADATA_VALUE_CHARS);
        if !ok {
            return Err(GatewayError::invalid(format!(
                "'metadata' entries must be strings of at most {MAX_METADATA_VALUE_CHARS} \
                 characters under keys of at most {MAX_METADATA_KEY_CHARS}; '{}' is not.",
                k.chars().take(MAX_METADATA_KEY_CHARS).collect::<String>()
            )));
        }
    }
    Ok(Some(m.clone()))
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

    #[test]
    fn every_api_has_its_path_and_header_name() {
        let cases = [
            ("/v1/chat/completions", ClientApi::ChatCompletions, "POST"),
            ("/v1/responses", ClientApi::Responses, "POST"),
            ("/v1/messages?beta=true", ClientApi::Messages, "POST"),
            ("/v1/embeddings", ClientApi::Embeddings, "POST"),
            ("/v1/models/", ClientApi::Models, "GET"),
        ];
        for (path, api, method) in cases {
            assert_eq!(ClientApi::from_path(path), Some(api), "{path}");
            assert_eq!(ClientApi::parse(api.as_str()), Some(api));
            assert_eq!(api.method(), method);
        }
        assert_eq!(ClientApi::parse("chat"), None);
    }

    #[test]
    fn routing_fields_of_every_api() {
        // (api, body, model, stream, router_mode, metadata entries)
        type Want = (&'static str, bool, Option<&'static str>, usize);
        let cases: [(ClientApi, &str, Want); 5] = [
            (
                ClientApi::Responses,
                r#"{"model":"auto:latency","router_mode":"latency","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}],"metadata":{"workspace":"docs-demo","priority":"launch"}}"#,
                ("auto:latency", false, Some("latency"), 2),
            ),
            (
                ClientApi::Responses,
                r#"{"model":"m","input":"Write a story","stream":true}"#,
                ("m", true, None, 0),
            ),
            (
                ClientApi::Messages,
                r#"{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"x"}],"stream":true,"metadata":{"user_id":"u1"}}"#,
                ("claude", true, None, 1),
            ),
            (
                ClientApi::Embeddings,
                r#"{"model":"e","input":["a","b"],"stream":true}"#,
                ("e", false, None, 0),
            ),
            (
                ClientApi::ChatCompletions,
                r#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#,
                ("c", false, None, 0),
            ),
        ];
        for (api, body, (model, stream, mode, metadata)) in cases {
            let r = ClientRequest::parse_api(api, body.as_bytes()).unwrap();
            assert_eq!(r.model, model, "{body}");
            assert_eq!(r.stream, stream, "{body}");
            assert_eq!(r.router_mode.as_deref(), mode, "{body}");
            assert_eq!(r.metadata.map_or(0, |m| m.len()), metadata, "{body}");
        }
    }

    #[test]
    fn router_mode_is_removed_before_the_upstream() {
        let mut r = ClientRequest::parse_api(
            ClientApi::Responses,
            br#"{"model":"auto:cost","router_mode":"cost","input":"x","stream":true}"#,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&r.upstream_body("gpt-4o-mini")).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"model":"gpt-4o-mini","input":"x","stream":true})
        );
    }

    #[test]
    fn bad_bodies_of_other_apis_are_400() {
        let big_metadata = format!(
            r#"{{"model":"m","input":"x","metadata":{{{}}}}}"#,
            (0..=MAX_METADATA_ENTRIES)
                .map(|i| format!(r#""k{i}":"v""#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let long_value = format!(
            r#"{{"model":"m","input":"x","metadata":{{"k":"{}"}}}}"#,
            "v".repeat(MAX_METADATA_VALUE_CHARS + 1)
        );
        let many_inputs = format!(
            r#"{{"model":"m","input":[{}]}}"#,
            vec![r#""x""#; MAX_INPUT_ITEMS + 1].join(",")
        );
        let cases: Vec<(ClientApi, &[u8], &str)> = vec![
            (ClientApi::Responses, br#"{"model":"m"}"#, "'input'"),
            (
                ClientApi::Responses,
                br#"{"model":"m","input":7}"#,
                "string or an array",
            ),
            (
                ClientApi::Responses,
                br#"{"model":"m","input":[]}"#,
                "at least one",
            ),
            (ClientApi::Responses, many_inputs.as_bytes(), "at most"),
            (
                ClientApi::Responses,
                br#"{"model":"m","input":"x","router_mode":"fast"}"#,
                "router_mode",
            ),
            (
                ClientApi::Responses,
                br#"{"model":"m","input":"x","metadata":[]}"#,
                "object",
            ),
            (
                ClientApi::Responses,
                br#"{"model":"m","input":"x","metadata":{"k":1}}"#,
                "strings",
            ),
            (ClientApi::Responses, big_metadata.as_bytes(), "at most 16"),
            (ClientApi::Responses, long_value.as_bytes(), "strings"),
            (
                ClientApi::Messages,
                br#"{"model":"m","max_tokens":1}"#,
                "'messages'",
            ),
            (ClientApi::Embeddings, br#"{"input":"x"}"#, "'model'"),
            (ClientApi::Models, b"{}", "no request body"),
        ];
        for (api, body, want) in cases {
            let e = ClientRequest::parse_api(api, body).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(
                e.message.contains(want),
                "{api:?} {:?}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }
}
