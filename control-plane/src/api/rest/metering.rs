//! Money and limits: `/balance` and `/topup` (the admin for any key, a gateway key for its
//! own), `/credits` (admin), `/webhooks/stripe` (no bearer token: the payment provider's
//! signature authenticates it), and the limits objects keys and workspaces share.
//!
//! Money is exact decimal USD strings both ways (`"5"`, `"0.25"`); seed 002's `balance` and
//! `topup` objects are the answers' first fields.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tokenrouter_engine::money::format_picos_usd;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{rejection, ApiError, ApiJson, ApiQuery, ErrorBody};
use super::ApiState;
use crate::limits::Effective;
use crate::service::{parse_credit_usd, BalanceView, ServiceError, WebhookOutcome};
use crate::store::metering::Owner;

/// Longest note a credit grant may carry.
pub const MAX_NOTE_CHARS: usize = 1000;

/// Limits of a key or a workspace. Null or absent = inherit (a key from its workspace, a
/// workspace from the server's defaults); 0 = off. In a `PATCH`, absent fields stay as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({"rps": 10, "hour_total_tokens": 1000000}))]
pub struct Limits {
    /// Burst requests per second (a token bucket of this size, refilled at this rate).
    pub rps: Option<u32>,
    /// Rolling one-hour token budgets, counted from the usage the requests reported.
    pub hour_total_tokens: Option<u64>,
    pub hour_input_tokens: Option<u64>,
    pub hour_output_tokens: Option<u64>,
}

/// [`Limits`]' fields, read from a JSON object only (serde would take a struct from an array
/// too: `[null, null]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFields {
    #[serde(default)]
    rps: Option<u32>,
    #[serde(default)]
    hour_total_tokens: Option<u64>,
    #[serde(default)]
    hour_input_tokens: Option<u64>,
    #[serde(default)]
    hour_output_tokens: Option<u64>,
}

impl<'de> Deserialize<'de> for Limits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Limits, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        if !value.is_object() {
            return Err(D::Error::custom("limits must be a JSON object"));
        }
        let f = LimitsFields::deserialize(value).map_err(D::Error::custom)?;
        Ok(Limits {
            rps: f.rps,
            hour_total_tokens: f.hour_total_tokens,
            hour_input_tokens: f.hour_input_tokens,
            hour_output_tokens: f.hour_output_tokens,
        })
    }
}

impl From<crate::store::Limits> for Limits {
    fn from(l: crate::store::Limits) -> Limits {
        Limits {
            rps: l.rps,
            hour_total_tokens: l.hour_total_tokens,
            hour_input_tokens: l.hour_input_tokens,
            hour_output_tokens: l.hour_output_tokens,
        }
    }
}

impl From<Limits> for crate::store::Limits {
    fn from(l: Limits) -> crate::store::Limits {
        crate::store::Limits {
            rps: l.rps,
            hour_total_tokens: l.hour_total_tokens,
            hour_input_tokens: l.hour_input_tokens,
            hour_output_tokens: l.hour_output_tokens,
        }
    }
}

/// The limits enforced for a key after inheriting (0 = off).
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct EffectiveLimits {
    pub rps: u32,
    pub hour_total_tokens: u64,
    pub hour_input_tokens: u64,
    pub hour_output_tokens: u64,
}

impl From<Effective> for EffectiveLimits {
    fn from(e: Effective) -> EffectiveLimits {
        EffectiveLimits {
            rps: e.rps,
            hour_total_tokens: e.hour_total_tokens,
            hour_input_tokens: e.hour_input_tokens,
            hour_output_tokens: e.hour_output_tokens,
        }
    }
}

/// Whose balance it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BalanceOwner {
    Key,
    Workspace,
    /// The sum over every active key.
    Total,
}

