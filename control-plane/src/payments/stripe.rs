//! Stripe Checkout as the payment backend (`TOKENROUTER_PAYMENTS=stripe`).
//!
//! - `checkout`: `POST {TOKENROUTER_STRIPE_API_BASE}/v1/checkout/sessions`, form-encoded, with
//!   the secret key as a bearer token: one line item of `amount` USD (Stripe takes whole cents,
//!   at least 0.50 USD), `metadata[key_id]` and `client_reference_id` naming the key. The
//!   answer's `id`, `url` and `expires_at` are the checkout.
//! - `verify_webhook`: `Stripe-Signature: t=<unix s>,v1=<hex>[,v1=…]` must carry an HMAC-SHA256
//!   of `"<t>.<raw payload>"` keyed with the endpoint's signing secret (compared in constant
//!   time; any of the `v1` values may match) and a `t` within 300 s of now. A
//!   `checkout.session.completed` event whose session is `paid` is a payment of its
//!   `amount_total` cents to `metadata.key_id`; every other event is acknowledged and ignored.
//!
//! Environment: `STRIPE_SECRET_KEY` and `STRIPE_WEBHOOK_SECRET` (required),
//! `TOKENROUTER_STRIPE_API_BASE` (default `https://api.stripe.com`),
//! `TOKENROUTER_TOPUP_SUCCESS_URL` / `TOKENROUTER_TOPUP_CANCEL_URL` (where Stripe sends the
//! payer afterwards; default: the control plane's own `/topup/success` and `/topup/cancel`
//! pages on the default REST address).

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::Request;
use serde::Deserialize;
use sha2::Sha256;

use super::http::{HttpClient, HttpError};
use super::{Checkout, Payment, PaymentBackend, PaymentError, WebhookEvent};

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
pub const DEFAULT_SUCCESS_URL: &str =
    "http://127.0.0.1:8081/topup/success?session_id={CHECKOUT_SESSION_ID}";
pub const DEFAULT_CANCEL_URL: &str = "http://127.0.0.1:8081/topup/cancel";

/// How far a webhook's timestamp may be from now (Stripe's libraries use the same).
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

/// 1 US cent in pico-dollars.
pub const PICOS_PER_CENT: i64 = 10_000_000_000;
/// Stripe's smallest USD charge (0.50 USD).
pub const MIN_CENTS: i64 = 50;
/// Stripe's largest amount (8 digits of cents).
pub const MAX_CENTS: i64 = 99_999_999;

/// Time the Stripe API has to answer a checkout call.
const API_TIMEOUT: Duration = Duration::from_secs(20);

type HmacSha256 = Hmac<Sha256>;

pub struct Stripe {
    secret_key: String,
    webhook_secret: String,
    /// Without a trailing `/`.
    api_base: String,
    success_url: String,
    cancel_url: String,
    http: HttpClient,
}

/// Never shows the secrets.
impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("api_base", &self.api_base)
            .field("success_url", &self.success_url)
            .field("cancel_url", &self.cancel_url)
            .finish_non_exhaustive()
    }
}

