//! Admission: the question an edge asks the control plane before sending a request of a key
//! that has a balance or a limit, in the wire format of Envoy's Rate Limit Service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), which the control plane
//! implements. One descriptor carries the request: its key, its id, the tokens it may use and
//! the most it may cost; the answer is OK, or OVER_LIMIT with the error envelope in `raw_body`
//! and `Retry-After` among `response_headers_to_add`.
//!
//! The messages below are the subset of Envoy's protos the exchange uses, with Envoy's field
//! numbers (the control plane decodes them with the full generated types; a test there checks
//! that both agree).

use prost::Message;

use crate::error::{ErrorKind, GatewayError};
use crate::money::Price;
use crate::routing::features::{Features, DEFAULT_OUTPUT_TOKENS};
use crate::routing::Target;
use crate::snapshot::Snapshot;

/// The Rate Limit Service domain of tokenrouter's descriptors.
pub const DOMAIN: &str = "tokenrouter";

/// gRPC service and method the edge calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Descriptor entry keys. `key_id` alone (as Envoy's own rate-limit filter would send it)
/// checks the key's request rate and token budgets; the others add the request's size.
pub const KEY_ID: &str = "key_id";
pub const REQUEST_ID: &str = "request_id";
pub const INPUT_TOKENS: &str = "input_tokens";
pub const OUTPUT_TOKENS: &str = "output_tokens";
pub const RESERVE_PICOS: &str = "reserve_picos";

/// Header of the OVER_LIMIT answer that carries the HTTP status (429 or 402).
pub const STATUS_HEADER: &str = "x-tokenrouter-status";

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `RateLimitResponse.Code`.
pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[prost(bytes = "vec", tag = "5")]
    pub raw_body: Vec<u8>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// What a request may use, as the edge estimates it before sending it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    pub key_id: String,
    pub request_id: String,
    /// Estimated prompt tokens.
    pub input_tokens: u64,
    /// The most output tokens it may produce.
    pub output_tokens: u64,
    /// The most it may cost (pico-dollars): the dearest attempt of its chain.
    pub reserve_picos: i64,
}

impl Ask {
    pub fn encode(&self) -> Vec<u8> {
        let entry = |key: &str, value: String| Entry {
            key: key.to_string(),
            value,
        };
        RateLimitRequest {
            domain: DOMAIN.to_string(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![
                    entry(KEY_ID, self.key_id.clone()),
                    entry(REQUEST_ID, self.request_id.clone()),
                    entry(INPUT_TOKENS, self.input_tokens.to_string()),
                    entry(OUTPUT_TOKENS, self.output_tokens.to_string()),
                    entry(RESERVE_PICOS, self.reserve_picos.to_string()),
                ],
            }],
            hits_addend: 1,
        }
        .encode_to_vec()
    }
}

/// The most a request may cost on one attempt: its estimated prompt at the input price and its
/// output limit at the output price.
pub fn max_cost_picos(price: &Price, input_tokens: u64, output_tokens: u64) -> i64 {
    let total = i128::from(input_tokens) * i128::from(price.input.max(0))
        + i128::from(output_tokens) * i128::from(price.output.max(0));
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// The most output tokens and the most cost a request may reach over every attempt of its
/// chain: the request's own output limit, else each model's documented maximum output (else
/// [`DEFAULT_OUTPUT_TOKENS`]), at each attempt's prices.
pub fn reservation(
    snapshot: &Snapshot,
    attempts: &[Target<'_>],
    features: &Features,
) -> (u64, i64) {
    let mut output = 0;
    let mut reserve = 0;
    for t in attempts {
        let out = if features.requested_output_limit {
            features.max_output_tokens
        } else {
            snapshot
                .model(t.provider.kind, &t.model_id)
                .map(|m| u64::from(m.max_output_tokens))
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_OUTPUT_TOKENS)
        };
        output = output.max(out);
        reserve = reserve.max(max_cost_picos(&t.price, features.est_input_tokens, out));
    }
    (output, reserve)
}

/// The control plane's answer: `Ok(())` to go on, or the error to answer the client with and
/// its `Retry-After` (seconds). An answer that cannot be read is `Err(None)`.
pub fn verdict(body: &[u8]) -> Result<(), Option<(GatewayError, Option<u32>)>> {
    let response = RateLimitResponse::decode(body).map_err(|_| None)?;
    match response.overall_code {
        CODE_OK => Ok(()),
        CODE_OVER_LIMIT => {
            let header = |name: &str| {
                response
                    .response_headers_to_add
                    .iter()
                    .find(|h| h.key.eq_ignore_ascii_case(name))
                    .map(|h| h.value.as_str())
            };
            let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u32>().ok());
            let kind = match header(STATUS_HEADER) {
                Some("402") => ErrorKind::InsufficientQuota,
                _ => ErrorKind::RateLimit,
            };
            let message = serde_json::from_slice::<serde_json::Value>(&response.raw_body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| match kind {
                    ErrorKind::InsufficientQuota => "Insufficient balance for this request.".into(),
                    _ => "Rate limit exceeded.".into(),
                });
            Err(Some((GatewayError::new(kind, message), retry_after)))
        }
        _ => Err(None),
    }
}