/// A balance: seed 002's `{"balance_usd", "currency"}`, then who owns it and what is free.
#[derive(Debug, Serialize, ToSchema)]
pub struct Balance {
    /// Credit left, exact decimal USD (e.g. "4.99871").
    pub balance_usd: String,
    /// Always "USD".
    pub currency: String,
    pub owner: BalanceOwner,
    /// The key or workspace id; null for the total.
    pub id: Option<String>,
    /// False: the owner has no balance (its requests are never refused for credit) and the
    /// amounts are "0".
    pub metered: bool,
    /// Held by requests in flight.
    pub reserved_usd: String,
    /// Balance minus reserved, never below 0.
    pub available_usd: String,
}

impl From<BalanceView> for Balance {
    fn from(b: BalanceView) -> Balance {
        let usd = |p: i64| format_picos_usd(i128::from(p));
        Balance {
            balance_usd: usd(b.balance_picos),
            currency: "USD".into(),
            owner: match b.owner {
                "key" => BalanceOwner::Key,
                "workspace" => BalanceOwner::Workspace,
                _ => BalanceOwner::Total,
            },
            available_usd: usd(b.available_picos()),
            reserved_usd: usd(b.reserved_picos),
            metered: b.metered,
            id: Some(b.id).filter(|id| !id.is_empty()),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BalanceParams {
    /// This key's balance (a gateway key: only its own id).
    pub key_id: Option<String>,
    /// This workspace's balance (admin only).
    pub workspace_id: Option<String>,
}

/// A checkout to add credit to a key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount_usd": "5"}))]
pub struct TopupRequest {
    /// Exact decimal USD, whole cents (e.g. "5" or "12.50"), at least the payment provider's
    /// minimum (Stripe: 0.50).
    pub amount_usd: String,
    /// The key to credit. Required with the admin token; a gateway key may name only itself
    /// (absent = itself).
    #[serde(default)]
    pub key_id: Option<String>,
}

/// Seed 002's top-up object. Nothing has been paid: a person must open `checkout_url` and pay
/// there; the credit arrives with the payment provider's webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct Topup {
    pub checkout_url: String,
    pub session_id: String,
    /// Exact decimal USD.
    pub amount_usd: String,
    /// When the checkout expires (Unix seconds).
    pub expires_at: i64,
    /// The key the payment credits.
    pub key_id: String,
}

/// Credit to add by hand (recorded in the credit ledger).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key_id": "key_0123abcd", "amount_usd": "5", "note": "trial"}))]
pub struct GrantCredit {
    /// Exactly one of `key_id` and `workspace_id`.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Exact decimal USD (at most 6 decimals), more than 0 and at most 1000000.
    pub amount_usd: String,
    /// Why (kept in the ledger).
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub note: Option<String>,
}

/// What the webhook did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookResult {
    /// The payment was credited.
    Credited,
    /// This event was credited before; nothing changed.
    Duplicate,
    /// Not a payment to credit (another event type, or not paid).
    Ignored,
}

/// The acknowledgement the payment provider gets.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceived {
    /// Always true.
    pub received: bool,
    pub outcome: WebhookResult,
    /// The key credited (`credited` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Its balance after the credit (`credited` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_usd: Option<String>,
}

/// A Stripe event (`checkout.session.completed` credits; every other type is acknowledged).
/// The body is read as the raw bytes Stripe signed.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct StripeEvent {
    pub id: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// Routes a gateway key may call (for its own key).
pub fn readers() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(get_balance))
        .routes(routes!(create_topup))
}

/// Admin-only routes.
pub fn admin() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(grant_credit))
}

/// Routes without a bearer token.
pub fn webhooks() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(stripe_webhook))
}

fn given(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Exactly one of a key and a workspace, or neither.
fn owner(key_id: Option<String>, workspace_id: Option<String>) -> Result<Option<Owner>, ApiError> {
    match (given(key_id), given(workspace_id)) {
        (None, None) => Ok(None),
        (Some(key), None) => Ok(Some(Owner::Key(key))),
        (None, Some(workspace)) => Ok(Some(Owner::Workspace(workspace))),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give key_id or workspace_id, not both",
        )),
    }
}

/// The key a gateway key may act for: itself.
fn own_key(own: &str, requested: Option<String>) -> Result<String, ApiError> {
    match given(requested) {
        Some(other) if other != own => Err(ApiError::forbidden(
            "a gateway key may read and top up only its own balance",
        )),
        _ => Ok(own.to_string()),
    }
}

