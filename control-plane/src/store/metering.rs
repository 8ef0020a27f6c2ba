//! Storage of money and of what limits count: balances (columns of keys and workspaces), the
//! credit ledger, top-up checkout sessions, and the token usage a rolling window is rebuilt
//! from after a restart. Charging happens with the usage it charges
//! ([`super::Store::insert_usage`]).

use async_trait::async_trait;

use super::StoreError;

/// Who a balance belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Key(String),
    Workspace(String),
}

impl Owner {
    pub fn kind(&self) -> &'static str {
        match self {
            Owner::Key(_) => "key",
            Owner::Workspace(_) => "workspace",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Owner::Key(id) | Owner::Workspace(id) => id,
        }
    }
}

/// Credit to add.
#[derive(Clone, Debug)]
pub struct Grant {
    pub owner: Owner,
    /// > 0.
    pub amount_picos: i64,
    /// "admin", "initial", or the payment backend's name.
    pub source: String,
    /// The payment backend's event id: a second grant with the same id credits nothing.
    pub external_id: Option<String>,
    pub note: String,
    pub at_ms: i64,
}

/// What a grant did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    /// The owner's balance after the grant.
    pub balance_picos: i64,
    /// `false`: the external id was credited before, nothing changed.
    pub credited: bool,
    /// The owner had no balance before: its requests are metered from now on, which the edges
    /// must learn (the configuration version committed with the grant).
    pub new_version: Option<u64>,
}

/// A checkout session handed out for a top-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopupSession {
    pub session_id: String,
    pub key_id: String,
    pub amount_picos: i64,
    pub checkout_url: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Tokens a key's successful requests used in one minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinuteTokens {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub input: u64,
    pub output: u64,
}

#[async_trait]
pub trait MeteringStore: Send + Sync {
    /// Adds credit (and a ledger row) in one transaction; `NotFound` when the owner does not
    /// exist. An amount that would overflow the balance is `Rejected`.
    async fn grant(&self, grant: &Grant) -> Result<Granted, StoreError>;

    /// The owner's balance; `Ok(None)` = not metered; `NotFound` when the owner does not exist.
    async fn balance(&self, owner: &Owner) -> Result<Option<i64>, StoreError>;

    /// Balances of every metered key, by id.
    async fn key_balances(&self) -> Result<std::collections::HashMap<String, i64>, StoreError>;

    /// Sum of the balances of every active metered key.
    async fn total_key_balance(&self) -> Result<i64, StoreError>;

    async fn insert_topup_session(&self, session: &TopupSession) -> Result<(), StoreError>;

    async fn topup_session(&self, session_id: &str) -> Result<Option<TopupSession>, StoreError>;

    /// Tokens of the key's requests (replays excluded) received since `since_ms`, by the
    /// minute they started in.
    async fn token_minutes(
        &self,
        key_id: &str,
        since_ms: i64,
    ) -> Result<Vec<MinuteTokens>, StoreError>;
}
