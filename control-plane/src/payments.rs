//! Payment backends for `topup`: a backend hands out checkout URLs and verifies the webhooks
//! that report payments. Credit is added only by a verified webhook, once per event id; nothing
//! is ever paid automatically.
//!
//! Chosen with `TOKENROUTER_PAYMENTS` (unset or `none` = no backend: `topup` answers that none
//! is configured; `stripe` = [`stripe::Stripe`], configured from its own variables).

pub mod http;
pub mod stripe;

use std::sync::Arc;

use async_trait::async_trait;

/// A checkout session a user pays through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    pub session_id: String,
    pub url: String,
    /// Unix seconds.
    pub expires_at_s: i64,
}

/// A verified payment: credit `amount_picos` to `key_id`, once per `event_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub event_id: String,
    pub session_id: String,
    pub key_id: String,
    pub amount_picos: i64,
}

/// What a verified webhook says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookEvent {
    Paid(Payment),
    /// Another event type (acknowledged, nothing to do).
    Ignored {
        event_id: String,
        kind: String,
    },
}

/// Why a checkout could not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The request cannot be paid this way (e.g. an amount that is not whole cents): the
    /// caller's to fix.
    #[error("{0}")]
    Invalid(String),
    /// The payment provider failed or could not be reached.
    #[error("{0}")]
    Unavailable(String),
}

#[async_trait]
pub trait PaymentBackend: Send + Sync + std::fmt::Debug {
    /// The backend's name (the ledger's `source`).
    fn name(&self) -> &'static str;

    /// A checkout session for `amount_picos` of credit on `key_id`.
    async fn checkout(&self, key_id: &str, amount_picos: i64) -> Result<Checkout, PaymentError>;

    /// Verifies a webhook delivery (`signature`: the backend's signature header) and reads it.
    fn verify_webhook(
        &self,
        signature: &str,
        payload: &[u8],
        now_s: i64,
    ) -> Result<WebhookEvent, String>;
}

/// The backend `TOKENROUTER_PAYMENTS` names, configured from its own environment variables.
pub fn from_env() -> Result<Option<Arc<dyn PaymentBackend>>, String> {
    from_vars(|name| std::env::var(name).ok())
}

/// [`from_env`] with the variables looked up through `var` (tests).
pub fn from_vars(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Arc<dyn PaymentBackend>>, String> {
    match var("TOKENROUTER_PAYMENTS").as_deref().map(str::trim) {
        None | Some("") | Some("none") => Ok(None),
        Some("stripe") => Ok(Some(Arc::new(stripe::Stripe::from_vars(var)?))),
        Some(other) => Err(format!(
            "TOKENROUTER_PAYMENTS={other:?} is not a payment backend (none, stripe)"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_name() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(from_vars(vars(&[])).unwrap().is_none());
        assert!(from_vars(vars(&[("TOKENROUTER_PAYMENTS", "none")]))
            .unwrap()
            .is_none());
        let e = from_vars(vars(&[("TOKENROUTER_PAYMENTS", "paypal")])).unwrap_err();
        assert!(e.contains("paypal"), "{e}");
        let e = from_vars(vars(&[("TOKENROUTER_PAYMENTS", "stripe")])).unwrap_err();
        assert!(e.contains("STRIPE_SECRET_KEY"), "{e}");
        let stripe = from_vars(vars(&[
            ("TOKENROUTER_PAYMENTS", "stripe"),
            ("STRIPE_SECRET_KEY", "sk_test_123"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_abc"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(stripe.name(), "stripe");
        let debug = format!("{stripe:?}");
        assert!(
            !debug.contains("sk_test_123") && !debug.contains("whsec_abc"),
            "{debug}"
        );
    }
}