/// A balance: the admin names a key or a workspace (neither = the sum over every active key);
/// a gateway key gets its own.
#[utoipa::path(get, path = "/balance", tag = "billing", params(BalanceParams),
    responses(
        (status = 200, description = "The balance", body = Balance),
        (status = 404, description = "No such key or workspace", body = ErrorBody),
    ))]
async fn get_balance(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<BalanceParams>,
) -> Result<Json<Balance>, ApiError> {
    let owner = match &caller {
        Caller::Admin => owner(q.key_id, q.workspace_id)?,
        Caller::Key(own) => {
            if given(q.workspace_id).is_some() {
                return Err(ApiError::forbidden(
                    "a gateway key may read only its own key's balance",
                ));
            }
            Some(Owner::Key(own_key(own, q.key_id)?))
        }
    };
    let view = state.service.balance(owner).await?;
    Ok(Json(view.into()))
}

/// A checkout URL to add credit to a key, from the configured payment backend. Nothing is
/// paid here: hand the URL to a person, who pays on the provider's page; the credit arrives
/// with the provider's signed webhook.
#[utoipa::path(post, path = "/topup", tag = "billing", request_body = TopupRequest,
    responses(
        (status = 200, description = "The checkout (unpaid)", body = Topup),
        (status = 503, description = "No payment backend is configured, or it failed",
            body = ErrorBody),
    ))]
async fn create_topup(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<TopupRequest>,
) -> Result<Json<Topup>, ApiError> {
    let key_id = match &caller {
        Caller::Admin => given(body.key_id).ok_or_else(|| {
            ApiError::bad_request("key_id is required (the key whose balance the payment credits)")
        })?,
        Caller::Key(own) => own_key(own, body.key_id)?,
    };
    let amount = parse_credit_usd(&body.amount_usd)?;
    let session = state.service.create_topup(&key_id, amount).await?;
    tracing::info!(key = %session.key_id, session = %session.session_id, "top-up checkout created");
    Ok(Json(Topup {
        checkout_url: session.checkout_url,
        session_id: session.session_id,
        amount_usd: format_picos_usd(i128::from(session.amount_picos)),
        expires_at: session.expires_at_ms / 1000,
        key_id: session.key_id,
    }))
}

/// Add credit to a key's or a workspace's balance by hand. An owner without a balance gets
/// one: its requests are metered from then on.
#[utoipa::path(post, path = "/credits", tag = "billing", request_body = GrantCredit,
    responses((status = 200, description = "The balance after the grant", body = Balance)))]
async fn grant_credit(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<GrantCredit>,
) -> Result<Json<Balance>, ApiError> {
    let owner = owner(body.key_id, body.workspace_id)?
        .ok_or_else(|| ApiError::bad_request("key_id or workspace_id is required"))?;
    let amount = parse_credit_usd(&body.amount_usd)?;
    let note = body.note.unwrap_or_default();
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(ApiError::bad_request(format!(
            "note is longer than {MAX_NOTE_CHARS} characters"
        )));
    }
    state
        .service
        .grant(owner.clone(), amount, "admin", None, &note)
        .await?;
    tracing::info!(owner = owner.kind(), id = owner.id(), amount_usd = %body.amount_usd, "credit granted");
    let view = state.service.balance(Some(owner)).await?;
    Ok(Json(view.into()))
}