impl Stripe {
    /// Configured from the variables `var` looks up (see the module documentation).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Stripe, String> {
        let value = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &str| {
            value(name).ok_or_else(|| {
                format!("TOKENROUTER_PAYMENTS=stripe needs {name} (from the Stripe dashboard)")
            })
        };
        let api_base = value("TOKENROUTER_STRIPE_API_BASE")
            .unwrap_or_else(|| DEFAULT_API_BASE.to_string())
            .trim_end_matches('/')
            .to_string();
        let endpoint = format!("{api_base}/v1/checkout/sessions");
        match endpoint.parse::<hyper::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => {
                return Err(format!(
                    "TOKENROUTER_STRIPE_API_BASE={api_base:?} is not an http(s) URL"
                ))
            }
        }
        let url = |name: &str, default: &str| -> Result<String, String> {
            let url = value(name).unwrap_or_else(|| default.to_string());
            if url.starts_with("https://") || url.starts_with("http://") {
                Ok(url)
            } else {
                Err(format!("{name}={url:?} is not an http(s) URL"))
            }
        };
        Ok(Stripe {
            secret_key: required("STRIPE_SECRET_KEY")?,
            webhook_secret: required("STRIPE_WEBHOOK_SECRET")?,
            api_base,
            success_url: url("TOKENROUTER_TOPUP_SUCCESS_URL", DEFAULT_SUCCESS_URL)?,
            cancel_url: url("TOKENROUTER_TOPUP_CANCEL_URL", DEFAULT_CANCEL_URL)?,
            http: HttpClient::new()?,
        })
    }

    /// The form `POST /v1/checkout/sessions` gets.
    fn checkout_form(&self, key_id: &str, cents: i64) -> Result<String, PaymentError> {
        let cents = cents.to_string();
        let product = format!("tokenrouter credit for key {key_id}");
        serde_urlencoded::to_string([
            ("mode", "payment"),
            ("line_items[0][price_data][currency]", "usd"),
            ("line_items[0][price_data][unit_amount]", cents.as_str()),
            (
                "line_items[0][price_data][product_data][name]",
                product.as_str(),
            ),
            ("line_items[0][quantity]", "1"),
            ("metadata[key_id]", key_id),
            ("client_reference_id", key_id),
            ("success_url", self.success_url.as_str()),
            ("cancel_url", self.cancel_url.as_str()),
        ])
        .map_err(|e| PaymentError::Unavailable(format!("cannot encode the Stripe request: {e}")))
    }
}

/// Pico-dollars as whole US cents, within what Stripe charges.
pub fn picos_to_cents(picos: i64) -> Result<i64, PaymentError> {
    if picos % PICOS_PER_CENT != 0 {
        return Err(PaymentError::Invalid(
            "Stripe charges whole cents: give the amount with at most 2 decimals (e.g. \"5\" or \
             \"12.50\")"
                .into(),
        ));
    }
    let cents = picos / PICOS_PER_CENT;
    if cents < MIN_CENTS {
        return Err(PaymentError::Invalid(
            "Stripe's smallest charge is 0.50 USD".into(),
        ));
    }
    if cents > MAX_CENTS {
        return Err(PaymentError::Invalid(
            "Stripe's largest charge is 999999.99 USD".into(),
        ));
    }
    Ok(cents)
}

/// Whole US cents as pico-dollars; `None` when negative or out of range.
pub fn cents_to_picos(cents: i64) -> Option<i64> {
    if cents < 0 {
        return None;
    }
    cents.checked_mul(PICOS_PER_CENT)
}