/// Reads a descriptor's entries (the control plane's side): every known key at most once.
pub fn parse_entries<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Ask, String> {
    let mut ask = Ask::default();
    for (key, value) in entries {
        let number = |what: &str| -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("descriptor entry {what} is not a whole number: {value:?}"))
        };
        match key {
            KEY_ID => ask.key_id = value.to_string(),
            REQUEST_ID => ask.request_id = value.to_string(),
            INPUT_TOKENS => ask.input_tokens = number(INPUT_TOKENS)?,
            OUTPUT_TOKENS => ask.output_tokens = number(OUTPUT_TOKENS)?,
            RESERVE_PICOS => {
                ask.reserve_picos = i64::try_from(number(RESERVE_PICOS)?)
                    .map_err(|_| "descriptor entry reserve_picos is too large".to_string())?
            }
            // Entries of other descriptors (Envoy's own actions) are not ours to judge.
            _ => {}
        }
    }
    if ask.key_id.is_empty() {
        return Err("descriptor has no key_id entry".into());
    }
    Ok(ask)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ask_round_trips_through_entries() {
        let ask = Ask {
            key_id: "key_1".into(),
            request_id: "req".into(),
            input_tokens: 12,
            output_tokens: 34,
            reserve_picos: 5_000,
        };
        let decoded = RateLimitRequest::decode(ask.encode().as_slice()).unwrap();
        assert_eq!(decoded.domain, DOMAIN);
        let entries = decoded.descriptors[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()));
        assert_eq!(parse_entries(entries).unwrap(), ask);
    }

    #[test]
    fn entries_are_checked() {
        assert!(parse_entries([("request_id", "r")]).is_err());
        assert!(parse_entries([("key_id", "k"), ("input_tokens", "-1")]).is_err());
        assert!(
            parse_entries([("key_id", "k"), ("reserve_picos", "99999999999999999999")]).is_err()
        );
        let only_key = parse_entries([("key_id", "k"), ("generic_key", "x")]).unwrap();
        assert_eq!(only_key.key_id, "k");
        assert_eq!(only_key.reserve_picos, 0);
    }

    #[test]
    fn max_cost_uses_both_prices_and_saturates() {
        let price = Price {
            input: 150_000,
            output: 600_000,
            cached_input: 0,
        };
        assert_eq!(
            max_cost_picos(&price, 100, 10),
            100 * 150_000 + 10 * 600_000
        );
        assert_eq!(max_cost_picos(&price, u64::MAX, u64::MAX), i64::MAX);
    }

    #[test]
    fn verdicts() {
        let ok = RateLimitResponse {
            overall_code: CODE_OK,
            ..RateLimitResponse::default()
        };
        assert_eq!(verdict(&ok.encode_to_vec()), Ok(()));
        let over = RateLimitResponse {
            overall_code: CODE_OVER_LIMIT,
            response_headers_to_add: vec![
                HeaderValue {
                    key: "retry-after".into(),
                    value: "7".into(),
                },
                HeaderValue {
                    key: STATUS_HEADER.into(),
                    value: "429".into(),
                },
            ],
            raw_body:
                br#"{"error":{"type":"rate_limit_error","message":"10 requests per second"}}"#
                    .to_vec(),
        };
        let (e, retry) = verdict(&over.encode_to_vec()).unwrap_err().unwrap();
        assert_eq!(e.kind, ErrorKind::RateLimit);
        assert_eq!(e.message, "10 requests per second");
        assert_eq!(retry, Some(7));
        let quota = RateLimitResponse {
            overall_code: CODE_OVER_LIMIT,
            response_headers_to_add: vec![HeaderValue {
                key: STATUS_HEADER.into(),
                value: "402".into(),
            }],
            raw_body: Vec::new(),
        };
        let (e, retry) = verdict(&quota.encode_to_vec()).unwrap_err().unwrap();
        assert_eq!(e.kind, ErrorKind::InsufficientQuota);
        assert_eq!(retry, None);
        assert_eq!(verdict(b"\xff\xff"), Err(None));
        assert_eq!(
            verdict(&RateLimitResponse::default().encode_to_vec()),
            Err(None)
        );
    }
}