/// Stripe's webhook endpoint (register it in the Stripe dashboard for
/// `checkout.session.completed`). Authenticated by the `Stripe-Signature` header, not by a
/// bearer token. A paid checkout session created by `/topup` credits its key once, whatever
/// the number of deliveries.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing", security(),
    params(("Stripe-Signature" = String, Header,
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256>`, as Stripe sends it")),
    request_body(content = StripeEvent, content_type = "application/json"),
    responses(
        (status = 200, description = "Acknowledged: credited, a duplicate, or ignored",
            body = WebhookReceived),
        (status = 400, description = "No or bad signature, or a payload that is not a payment \
            of a checkout session created here", body = ErrorBody),
        (status = 404, description = "No payment backend is configured (a signed request)",
            body = ErrorBody),
    ))]
async fn stripe_webhook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookReceived>, ApiError> {
    let body = body.map_err(|r| rejection(r.status(), r.body_text()))?;
    // Checked before anything else: without it a request is malformed, backend or not.
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing Stripe-Signature header"))?;
    let outcome = match state.service.payment_webhook(signature, &body).await {
        Ok(outcome) => outcome,
        Err(ServiceError::Unauthenticated(m)) => {
            tracing::warn!(error = %m, "payment webhook refused");
            return Err(ApiError::bad_request(m));
        }
        Err(ServiceError::InvalidArgument(m)) => {
            tracing::warn!(error = %m, "payment webhook refused");
            return Err(ApiError::bad_request(m));
        }
        Err(e) => return Err(e.into()),
    };
    let received = match outcome {
        WebhookOutcome::Credited {
            key_id,
            balance_picos,
        } => WebhookReceived {
            received: true,
            outcome: WebhookResult::Credited,
            key_id: Some(key_id),
            balance_usd: Some(format_picos_usd(i128::from(balance_picos))),
        },
        WebhookOutcome::Duplicate => WebhookReceived {
            received: true,
            outcome: WebhookResult::Duplicate,
            key_id: None,
            balance_usd: None,
        },
        WebhookOutcome::Ignored => WebhookReceived {
            received: true,
            outcome: WebhookResult::Ignored,
            key_id: None,
            balance_usd: None,
        },
    };
    Ok(Json(received))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_one_or_none() {
        assert_eq!(owner(None, None).unwrap(), None);
        assert_eq!(owner(Some(" ".into()), Some(String::new())).unwrap(), None);
        assert_eq!(
            owner(Some("key_a".into()), None).unwrap(),
            Some(Owner::Key("key_a".into()))
        );
        assert_eq!(
            owner(None, Some("team".into())).unwrap(),
            Some(Owner::Workspace("team".into()))
        );
        let both = owner(Some("key_a".into()), Some("team".into())).unwrap_err();
        assert_eq!(both.status().as_u16(), 400);
    }

    #[test]
    fn limits_are_objects() {
        let l: Limits = serde_json::from_str(r#"{"rps": 3, "hour_total_tokens": null}"#).unwrap();
        assert_eq!((l.rps, l.hour_total_tokens), (Some(3), None));
        assert_eq!(
            serde_json::from_str::<Limits>("{}").unwrap(),
            Limits::default()
        );
        for bad in [
            "[null, null]",
            "[]",
            "5",
            r#"{"burst": 1}"#,
            r#"{"rps": -1}"#,
        ] {
            assert!(serde_json::from_str::<Limits>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_gateway_key_acts_only_for_itself() {
        assert_eq!(own_key("key_a", None).unwrap(), "key_a");
        assert_eq!(own_key("key_a", Some("key_a".into())).unwrap(), "key_a");
        assert_eq!(
            own_key("key_a", Some("key_b".into()))
                .unwrap_err()
                .status()
                .as_u16(),
            403
        );
    }

    #[test]
    fn the_balance_json_starts_with_the_seeds_fields() {
        let view = BalanceView {
            owner: "key",
            id: "key_a".into(),
            metered: true,
            balance_picos: 5_000_000_000_000,
            reserved_picos: 250_000_000_000,
        };
        let json = serde_json::to_value(Balance::from(view)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"balance_usd": "5", "currency": "USD", "owner": "key",
                "id": "key_a", "metered": true, "reserved_usd": "0.25",
                "available_usd": "4.75"})
        );
        let text = serde_json::to_string(&Balance::from(BalanceView {
            owner: "total",
            id: String::new(),
            metered: true,
            balance_picos: 0,
            reserved_picos: 0,
        }))
        .unwrap();
        assert!(
            text.starts_with(r#"{"balance_usd":"0","currency":"USD","owner":"total","id":null"#),
            "{text}"
        );
    }
}
