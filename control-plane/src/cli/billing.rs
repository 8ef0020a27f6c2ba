//! `tokenrouter balance`, `tokenrouter topup` (seed 002) and `tokenrouter credit grant`.
//!
//! With a gateway key (`--api-key` / `TOKENROUTER_API_KEY`), `balance` and `topup` act for that
//! key over the REST API; otherwise they use the Admin API with the admin token. `topup` only
//! prints a checkout URL: it never opens or pays it.

use clap::{ArgGroup, Args, Subcommand};
use serde::{Deserialize, Serialize};
use tokenrouter_proto::admin::v1 as api;

use super::output::{time, Output};
use super::rest::Rest;
use super::{client, CliError, ErrorKind, Globals};

#[derive(Debug, Args)]
pub struct BalanceArgs {
    /// A key's balance (`key_…`).
    #[arg(long, value_name = "KEY_ID", conflicts_with = "workspace")]
    key: Option<String>,
    /// A workspace's balance.
    #[arg(long, value_name = "WORKSPACE")]
    workspace: Option<String>,
}

#[derive(Debug, Args)]
pub struct TopupArgs {
    /// Credit to buy, exact decimal USD in whole cents (e.g. 5 or 12.50).
    #[arg(long, value_name = "USD")]
    amount: String,
    /// The key to credit (`key_…`); required with the admin token, a gateway key tops up
    /// itself.
    #[arg(long, value_name = "KEY_ID")]
    key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CreditCommand {
    /// Add credit to a key's or a workspace's balance (recorded in the credit ledger). An
    /// owner without a balance gets one: its requests are metered from then on.
    Grant(GrantArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("owner").required(true).args(["key", "workspace"])))]
pub struct GrantArgs {
    /// The key to credit (`key_…`).
    #[arg(long, value_name = "KEY_ID")]
    key: Option<String>,
    /// The workspace to credit.
    #[arg(long, value_name = "WORKSPACE")]
    workspace: Option<String>,
    /// Exact decimal USD (at most 6 decimals), e.g. 5 or 0.25.
    #[arg(long, value_name = "USD")]
    amount: String,
    /// Why (kept in the ledger).
    #[arg(long, default_value = "")]
    note: String,
}

/// Seed 002's `{"balance_usd", "currency"}`, then who owns it and what is free to spend (the
/// REST API's `/balance` object).
#[derive(Debug, Serialize, Deserialize)]
struct BalanceJson {
    balance_usd: String,
    currency: String,
    /// "key", "workspace" or "total".
    owner: String,
    /// `null` for the total.
    id: Option<String>,
    metered: bool,
    reserved_usd: String,
    available_usd: String,
}

impl From<api::BalanceInfo> for BalanceJson {
    fn from(b: api::BalanceInfo) -> BalanceJson {
        BalanceJson {
            balance_usd: b.balance_usd,
            currency: b.currency,
            owner: b.owner,
            id: Some(b.id).filter(|id| !id.is_empty()),
            metered: b.metered,
            reserved_usd: b.reserved_usd,
            available_usd: b.available_usd,
        }
    }
}

impl BalanceJson {
    fn human(&self) -> String {
        let id = self.id.as_deref().unwrap_or("");
        if self.owner == "total" {
            return format!(
                "total balance of the active keys: ${} {}",
                self.balance_usd, self.currency
            );
        }
        if !self.metered {
            return format!(
                "{} {id} has no balance: its requests are not metered (never refused for credit)",
                self.owner
            );
        }
        if self.reserved_usd == "0" {
            format!(
                "{} {id}: ${} {}",
                self.owner, self.balance_usd, self.currency
            )
        } else {
            format!(
                "{} {id}: ${} {} (${} held by requests in flight, ${} available)",
                self.owner, self.balance_usd, self.currency, self.reserved_usd, self.available_usd
            )
        }
    }
}

/// Seed 002's top-up object, plus the key it credits.
#[derive(Debug, Serialize, Deserialize)]
struct TopupJson {
    checkout_url: String,
    session_id: String,
    amount_usd: String,
    /// Unix seconds.
    expires_at: i64,
    key_id: String,
}

impl TopupJson {
    fn human(&self) -> String {
        format!(
            "Checkout for ${} of credit on key {} (nothing has been charged):\n\n  {}\n\n\
             A person must open this URL in a browser and pay there: tokenrouter never opens or \
             pays it. The credit is added when the payment provider confirms the payment; check \
             it with `tokenrouter balance`. The link expires {} UTC (session {}).",
            self.amount_usd,
            self.key_id,
            self.checkout_url,
            time(self.expires_at.saturating_mul(1000)),
            self.session_id
        )
    }
}

