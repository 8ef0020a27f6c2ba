//! Limits and balances, enforced for every edge by this control plane (one node: the counters
//! live here, in memory; balances in the store).
//!
//! An edge asks before sending a request of a key that has a balance or a limit
//! ([`Limiter::admit`], reached over the Rate Limit Service protocol:
//! `api::grpc::ratelimit`). The answer checks, in this order, the key's burst request rate,
//! its rolling one-hour token budgets (what its requests reported in the last hour, plus this
//! request's prompt), and the balances of the key and of its workspace, each of which must
//! cover the most the request can cost (its reservation). Nothing is taken unless everything
//! passes; then one request is taken from the rate and the reservation is held. When the
//! request's usage record arrives ([`Limiter::settle`], after the store charged its real cost
//! to the balances in the same transaction that stored it) the reservation is released and its
//! tokens enter the window. Reservations of requests whose record never comes lapse after
//! [`RESERVATION_LAPSES_MS`].
//!
//! Where the counters live ([`Counters`]): in this process, where one lock serialises
//! admissions, which is what makes them race-free (50 concurrent requests against a balance
//! that covers 5 admit 5); or, with `TOKENROUTER_REDIS_URL`, in Redis ([`shared`]), where one
//! Lua script per admission does the same for every replica sharing it, so limits and balances
//! hold fleet-wide.

pub mod shared;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;

use tokenrouter_engine::admission::Ask;
use tokenrouter_engine::money::format_picos_usd;
use tokenrouter_proto::sync::v1::UsageRecord;
use tokio::sync::{watch, Mutex};

use crate::store::metering::Owner;
use crate::store::{ConfigState, KeyRow, KeyStatus, Limits, Store, StoreError, WorkspaceRow};
use window::{HourWindow, TokenBucket, Used, WINDOW_MINUTES};

/// Requests per second a key may burst when neither it nor its workspace says otherwise
/// (`TOKENROUTER_DEFAULT_RPS`; 0 = no default limit).
pub const DEFAULT_RPS: u32 = 10;

/// How long a reservation holds credit when its request's usage record never arrives (the edge
/// died): longer than any request the gateway lets run.
pub const RESERVATION_LAPSES_MS: i64 = 30 * 60 * 1000;

/// Limits in force for one key after inheritance (0 = off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    pub rps: u32,
    pub hour_total_tokens: u64,
    pub hour_input_tokens: u64,
    pub hour_output_tokens: u64,
}

impl Effective {
    /// The key's own limits, else its workspace's, else the server's defaults.
    pub fn resolve(key: Limits, workspace: Limits, default_rps: u32) -> Effective {
        let l = key.or(workspace);
        Effective {
            rps: l.rps.unwrap_or(default_rps),
            hour_total_tokens: l.hour_total_tokens.unwrap_or(0),
            hour_input_tokens: l.hour_input_tokens.unwrap_or(0),
            hour_output_tokens: l.hour_output_tokens.unwrap_or(0),
        }
    }

    fn any_budget(&self) -> bool {
        self.hour_total_tokens > 0 || self.hour_input_tokens > 0 || self.hour_output_tokens > 0
    }

    pub fn any(&self) -> bool {
        self.rps > 0 || self.any_budget()
    }
}

/// What the limiter needs to know of a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub workspace_id: String,
    pub limits: Effective,
    pub key_metered: bool,
    pub workspace_metered: bool,
    pub revoked: bool,
}

impl Policy {
    /// Whether the edge must ask before sending this key's requests.
    pub fn admission(&self) -> bool {
        !self.revoked && (self.limits.any() || self.key_metered || self.workspace_metered)
    }
}

/// Policies of every key by id, for one configuration version: those of the last version built
/// whole, shared between versions, under the ones changed since (as the edges hold keys: a
/// base snapshot and a key delta). A version that changes a few keys of 100 000 copies only
/// the changed ones.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    base: Arc<HashMap<String, Policy>>,
    changed: HashMap<String, Policy>,
}

impl Policies {
    pub fn get(&self, key_id: &str) -> Option<&Policy> {
        self.changed.get(key_id).or_else(|| self.base.get(key_id))
    }

    /// Replaces (or adds) one key's policy.
    pub fn set(&mut self, key_id: &str, policy: Policy) {
        self.changed.insert(key_id.to_string(), policy);
    }
}

