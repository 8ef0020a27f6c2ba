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
}

impl CliError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
        }
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
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Network,
            _ => ErrorKind::Server,
        };
        let message = match (kind, s.message()) {
            (ErrorKind::Network, "") => "the control plane is unavailable".into(),
            (_, "") => format!("the control plane answered {:?}", s.code()),
            (_, m) => m.to_string(),
        };
        CliError { kind, message }
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
            (tonic::Status::unavailable("x"), 2, "network_error"),
            (tonic::Status::deadline_exceeded("x"), 2, "network_error"),
            (tonic::Status::internal("x"), 3, "server_error"),
            (tonic::Status::unknown("x"), 3, "server_error"),
        ];
        for (status, code, kind) in cases {
            let e = CliError::from(status);
            assert_eq!((e.kind.exit_code(), e.kind.as_str()), (code, kind));
        }
    }
}
