//! `envoy.service.ratelimit.v3.RateLimitService`: the control plane as Envoy's Rate Limit
//! Service, in front of [`crate::limits::Limiter`].
//!
//! Domain `tokenrouter`. A descriptor is judged when it has a `key_id` entry; the edge filter
//! adds `request_id`, `input_tokens`, `output_tokens` and `reserve_picos`
//! (`tokenrouter_engine::admission`), which Envoy's own rate-limit filter (sending just
//! `key_id`, e.g. from a `request_headers` action) leaves out: it then gets the key's request
//! rate and token budgets. An OVER_LIMIT answer carries the gateway's error envelope as
//! `raw_body`, `Retry-After` and the HTTP status (`x-tokenrouter-status`: 429, or 402 for a
//! balance) in `response_headers_to_add`.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tokenrouter_engine::admission::{self, parse_entries};
use tokenrouter_engine::{ErrorKind, GatewayError};
use tonic::{Request, Response, Status};

use crate::limits::{Limiter, Refusal};
use crate::service::now_ms;

#[derive(Debug)]
pub struct RateLimitApi {
    limiter: Arc<Limiter>,
}

impl RateLimitApi {
    pub fn new(limiter: Arc<Limiter>) -> RateLimitApi {
        RateLimitApi { limiter }
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value,
        ..HeaderValue::default()
    }
}

fn status(code: Code) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        ..DescriptorStatus::default()
    }
}

/// The OVER_LIMIT answer for a refusal.
fn over_limit(
    refusal: Refusal,
    request_id: &str,
    statuses: Vec<DescriptorStatus>,
) -> RateLimitResponse {
    let (kind, message, limit, retry_after) = match refusal {
        Refusal::Rate {
            limit,
            message,
            retry_after_s,
        } => (ErrorKind::RateLimit, message, limit, retry_after_s),
        Refusal::Quota { message } => (ErrorKind::InsufficientQuota, message, "balance", None),
    };
    let error = GatewayError::new(kind, message);
    let mut headers = vec![
        header(admission::STATUS_HEADER, error.status().to_string()),
        header("x-tokenrouter-limit", limit.to_string()),
    ];
    if let Some(s) = retry_after {
        headers.push(header("retry-after", s.to_string()));
    }
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses,
        response_headers_to_add: headers,
        raw_body: error.to_json(request_id),
        ..RateLimitResponse::default()
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitApi {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        if request.domain != admission::DOMAIN {
            return Err(Status::invalid_argument(format!(
                "unknown rate limit domain {:?} (this service judges {:?})",
                request.domain,
                admission::DOMAIN
            )));
        }
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        for (i, descriptor) in request.descriptors.iter().enumerate() {
            let entries = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()));
            if !descriptor
                .entries
                .iter()
                .any(|e| e.key == admission::KEY_ID)
            {
                // Not a tokenrouter descriptor: nothing here limits it.
                statuses.push(status(Code::Ok));
                continue;
            }
            let ask = parse_entries(entries).map_err(Status::invalid_argument)?;
            let verdict = self.limiter.admit(&ask, now_ms()).await.map_err(|e| {
                tracing::error!(error = %e, "admission could not read the store");
                Status::unavailable("limits cannot be checked right now")
            })?;
            if let Err(refusal) = verdict {
                statuses.push(status(Code::OverLimit));
                statuses.extend(
                    request.descriptors[i + 1..]
                        .iter()
                        .map(|_| status(Code::Unknown)),
                );
                return Ok(Response::new(over_limit(
                    refusal,
                    &ask.request_id,
                    statuses,
                )));
            }
            statuses.push(status(Code::Ok));
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses,
            ..RateLimitResponse::default()
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use prost::Message;

    /// The edge's hand-written subset and Envoy's generated messages agree on the wire.
    #[test]
    fn edge_messages_match_envoys() {
        let ask = admission::Ask {
            key_id: "key_1".into(),
            request_id: "r1".into(),
            input_tokens: 10,
            output_tokens: 20,
            reserve_picos: 30,
        };
        let decoded = RateLimitRequest::decode(ask.encode().as_slice()).unwrap();
        assert_eq!(decoded.domain, "tokenrouter");
        assert_eq!(decoded.hits_addend, 1);
        let entries: Vec<(&str, &str)> = decoded.descriptors[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(parse_entries(entries).unwrap(), ask);

        let answer = over_limit(
            Refusal::Rate {
                limit: "requests_per_second",
                message: "slow down".into(),
                retry_after_s: Some(3),
            },
            "r1",
            vec![status(Code::OverLimit)],
        );
        let (error, retry) = admission::verdict(&answer.encode_to_vec())
            .unwrap_err()
            .unwrap();
        assert_eq!(error.kind, ErrorKind::RateLimit);
        assert_eq!(error.message, "slow down");
        assert_eq!(retry, Some(3));
        let quota = over_limit(
            Refusal::Quota {
                message: "top up".into(),
            },
            "r1",
            Vec::new(),
        );
        let (error, retry) = admission::verdict(&quota.encode_to_vec())
            .unwrap_err()
            .unwrap();
        assert_eq!(error.kind, ErrorKind::InsufficientQuota);
        assert_eq!(retry, None);
        let ok = RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..RateLimitResponse::default()
        };
        assert_eq!(admission::verdict(&ok.encode_to_vec()), Ok(()));
    }
}