impl FromIterator<(String, Policy)> for Policies {
    fn from_iter<I: IntoIterator<Item = (String, Policy)>>(iter: I) -> Policies {
        Policies {
            base: Arc::new(iter.into_iter().collect()),
            changed: HashMap::new(),
        }
    }
}

/// The workspaces of `state` by id, which a key's policy reads.
pub fn workspaces(state: &ConfigState) -> HashMap<&str, &WorkspaceRow> {
    state
        .workspaces
        .iter()
        .map(|w| (w.id.as_str(), w))
        .collect()
}

/// One key's policy.
pub fn policy(key: &KeyRow, workspaces: &HashMap<&str, &WorkspaceRow>, default_rps: u32) -> Policy {
    let workspace = workspaces.get(key.workspace_id.as_str());
    Policy {
        workspace_id: key.workspace_id.clone(),
        limits: Effective::resolve(
            key.limits,
            workspace.map(|w| w.limits).unwrap_or_default(),
            default_rps,
        ),
        key_metered: key.metered,
        workspace_metered: workspace.is_some_and(|w| w.metered),
        revoked: key.status == KeyStatus::Revoked,
    }
}

/// Every key's policy in `state`.
pub fn policies(state: &ConfigState, default_rps: u32) -> Policies {
    let workspaces = workspaces(state);
    state
        .keys
        .iter()
        .map(|k| (k.id.clone(), policy(k, &workspaces, default_rps)))
        .collect()
}

/// One hourly budget: its name, what it counts (for the message), the budget, this request's
/// share, and how to count the window's usage.
type BudgetCheck = (&'static str, &'static str, u64, u64, fn(Used) -> u64);

/// Why a request was refused; its message names the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 429 with `Retry-After` (seconds; `None` when waiting cannot help).
    Rate {
        limit: &'static str,
        message: String,
        retry_after_s: Option<u32>,
    },
    /// 402 `insufficient_quota`.
    Quota { message: String },
}

#[derive(Debug)]
struct Reservation {
    owners: Vec<Owner>,
    picos: i64,
    expires_at_ms: i64,
}

#[derive(Debug, Default)]
struct KeyState {
    bucket: Option<TokenBucket>,
    /// Loaded from the store on the key's first budget check.
    window: Option<HourWindow>,
}

/// The counters of [`Counters::Local`].
#[derive(Debug, Default)]
pub struct State {
    keys: HashMap<String, KeyState>,
    /// By request id.
    reservations: HashMap<String, Reservation>,
    /// Sum of the live reservations of each owner.
    reserved: HashMap<Owner, i64>,
    next_sweep_ms: i64,
}

impl State {
    fn release(&mut self, request_id: &str) {
        if let Some(r) = self.reservations.remove(request_id) {
            for owner in r.owners {
                if let Some(sum) = self.reserved.get_mut(&owner) {
                    *sum -= r.picos;
                    if *sum <= 0 {
                        self.reserved.remove(&owner);
                    }
                }
            }
        }
    }

    fn sweep(&mut self, now_ms: i64) {
        if now_ms < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now_ms + 60_000;
        let lapsed: Vec<String> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_at_ms <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed {
            tracing::warn!(request_id = %id, "reservation lapsed without a usage record");
            self.release(&id);
        }
    }
}

/// Why an admission could not be decided (the edge then treats the control plane as away).
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The shared counters (Redis) did not answer.
    #[error("shared counters: {0}")]
    Counters(String),
}

/// Where rates, windows and reservations are counted.
pub enum Counters {
    /// In this process: right for one control plane.
    Local(Mutex<State>),
    /// In Redis, shared by every replica pointed at it.
    Shared(shared::SharedCounters),
}

impl Counters {
    /// Counters in this process.
    pub fn local() -> Counters {
        Counters::Local(Mutex::new(State::default()))
    }
}

pub struct Limiter {
    store: Arc<dyn Store>,
    policies: watch::Receiver<Arc<Policies>>,
    counters: Counters,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

/// A balance and what it must cover, for the refusal message.
fn quota_message(owner: &Owner, available: i64, needed: i64) -> String {
    format!(
        "Insufficient balance: {} {} has ${} available, and this request may cost up to ${} \
         (its prompt and its output limit at the model's price; lower max_tokens or top up).",
        owner.kind(),
        owner.id(),
        format_picos_usd(i128::from(available.max(0))),
        format_picos_usd(i128::from(needed)),
    )
}

impl Limiter {
    pub fn new(
        store: Arc<dyn Store>,
        policies: watch::Receiver<Arc<Policies>>,
        counters: Counters,
    ) -> Limiter {
        Limiter {
            store,
            policies,
            counters,
        }
    }