/// The gateway key to act as, if any.
fn gateway(g: &Globals) -> Result<Option<Rest>, CliError> {
    g.api_key
        .as_deref()
        .map(|key| Rest::new(&g.rest_url, key))
        .transpose()
}

pub async fn balance(args: BalanceArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    let balance: BalanceJson = match gateway(g)? {
        Some(rest) => {
            rest.get(
                "/balance",
                &[
                    ("key_id", args.key.as_deref().unwrap_or("")),
                    ("workspace_id", args.workspace.as_deref().unwrap_or("")),
                ],
            )
            .await?
        }
        None => client::connect(g)
            .await?
            .get_balance(api::GetBalanceRequest {
                key_id: args.key.unwrap_or_default(),
                workspace_id: args.workspace.unwrap_or_default(),
            })
            .await?
            .into_inner()
            .into(),
    };
    out.print(&balance, || balance.human())
}

pub async fn topup(args: TopupArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    let topup: TopupJson = match gateway(g)? {
        Some(rest) => {
            let mut body = serde_json::json!({"amount_usd": args.amount.trim()});
            if let Some(key) = &args.key {
                body["key_id"] = key.clone().into();
            }
            rest.post("/topup", &body).await?
        }
        None => {
            let key_id = args.key.ok_or_else(|| {
                CliError::new(
                    ErrorKind::Usage,
                    "--key KEY_ID is required with the admin token (or set TOKENROUTER_API_KEY \
                     to top up that key)",
                )
            })?;
            let t = client::connect(g)
                .await?
                .create_topup(api::CreateTopupRequest {
                    key_id: key_id.clone(),
                    amount_usd: args.amount.trim().to_string(),
                })
                .await?
                .into_inner();
            TopupJson {
                checkout_url: t.checkout_url,
                session_id: t.session_id,
                amount_usd: t.amount_usd,
                expires_at: t.expires_at,
                key_id,
            }
        }
    };
    out.print(&topup, || topup.human())
}

pub async fn credit(cmd: CreditCommand, g: &Globals, out: &Output) -> Result<(), CliError> {
    let CreditCommand::Grant(args) = cmd;
    let amount = args.amount.trim().to_string();
    let balance: BalanceJson = client::connect(g)
        .await?
        .grant_credit(api::GrantCreditRequest {
            key_id: args.key.unwrap_or_default(),
            workspace_id: args.workspace.unwrap_or_default(),
            amount_usd: amount.clone(),
            note: args.note,
        })
        .await?
        .into_inner()
        .into();
    out.print(&balance, || {
        format!(
            "granted ${amount} to {} {}: balance now ${} {}",
            balance.owner,
            balance.id.as_deref().unwrap_or(""),
            balance.balance_usd,
            balance.currency
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_balance_json_is_the_seeds_plus_the_owner() {
        let b = BalanceJson::from(api::BalanceInfo {
            owner: "key".into(),
            id: "key_a".into(),
            metered: true,
            balance_usd: "5".into(),
            reserved_usd: "0".into(),
            available_usd: "5".into(),
            currency: "USD".into(),
        });
        let text = serde_json::to_string(&b).unwrap();
        assert!(
            text.starts_with(r#"{"balance_usd":"5","currency":"USD","#),
            "{text}"
        );
        assert_eq!(b.human(), "key key_a: $5 USD");
        let total = BalanceJson::from(api::BalanceInfo {
            owner: "total".into(),
            metered: true,
            balance_usd: "12.5".into(),
            reserved_usd: "0".into(),
            available_usd: "12.5".into(),
            currency: "USD".into(),
            ..api::BalanceInfo::default()
        });
        assert_eq!(
            serde_json::to_value(&total).unwrap()["id"],
            serde_json::Value::Null
        );
        assert!(total.human().contains("$12.5"));
    }

    #[test]
    fn the_topup_text_says_a_person_must_pay() {
        let t = TopupJson {
            checkout_url: "https://checkout.stripe.com/c/pay/cs_1".into(),
            session_id: "cs_1".into(),
            amount_usd: "5".into(),
            expires_at: 1_700_000_000,
            key_id: "key_a".into(),
        };
        let text = t.human();
        assert!(
            text.contains("\n  https://checkout.stripe.com/c/pay/cs_1\n"),
            "{text}"
        );
        assert!(text.contains("A person must open this URL"), "{text}");
        assert!(text.contains("never opens or pays"), "{text}");
        assert!(text.contains("2023-11-14 22:13:20"), "{text}");
    }
}
