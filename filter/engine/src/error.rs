//! The gateway's error type and its JSON envelope (the seeds' shape):
//! `{"error": {"type", "message", "code", "http_status", "provider", "raw"}, "request_id"}`.

use serde::Serialize;

/// What went wrong, which fixes the HTTP status and the envelope's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    InsufficientQuota,
    NotFound,
    /// An `Idempotency-Key` held by a request still in progress.
    Conflict,
    RequestTooLarge,
    Firewall,
    Routing,
    RateLimit,
    Provider,
    ServiceUnavailable,
    Timeout,
}

impl ErrorKind {
    /// HTTP status sent to the client.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::InsufficientQuota => 402,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::Firewall | ErrorKind::Routing => 422,
            ErrorKind::RateLimit => 429,
            ErrorKind::Provider => 502,
            ErrorKind::ServiceUnavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// The envelope's `type` string.
    pub fn type_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::InsufficientQuota => "insufficient_quota",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::Conflict => "idempotency_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::Firewall => "firewall_error",
            ErrorKind::Routing => "routing_error",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Provider => "provider_error",
            ErrorKind::ServiceUnavailable => "service_unavailable",
            ErrorKind::Timeout => "timeout_error",
        }
    }
}

/// An error the gateway answers itself, in the seeds' envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    /// Provider that caused it, when one did.
    pub provider: Option<String>,
    /// The provider's own error body, when there is one.
    pub raw: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
    request_id: &'a str,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    code: u16,
    http_status: u16,
    provider: Option<&'a str>,
    raw: Option<&'a serde_json::Value>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            provider: None,
            raw: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON body sent to the client.
    pub fn to_json(&self, request_id: &str) -> Vec<u8> {
        let envelope = Envelope {
            error: Body {
                kind: self.kind.type_str(),
                message: &self.message,
                code: self.kind.status(),
                http_status: self.kind.status(),
                provider: self.provider.as_deref(),
                raw: self.raw.as_ref(),
            },
            request_id,
        };
        // Serialising plain strings and numbers cannot fail; keep a fallback anyway.
        serde_json::to_vec(&envelope).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.type_str(), self.message)
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_seed_shape() {
        let e = GatewayError::new(ErrorKind::Authentication, "Invalid API key.");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json("req_1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "error": {"type": "authentication_error", "message": "Invalid API key.",
                          "code": 401, "http_status": 401, "provider": null, "raw": null},
                "request_id": "req_1"
            })
        );
    }

    #[test]
    fn every_kind_maps_to_a_distinct_type_and_an_error_status() {
        use ErrorKind::*;
        let kinds = [
            InvalidRequest,
            Authentication,
            InsufficientQuota,
            NotFound,
            RequestTooLarge,
            Firewall,
            Routing,
            RateLimit,
            Provider,
            ServiceUnavailable,
            Timeout,
        ];
        let types: std::collections::HashSet<_> = kinds.iter().map(|k| k.type_str()).collect();
        assert_eq!(types.len(), kinds.len());
        assert!(kinds.iter().all(|k| k.status() >= 400));
    }
}