    /// Whether the counters are shared with other replicas.
    pub fn shared(&self) -> bool {
        matches!(self.counters, Counters::Shared(_))
    }

    /// Admits the request (taking one from its key's rate and holding its reservation), or
    /// says which limit refuses it. A key this control plane does not know is admitted: the
    /// edge authenticated it against a snapshot, and there is nothing here to enforce.
    pub async fn admit(&self, ask: &Ask, now_ms: i64) -> Result<Result<(), Refusal>, LimitError> {
        let policy = match self.policies.borrow().get(&ask.key_id) {
            Some(p) => p.clone(),
            None => return Ok(Ok(())),
        };
        match &self.counters {
            Counters::Local(state) => self.admit_local(state, ask, &policy, now_ms).await,
            Counters::Shared(shared) => shared.admit(&*self.store, ask, &policy, now_ms).await,
        }
    }

    async fn admit_local(
        &self,
        state: &Mutex<State>,
        ask: &Ask,
        policy: &Policy,
        now_ms: i64,
    ) -> Result<Result<(), Refusal>, LimitError> {
        let mut state = state.lock().await;
        state.sweep(now_ms);
        if !ask.request_id.is_empty() && state.reservations.contains_key(&ask.request_id) {
            // The same request asking twice (a resent call) is admitted once.
            return Ok(Ok(()));
        }
        let limits = policy.limits;
        let key_state = state.keys.entry(ask.key_id.clone()).or_default();
        if limits.rps > 0 {
            let bucket = key_state
                .bucket
                .get_or_insert_with(|| TokenBucket::new(limits.rps, now_ms));
            if bucket.rps() != limits.rps {
                *bucket = TokenBucket::new(limits.rps, now_ms);
            }
            if let Some(wait) = bucket.wait_s(now_ms) {
                return Ok(Err(rate_refusal(&ask.key_id, limits.rps, wait)));
            }
        } else {
            key_state.bucket = None;
        }
        if limits.any_budget() {
            if key_state.window.is_none() {
                key_state.window = Some(load_window(&*self.store, &ask.key_id, now_ms).await?);
            }
            if let Some(window) = key_state.window.as_mut() {
                if let Some(refusal) = budget_refusal(ask, &limits, window, now_ms) {
                    return Ok(Err(refusal));
                }
            }
        } else {
            key_state.window = None;
        }
        let owners = owners(ask, policy);
        let needed = ask.reserve_picos.max(0);
        for owner in &owners {
            let balance = balance(&*self.store, owner).await?;
            let available = balance.saturating_sub(state.reserved.get(owner).copied().unwrap_or(0));
            if let Some(refusal) = quota_refusal(owner, available, needed) {
                return Ok(Err(refusal));
            }
        }
        if let Some(bucket) = state
            .keys
            .get_mut(&ask.key_id)
            .and_then(|k| k.bucket.as_mut())
        {
            bucket.take(now_ms);
        }
        if !owners.is_empty() && !ask.request_id.is_empty() {
            for owner in &owners {
                *state.reserved.entry(owner.clone()).or_insert(0) += needed;
            }
            state.reservations.insert(
                ask.request_id.clone(),
                Reservation {
                    owners,
                    picos: needed,
                    expires_at_ms: now_ms + RESERVATION_LAPSES_MS,
                },
            );
        }
        Ok(Ok(()))
    }

    /// Records stored for the first time: their reservations end (the store charged their cost
    /// with them) and their tokens count in their keys' windows.
    pub async fn settle<'a>(
        &self,
        records: impl IntoIterator<Item = &'a UsageRecord>,
        now_ms: i64,
    ) {
        let state = match &self.counters {
            Counters::Local(state) => state,
            Counters::Shared(shared) => {
                let records: Vec<&UsageRecord> = records.into_iter().collect();
                if let Err(e) = shared.settle(&records, now_ms).await {
                    // The records are stored and charged; what is lost is the early release of
                    // their reservations (they lapse) and their tokens in the shared windows.
                    tracing::error!(error = %e, records = records.len(), "settling in the shared counters failed");
                }
                return;
            }
        };
        let mut state = state.lock().await;
        for r in records {
            state.release(&r.request_id);
            if !counts_tokens(r) {
                continue;
            }
            if let Some(window) = state
                .keys
                .get_mut(&r.key_id)
                .and_then(|k| k.window.as_mut())
            {
                window.add(
                    r.started_at_unix_ms,
                    r.input_tokens,
                    r.output_tokens,
                    now_ms,
                );
            }
        }
    }

