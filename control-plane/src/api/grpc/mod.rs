//! gRPC services: Admin, FilterSync (ADS lives in [`crate::xds`]), their shared bearer auth and
//! the mapping of domain errors to status codes.

pub mod admin;
pub mod firewall;
pub mod idempotency;
pub mod models;
pub mod preview;
pub mod ratelimit;
pub mod routing;
pub mod sync;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::service::ServiceError;

/// Checks `authorization: Bearer <admin token>`. Cheap to clone; usable as a tonic interceptor.
#[derive(Clone)]
pub struct BearerAuth {
    /// SHA-256 of the expected token: comparing digests takes the same time whatever the
    /// presented token's length or content.
    expected: Arc<[u8; 32]>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(<redacted>)")
    }
}

impl BearerAuth {
    pub fn new(token: &str) -> BearerAuth {
        BearerAuth {
            expected: Arc::new(Sha256::digest(token.as_bytes()).into()),
        }
    }

    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(token) if self.is_admin(token) => Ok(()),
            _ => Err(Status::unauthenticated("admin token required")),
        }
    }

    /// Whether `token` is the admin token, in time independent of where they differ.
    pub fn is_admin(&self, token: &str) -> bool {
        constant_time_eq(&Sha256::digest(token.as_bytes()).into(), &self.expected)
    }

    /// As a tonic interceptor.
    pub fn intercept(&self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// The token of an `authorization: Bearer <token>` value (trimmed), if it is one.
pub fn bearer_token(value: &str) -> Option<&str> {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Domain error → status. Internal details are logged, never sent.
pub fn status(e: ServiceError) -> Status {
    match e {
        ServiceError::InvalidArgument(m) => Status::invalid_argument(m),
        ServiceError::NotFound(m) => Status::not_found(m),
        ServiceError::AlreadyExists(m) => Status::already_exists(m),
        ServiceError::Unavailable(m) => Status::unavailable(m),
        ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
        ServiceError::Internal(detail) => {
            tracing::error!(error = %detail, "internal error");
            Status::internal("internal error; see the control plane log")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn bearer_auth() {
        let auth = BearerAuth::new("s3cret");
        assert!(auth.check(&request(Some("Bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearer "),
        ] {
            let err = auth.check(&request(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert_eq!(err.message(), "admin token required");
        }
    }

    #[test]
    fn internal_errors_are_not_leaked() {
        let s = status(ServiceError::Internal(
            "database is locked at /secret/path".into(),
        ));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("secret"));
        assert_eq!(
            status(ServiceError::NotFound("x".into())).code(),
            tonic::Code::NotFound
        );
    }
}
