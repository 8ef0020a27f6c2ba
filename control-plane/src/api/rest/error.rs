//! The one error type of the REST API and the extractors that turn malformed input into it.
//!
//! Every error leaves as the seeds' envelope `{"error": {"message", "type", "code"}}` with
//! `code` the HTTP status; internal details are logged, never sent. axum's own rejections
//! (plain-text bodies, 422 for JSON that does not fit the type) never reach a client: the
//! extractors here wrap axum's and answer with the envelope instead.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::service::ServiceError;

/// The error envelope (seed 002).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for a person.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `conflict_error`, `request_too_large`, `service_unavailable` or
    /// `api_error`.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub code: u16,
}

/// An error answer: a status and a message; the type follows from the status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The envelope's `type` for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        413 => "request_too_large",
        503 => "service_unavailable",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind: error_type(self.status).to_string(),
                code: self.status.as_u16(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::InvalidArgument(m) => ApiError::bad_request(m),
            ServiceError::NotFound(m) => ApiError::not_found(m),
            ServiceError::AlreadyExists(m) => ApiError::new(StatusCode::CONFLICT, m),
            ServiceError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ServiceError::Unauthenticated(m) => ApiError::new(StatusCode::UNAUTHORIZED, m),
            ServiceError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the control plane log",
                )
            }
        }
    }
}

/// A rejection's status, with the 422 axum uses for well-formed JSON of the wrong shape turned
/// into the 400 every other malformed input gets.
pub(crate) fn rejection(status: StatusCode, text: String) -> ApiError {
    let status = match status {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        s if s.is_server_error() => {
            tracing::error!(error = %text, "request extraction failed");
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
        s => s,
    };
    ApiError::new(status, text)
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        rejection(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        rejection(r.status(), r.body_text())
    }
}

/// A JSON object body, decoded as [`Json`] would, whose rejections are [`ApiError`]s: no JSON
/// content type → 415, a body over the limit → 413, anything but a well-formed JSON object of
/// the right shape → 400. (serde would take a struct from an array too: `[null, null]`.)
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a request body with content-type: application/json",
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|r| rejection(r.status(), r.body_text()))?;
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let Json(value) = Json::<T>::from_bytes(&body)?;
        Ok(ApiJson(value))
    }
}

/// `application/json` or `application/<something>+json`, parameters aside.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(subtype) => subtype == "json" || subtype.ends_with("+json"),
        None => false,
    }
}

/// [`Query`] whose rejections are [`ApiError`]s (400).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// [`Path`] whose rejections are [`ApiError`]s (400 for a segment of the wrong type).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/v1/openapi.json")
}

/// Known routes, unsupported method (axum adds the `allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_seed_types() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (409, "conflict_error"),
            (413, "request_too_large"),
            (415, "invalid_request_error"),
            (503, "service_unavailable"),
            (500, "api_error"),
        ] {
            assert_eq!(error_type(StatusCode::from_u16(status).unwrap()), kind);
        }
    }

    #[test]
    fn internal_errors_are_not_leaked() {
        let e = ApiError::from(ServiceError::Internal("disk /secret full".into()));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("secret"));
        let e = ApiError::from(ServiceError::AlreadyExists("rule x already exists".into()));
        assert_eq!(e.status(), StatusCode::CONFLICT);
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            json_content_type(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        for bad in [
            "text/plain",
            "application/jsonx",
            "json",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!with(bad), "{bad}");
        }
        assert!(!json_content_type(&HeaderMap::new()));
    }
}