/// Checks a `Stripe-Signature` header against the raw payload.
pub fn verify_signature(
    secret: &str,
    header: &str,
    payload: &[u8],
    now_s: i64,
) -> Result<(), String> {
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for item in header.split(',') {
        let Some((name, value)) = item.split_once('=') else {
            continue;
        };
        match name.trim() {
            "t" => timestamp = Some(value.trim()),
            // A value that is not hex cannot match; it is skipped like an unknown scheme.
            "v1" => signatures.extend(hex::decode(value.trim()).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("the Stripe-Signature header has no timestamp (t=…)")?;
    let t: i64 = timestamp
        .parse()
        .map_err(|_| "the Stripe-Signature timestamp is not a number")?;
    if signatures.is_empty() {
        return Err("the Stripe-Signature header has no v1 signature".into());
    }
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .map_err(|_| "the webhook secret cannot key an HMAC")?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(payload);
    // `verify_slice` compares in constant time.
    if !signatures
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok())
    {
        return Err("no v1 signature matches the payload (wrong webhook secret?)".into());
    }
    if now_s.abs_diff(t) > SIGNATURE_TOLERANCE_S.unsigned_abs() {
        return Err(format!(
            "the Stripe-Signature timestamp is more than {SIGNATURE_TOLERANCE_S} s from now"
        ));
    }
    Ok(())
}

/// `t=<now>,v1=<hex>`: what Stripe sends (tests and tools that replay events).
pub fn sign(secret: &str, payload: &[u8], t: i64) -> String {
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Session {
    id: String,
    #[serde(default)]
    payment_status: Option<String>,
    #[serde(default)]
    amount_total: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    client_reference_id: Option<String>,
}

/// Reads a (verified) event.
pub fn parse_event(payload: &[u8]) -> Result<WebhookEvent, String> {
    let event: Event = serde_json::from_slice(payload)
        .map_err(|e| format!("the webhook payload is not a Stripe event: {e}"))?;
    if event.kind != "checkout.session.completed" {
        return Ok(WebhookEvent::Ignored {
            event_id: event.id,
            kind: event.kind,
        });
    }
    let object = event
        .data
        .ok_or("a checkout.session.completed event without data")?
        .object;
    let session: Session = serde_json::from_value(object)
        .map_err(|e| format!("the event's checkout session cannot be read: {e}"))?;
    if session.payment_status.as_deref() != Some("paid") {
        return Ok(WebhookEvent::Ignored {
            event_id: event.id,
            kind: format!(
                "{} ({})",
                event.kind,
                session
                    .payment_status
                    .as_deref()
                    .unwrap_or("no payment_status")
            ),
        });
    }
    let key_id = session
        .metadata
        .as_ref()
        .and_then(|m| m.get("key_id"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or(session.client_reference_id)
        .filter(|k| !k.is_empty());
    let Some(key_id) = key_id else {
        // Another application's session on the same Stripe account.
        return Ok(WebhookEvent::Ignored {
            event_id: event.id,
            kind: format!("{} (no key_id: not a tokenrouter top-up)", event.kind),
        });
    };
    match session.currency.as_deref() {
        Some(c) if c.eq_ignore_ascii_case("usd") => {}
        other => {
            return Err(format!(
                "checkout session {} is in {:?}, not USD",
                session.id,
                other.unwrap_or("no currency")
            ))
        }
    }
    let amount_picos = session
        .amount_total
        .and_then(cents_to_picos)
        .ok_or_else(|| format!("checkout session {} has no valid amount_total", session.id))?;
    Ok(WebhookEvent::Paid(Payment {
        event_id: event.id,
        session_id: session.id,
        key_id,
        amount_picos,
    }))
}

#[derive(Debug, Deserialize)]
struct SessionCreated {
    id: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct StripeErrorBody {
    error: StripeError,
}

#[derive(Debug, Deserialize)]
struct StripeError {
    #[serde(default)]
    message: Option<String>,
}

#[async_trait]
impl PaymentBackend for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn checkout(&self, key_id: &str, amount_picos: i64) -> Result<Checkout, PaymentError> {
        let cents = picos_to_cents(amount_picos)?;
        let form = self.checkout_form(key_id, cents)?;
        let request = Request::post(format!("{}/v1/checkout/sessions", self.api_base))
            .header(AUTHORIZATION, format!("Bearer {}", self.secret_key))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| {
                PaymentError::Unavailable(format!("cannot build the Stripe request: {e}"))
            })?;
        let (status, body) = self
            .http
            .send(request, API_TIMEOUT)
            .await
            .map_err(|e| match e {
                HttpError::Network(m) => PaymentError::Unavailable(format!(
                    "cannot reach Stripe at {}: {m}",
                    self.api_base
                )),
                HttpError::Body(m) => PaymentError::Unavailable(format!("Stripe: {m}")),
            })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<StripeErrorBody>(&body)
                .ok()
                .and_then(|b| b.error.message)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            tracing::warn!(%status, %message, "Stripe refused a checkout session");
            return Err(PaymentError::Unavailable(format!(
                "Stripe answered {}: {message}",
                status.as_u16()
            )));
        }
        let created: SessionCreated = serde_json::from_slice(&body).map_err(|e| {
            PaymentError::Unavailable(format!("Stripe's answer is not a checkout session: {e}"))
        })?;
        let url = created.url.filter(|u| !u.is_empty()).ok_or_else(|| {
            PaymentError::Unavailable(format!(
                "Stripe's checkout session {} has no url",
                created.id
            ))
        })?;
        Ok(Checkout {
            session_id: created.id,
            url,
            expires_at_s: created.expires_at.unwrap_or(0),
        })
    }

    fn verify_webhook(
        &self,
        signature: &str,
        payload: &[u8],
        now_s: i64,
    ) -> Result<WebhookEvent, String> {
        verify_signature(&self.webhook_secret, signature, payload, now_s)?;
        parse_event(payload)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const NOW: i64 = 1_700_000_000;

    fn paid_event(amount_total: i64) -> Vec<u8> {
        serde_json::json!({
            "id": "evt_1", "object": "event", "type": "checkout.session.completed",
            "data": {"object": {
                "id": "cs_test_1", "object": "checkout.session", "payment_status": "paid",
                "amount_total": amount_total, "currency": "usd",
                "metadata": {"key_id": "key_abc"}, "client_reference_id": "key_abc"
            }}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_good_signature_verifies() {
        let payload = paid_event(500);
        let header = sign(SECRET, &payload, NOW);
        assert!(header.starts_with(&format!("t={NOW},v1=")));
        verify_signature(SECRET, &header, &payload, NOW).unwrap();
        // Within the tolerance either way; spaces around items are fine.
        verify_signature(SECRET, &header, &payload, NOW + 300).unwrap();
        verify_signature(SECRET, &header, &payload, NOW - 300).unwrap();
        let spaced = header.replace(",", " , ");
        verify_signature(SECRET, &spaced, &payload, NOW).unwrap();
    }

    #[test]
    fn tampered_payloads_and_signatures_fail() {
        let payload = paid_event(500);
        let header = sign(SECRET, &payload, NOW);
        let tampered = paid_event(50_000);
        assert!(verify_signature(SECRET, &header, &tampered, NOW)
            .unwrap_err()
            .contains("no v1 signature matches"));
        // A changed timestamp changes what was signed.
        let moved = header.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert!(verify_signature(SECRET, &moved, &payload, NOW).is_err());
        // A flipped hex digit.
        let mut flipped = header.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert!(verify_signature(SECRET, &flipped, &payload, NOW).is_err());
        for bad in ["", "garbage", "v1=abcd", &format!("t={NOW}"), "t=x,v1=00"] {
            assert!(
                verify_signature(SECRET, bad, &payload, NOW).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn stale_and_future_timestamps_fail() {
        let payload = paid_event(500);
        let header = sign(SECRET, &payload, NOW);
        let e = verify_signature(SECRET, &header, &payload, NOW + 301).unwrap_err();
        assert!(e.contains("300 s"), "{e}");
        assert!(verify_signature(SECRET, &header, &payload, NOW - 301).is_err());
    }

    #[test]
    fn the_wrong_secret_fails() {
        let payload = paid_event(500);
        let header = sign("whsec_other", &payload, NOW);
        assert!(verify_signature(SECRET, &header, &payload, NOW).is_err());
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let payload = paid_event(500);
        let good = sign(SECRET, &payload, NOW);
        let good_v1 = good.split_once(",v1=").unwrap().1;
        let other = sign("whsec_rolled", &payload, NOW);
        let other_v1 = other.split_once(",v1=").unwrap().1;
        // During a secret roll Stripe signs with both; v0 and unknown schemes are ignored.
        let header = format!("t={NOW},v1={other_v1},v0=deadbeef,v1=zz,v1={good_v1}");
        verify_signature(SECRET, &header, &payload, NOW).unwrap();
        let only_v0 = format!("t={NOW},v0={good_v1}");
        assert!(verify_signature(SECRET, &only_v0, &payload, NOW).is_err());
    }

    #[test]
    fn amounts_are_whole_cents_within_stripes_range() {
        assert_eq!(picos_to_cents(5 * 1_000_000_000_000).unwrap(), 500);
        assert_eq!(picos_to_cents(12_340_000_000_000).unwrap(), 1234);
        assert_eq!(picos_to_cents(50 * PICOS_PER_CENT).unwrap(), 50);
        assert_eq!(
            picos_to_cents(MAX_CENTS * PICOS_PER_CENT).unwrap(),
            MAX_CENTS
        );
        for bad in [
            5 * 1_000_000_000_000 + 1, // 5.000000000001
            1_234_500_000_000,         // 1.2345
            49 * PICOS_PER_CENT,       // below Stripe's minimum
            (MAX_CENTS + 1) * PICOS_PER_CENT,
            0,
        ] {
            assert!(
                matches!(picos_to_cents(bad), Err(PaymentError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(picos_to_cents(1_234_500_000_000)
            .unwrap_err()
            .to_string()
            .contains("whole cents"));
        assert_eq!(cents_to_picos(500), Some(5_000_000_000_000));
        assert_eq!(cents_to_picos(1), Some(PICOS_PER_CENT));
        assert_eq!(cents_to_picos(-1), None);
        assert_eq!(cents_to_picos(i64::MAX), None);
    }

    #[test]
    fn events_are_read() {
        assert_eq!(
            parse_event(&paid_event(1234)).unwrap(),
            WebhookEvent::Paid(Payment {
                event_id: "evt_1".into(),
                session_id: "cs_test_1".into(),
                key_id: "key_abc".into(),
                amount_picos: 1234 * PICOS_PER_CENT,
            })
        );
        let other = br#"{"id": "evt_2", "type": "payment_intent.created", "data": {"object": {}}}"#;
        assert_eq!(
            parse_event(other).unwrap(),
            WebhookEvent::Ignored {
                event_id: "evt_2".into(),
                kind: "payment_intent.created".into()
            }
        );
        let unpaid = String::from_utf8(paid_event(500))
            .unwrap()
            .replace("\"paid\"", "\"unpaid\"");
        assert!(matches!(
            parse_event(unpaid.as_bytes()).unwrap(),
            WebhookEvent::Ignored { .. }
        ));
        let foreign = String::from_utf8(paid_event(500))
            .unwrap()
            .replace("key_abc", "");
        assert!(matches!(
            parse_event(foreign.as_bytes()).unwrap(),
            WebhookEvent::Ignored { .. }
        ));
        let eur = String::from_utf8(paid_event(500))
            .unwrap()
            .replace("\"usd\"", "\"eur\"");
        assert!(parse_event(eur.as_bytes()).is_err());
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"id": "e", "type": "checkout.session.completed"}"#,
        ] {
            assert!(
                parse_event(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_checkout_form_is_stripes() {
        let stripe = Stripe::from_vars(|name| match name {
            "STRIPE_SECRET_KEY" => Some("sk_test_1".into()),
            "STRIPE_WEBHOOK_SECRET" => Some(SECRET.into()),
            _ => None,
        })
        .unwrap();
        let form = stripe.checkout_form("key_abc", 500).unwrap();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&form).unwrap();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(get("mode"), "payment");
        assert_eq!(get("line_items[0][price_data][currency]"), "usd");
        assert_eq!(get("line_items[0][price_data][unit_amount]"), "500");
        assert_eq!(get("line_items[0][quantity]"), "1");
        assert_eq!(get("metadata[key_id]"), "key_abc");
        assert_eq!(get("client_reference_id"), "key_abc");
        assert_eq!(get("success_url"), DEFAULT_SUCCESS_URL);
        assert_eq!(get("cancel_url"), DEFAULT_CANCEL_URL);
        assert!(get("line_items[0][price_data][product_data][name]").contains("key_abc"));

        let bad = Stripe::from_vars(|name| match name {
            "STRIPE_SECRET_KEY" => Some("sk".into()),
            "STRIPE_WEBHOOK_SECRET" => Some("wh".into()),
            "TOKENROUTER_STRIPE_API_BASE" => Some("ftp://x".into()),
            _ => None,
        });
        assert!(bad.unwrap_err().contains("TOKENROUTER_STRIPE_API_BASE"));
    }
}
