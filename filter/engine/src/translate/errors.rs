//! Provider error bodies (OpenAI `{"error":{message,type,param,code}}`, Anthropic
//! `{"type":"error","error":{type,message}}`, Gemini `{"error":{code,message,status}}`) mapped
//! to the gateway's envelope, in a form the client's SDK parses too.
//!
//! The envelope is the seeds' `{"error":{type,message,code,http_status,provider,raw},
//! "request_id"}`. For Anthropic Messages clients it also carries a top-level `"type":"error"`,
//! which is all the Anthropic SDK needs beyond `error.type` / `error.message`; both shapes'
//! fields coexist in one object. The provider's HTTP status is kept, so SDK retry logic (429,
//! 5xx) still works.

use serde_json::{json, Value};

use crate::error::ErrorKind;
use crate::request::ClientApi;

/// Largest provider error body kept as `raw`; beyond it `raw` is the truncated text.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// An error to report to the client with an explicit HTTP status (the provider's, or 502).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
    pub provider: String,
    pub raw: Option<Value>,
}

/// The envelope's `type` for a provider's HTTP status.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        400 | 422 => ErrorKind::InvalidRequest,
        401 | 403 => ErrorKind::Authentication,
        402 => ErrorKind::InsufficientQuota,
        404 => ErrorKind::NotFound,
        413 => ErrorKind::RequestTooLarge,
        429 => ErrorKind::RateLimit,
        503 => ErrorKind::ServiceUnavailable,
        408 | 504 => ErrorKind::Timeout,
        _ => ErrorKind::Provider,
    }
}

impl ClientError {
    /// From a provider's non-2xx response body.
    pub fn from_provider(provider: &str, status: u16, body: &[u8]) -> ClientError {
        let raw = serde_json::from_slice::<Value>(body).ok().or_else(|| {
            let text = String::from_utf8_lossy(body);
            (!text.trim().is_empty()).then(|| Value::String(text.into_owned()))
        });
        let message = raw
            .as_ref()
            .and_then(provider_message)
            .unwrap_or_else(|| format!("Provider '{provider}' answered HTTP {status}."));
        ClientError {
            status,
            kind: kind_for_status(status),
            message,
            provider: provider.to_string(),
            raw,
        }
    }

    /// A failure the gateway detected in a 2xx provider response (bad JSON, broken stream).
    pub fn provider_failure(provider: &str, message: impl Into<String>) -> ClientError {
        ClientError {
            status: 502,
            kind: ErrorKind::Provider,
            message: message.into(),
            provider: provider.to_string(),
            raw: None,
        }
    }

    /// The envelope object (`error` member of the body).
    pub fn error_object(&self) -> Value {
        json!({
            "type": self.kind.type_str(),
            "message": self.message,
            "code": self.status,
            "http_status": self.status,
            "provider": self.provider,
            "raw": self.raw,
        })
    }

    /// The whole JSON body for a client of `client`.
    pub fn body(&self, client: ClientApi, request_id: &str) -> Vec<u8> {
        let mut v = json!({"error": self.error_object(), "request_id": request_id});
        if client == ClientApi::Messages {
            v["type"] = json!("error");
        }
        v.to_string().into_bytes()
    }
}

/// `error.message` (OpenAI, Anthropic, Gemini), a string `error`, or a top-level `message`.
fn provider_message(raw: &Value) -> Option<String> {
    let m = match raw.get("error") {
        Some(Value::Object(e)) => e.get("message"),
        Some(s @ Value::String(_)) => Some(s),
        _ => raw.get("message"),
    };
    m.and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| raw.as_str().map(|s| s.chars().take(500).collect()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn provider_error_bodies_map_to_the_envelope() {
        // (status, provider body, client, want type, want message)
        let cases: [(u16, &str, ClientApi, &str, &str); 5] = [
            (
                429,
                r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
                ClientApi::ChatCompletions,
                "rate_limit_error",
                "Rate limit reached",
            ),
            (
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
                ClientApi::Messages,
                "authentication_error",
                "invalid x-api-key",
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#,
                ClientApi::Responses,
                "invalid_request_error",
                "API key not valid.",
            ),
            (
                500,
                "upstream exploded",
                ClientApi::ChatCompletions,
                "provider_error",
                "upstream exploded",
            ),
            (
                503,
                "",
                ClientApi::Embeddings,
                "service_unavailable",
                "answered HTTP 503",
            ),
        ];
        for (status, body, client, want_type, want_message) in cases {
            let e = ClientError::from_provider("p1", status, body.as_bytes());
            let v: Value = serde_json::from_slice(&e.body(client, "req_9")).unwrap();
            assert_eq!(v["error"]["type"], want_type, "{body}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(want_message),
                "{body}"
            );
            assert_eq!(v["error"]["http_status"], status);
            assert_eq!(v["error"]["code"], status);
            assert_eq!(v["error"]["provider"], "p1");
            assert_eq!(v["request_id"], "req_9");
            assert_eq!(
                v["type"] == "error",
                client == ClientApi::Messages,
                "{body}"
            );
            if let Ok(parsed) = serde_json::from_str::<Value>(body) {
                assert_eq!(v["error"]["raw"], parsed);
            }
        }
    }
}
