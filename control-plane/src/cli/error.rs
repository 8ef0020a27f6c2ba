//! The CLI's error: a kind (which decides the exit code and the JSON `type`) and a message.

use tonic::Code;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command line.
    Usage,
    /// Bad local configuration (missing admin token, unreadable file, …).
    Config,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    FailedPrecondition,
    /// Control plane unreachable, or the call timed out.
    Network,
    /// The control plane failed.
    Server,
}

impl ErrorKind {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Network => 2,
            ErrorKind::Server => 3,
            _ => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Usage => "usage_error",
            ErrorKind::Config => "config_error",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Network => "network_error",
            ErrorKind::Server => "server_error",
        }
    }
}

#[derive(Debug)]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
    /// With `--json`, the JSON text printed instead of the usual `{"error": {"type",
    /// "message"}}` (a verb with its own failure shape, such as `test`).
    pub json: Option<String>,
}

impl CliError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
            json: None,
        }
    }

    /// The same error, printed as the JSON text `json` with `--json`.
    pub fn with_json(mut self, json: String) -> CliError {
        self.json = Some(json);
        self
    }

    pub fn config(message: impl Into<String>) -> CliError {
        CliError::new(ErrorKind::Config, message)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> CliError {
        let kind = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            // UNAVAILABLE answered by the control plane itself (e.g. no payment backend for
            // `topup`) is a server error like any 5xx; one made up by the transport (a broken
            // connection, which tonic keeps as the status's source) is a network error.
            Code::Unavailable if std::error::Error::source(&s).is_none() => ErrorKind::Server,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Network,
            _ => ErrorKind::Server,
        };
        let message = match (kind, s.message()) {
            (ErrorKind::Network, "") => "the control plane is unavailable".into(),
            (_, "") => format!("the control plane answered {:?}", s.code()),
            (_, m) => m.to_string(),
        };
        CliError::new(kind, message)
    }
}

impl CliError {
    /// A REST answer that is not a success: the kind from its status, the message from the
    /// error envelope (`{"error": {"message"}}`).
    pub fn from_http(status: u16, body: &[u8]) -> CliError {
        let kind = match status {
            401 => ErrorKind::Unauthenticated,
            402 | 412 => ErrorKind::FailedPrecondition,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::AlreadyExists,
            s if s >= 500 => ErrorKind::Server,
            _ => ErrorKind::InvalidArgument,
        };
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("the control plane answered HTTP {status}"));
        CliError::new(kind, message)
    }
}

/// `e` and its sources, `a: b: c` (each only once).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_exit_codes() {
        let cases = [
            (tonic::Status::invalid_argument("x"), 1, "invalid_argument"),
            (
                tonic::Status::unauthenticated("admin token required"),
                1,
                "unauthenticated",
            ),
            (tonic::Status::not_found("x"), 1, "not_found"),
            (tonic::Status::already_exists("x"), 1, "already_exists"),
            // Sent by the control plane: a server error (5xx → 3).
            (tonic::Status::unavailable("x"), 3, "server_error"),
            (tonic::Status::deadline_exceeded("x"), 2, "network_error"),
            (tonic::Status::internal("x"), 3, "server_error"),
            (tonic::Status::unknown("x"), 3, "server_error"),
        ];
        for (status, code, kind) in cases {
            let e = CliError::from(status);
            assert_eq!((e.kind.exit_code(), e.kind.as_str()), (code, kind));
        }
    }

    /// The transport's own UNAVAILABLE (it keeps the connect error as the status's source) is a
    /// network error, unlike one the control plane sends.
    #[tokio::test]
    #[allow(clippy::panic)]
    async fn a_refused_connection_is_a_network_error() {
        let closed = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr,
            Err(e) => panic!("cannot bind: {e}"),
        };
        let channel = match tonic::transport::Endpoint::from_shared(format!("http://{closed}")) {
            Ok(endpoint) => endpoint.connect_lazy(),
            Err(e) => panic!("bad endpoint: {e}"),
        };
        let mut admin = tokenrouter_proto::admin::v1::admin_client::AdminClient::new(channel);
        let Err(status) = admin
            .list_keys(tokenrouter_proto::admin::v1::ListKeysRequest {})
            .await
        else {
            panic!("a closed port answered");
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let e = CliError::from(status);
        assert_eq!((e.kind.exit_code(), e.kind.as_str()), (2, "network_error"));
    }

    #[test]
    fn http_statuses_map_to_exit_codes() {
        let envelope = br#"{"error": {"message": "no such key", "type": "not_found_error"}}"#;
        let e = CliError::from_http(404, envelope);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::NotFound, "no such key")
        );
        for (status, code, kind) in [
            (400, 1, "invalid_argument"),
            (401, 1, "unauthenticated"),
            (402, 1, "failed_precondition"),
            (403, 1, "permission_denied"),
            (409, 1, "already_exists"),
            (500, 3, "server_error"),
            (503, 3, "server_error"),
        ] {
            let e = CliError::from_http(status, b"not json");
            assert_eq!(
                (e.kind.exit_code(), e.kind.as_str()),
                (code, kind),
                "{status}"
            );
            assert!(e.message.contains(&status.to_string()), "{}", e.message);
        }
    }
}