    /// Credit held by requests in flight for `owner`.
    pub async fn reserved(&self, owner: &Owner, now_ms: i64) -> Result<i64, LimitError> {
        match &self.counters {
            Counters::Local(state) => {
                Ok(state.lock().await.reserved.get(owner).copied().unwrap_or(0))
            }
            Counters::Shared(shared) => shared.reserved(owner, now_ms).await,
        }
    }
}

/// Whether a stored record's tokens count against its key's hourly budgets.
fn counts_tokens(r: &UsageRecord) -> bool {
    r.replay_of.is_empty() && (r.input_tokens > 0 || r.output_tokens > 0)
}

/// The balances a request of this key must fit: the key's and its workspace's, where metered.
fn owners(ask: &Ask, policy: &Policy) -> Vec<Owner> {
    let mut owners = Vec::new();
    if policy.key_metered {
        owners.push(Owner::Key(ask.key_id.clone()));
    }
    if policy.workspace_metered {
        owners.push(Owner::Workspace(policy.workspace_id.clone()));
    }
    owners
}

/// An owner's stored balance (an owner removed since the policy was built has nothing to
/// charge: unlimited).
async fn balance(store: &dyn Store, owner: &Owner) -> Result<i64, StoreError> {
    match store.metering().balance(owner).await {
        Ok(b) => Ok(b.unwrap_or(i64::MAX)),
        Err(StoreError::NotFound(_)) => Ok(i64::MAX),
        Err(e) => Err(e),
    }
}

/// The key's token usage of the last hour, from the request log.
async fn load_window(
    store: &dyn Store,
    key_id: &str,
    now_ms: i64,
) -> Result<HourWindow, StoreError> {
    let since = now_ms - (WINDOW_MINUTES + 5) * 60_000;
    let mut window = HourWindow::default();
    for m in store.metering().token_minutes(key_id, since).await? {
        window.add(m.minute * 60_000, m.input, m.output, now_ms);
    }
    Ok(window)
}

fn rate_refusal(key_id: &str, rps: u32, wait_s: u32) -> Refusal {
    Refusal::Rate {
        limit: "requests_per_second",
        message: format!("Rate limit exceeded: key {key_id} allows {rps} requests per second."),
        retry_after_s: Some(wait_s),
    }
}

/// `None` when the request's prompt fits every hourly budget of its key.
fn budget_refusal(
    ask: &Ask,
    limits: &Effective,
    window: &mut HourWindow,
    now_ms: i64,
) -> Option<Refusal> {
    let checks: [BudgetCheck; 3] = [
        (
            "hour_total_tokens",
            "total tokens",
            limits.hour_total_tokens,
            ask.input_tokens,
            |u| u.total(),
        ),
        (
            "hour_input_tokens",
            "input tokens",
            limits.hour_input_tokens,
            ask.input_tokens,
            |u| u.input,
        ),
        // The output of this request is not known yet: it must have room for one.
        (
            "hour_output_tokens",
            "output tokens",
            limits.hour_output_tokens,
            1,
            |u| u.output,
        ),
    ];
    let used = window.used(now_ms);
    for (limit, what, budget, extra, count) in checks {
        if budget == 0 || count(used).saturating_add(extra) <= budget {
            continue;
        }
        let retry_after_s = window.wait_s(now_ms, budget, extra, count);
        return Some(Refusal::Rate {
            limit,
            message: format!(
                "Rate limit exceeded: key {} has used {} of its {} {} per hour{}.",
                ask.key_id,
                count(used),
                budget,
                what,
                if retry_after_s.is_none() {
                    " (this request alone is over the budget)"
                } else {
                    ""
                }
            ),
            retry_after_s,
        });
    }
    None
}

/// `None` when `available` covers `needed`. A zero balance admits nothing, not even a request
/// that would cost nothing.
fn quota_refusal(owner: &Owner, available: i64, needed: i64) -> Option<Refusal> {
    (available <= 0 || available < needed).then(|| Refusal::Quota {
        message: quota_message(owner, available, needed),
    })
}
