//! What every backend does to rows besides SQL: the JSON columns (request log lists and
//! attempts, routing configuration backends and rules), integer conversions, the `LIKE` pattern
//! of the metadata search, the exact sums of usage summaries, and what the pre-commit check of a
//! configuration write is shown. Each backend keeps its own SQL and row decoding; sharing these
//! keeps the stored forms identical, so the backends read and write the same values.

use serde::{Deserialize, Serialize};
use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::Attempt;

use super::idempotency::{ClaimState, Recorded};
use super::{Changed, Limits, Proposed, RoutingConfigRow, StoreError, UsageTotals};

/// A count or amount as stored: SQL integers are signed, so a `u64` beyond `i64::MAX` is
/// stored as `i64::MAX` (saturating, never wrapping).
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored count read back; a negative value (never written) reads as 0.
pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A list of strings as a JSON array (request log columns).
pub(crate) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn parse_json_list(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

/// One attempt in `request_logs.attempts_json`.
#[derive(Serialize, Deserialize)]
struct AttemptJson {
    provider: String,
    model: String,
    /// 0 = no response.
    status: u32,
    latency_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    error: String,
}

/// A record's attempts as a JSON array of objects (request log column `attempts_json`).
pub(crate) fn attempts_json(attempts: &[Attempt]) -> String {
    let rows: Vec<AttemptJson> = attempts
        .iter()
        .map(|a| AttemptJson {
            provider: a.provider.clone(),
            model: a.model.clone(),
            status: a.status,
            latency_ms: a.latency_ms,
            error: a.error.clone(),
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn parse_attempts(text: String) -> Vec<Attempt> {
    serde_json::from_str::<Vec<AttemptJson>>(&text)
        .unwrap_or_default()
        .into_iter()
        .map(|a| Attempt {
            provider: a.provider,
            model: a.model,
            status: a.status,
            latency_ms: a.latency_ms,
            error: a.error,
        })
        .collect()
}

/// A backend as stored in `routing_configs.backends_json` (and inside `rules_json`).
#[derive(Serialize, Deserialize)]
struct BackendJson {
    model: String,
    priority: i32,
    weight: u32,
}

/// A rule of the `rules` strategy as stored in `routing_configs.rules_json`.
#[derive(Serialize, Deserialize)]
struct ConfigRuleJson {
    name: String,
    match_json: String,
    backends: Vec<BackendJson>,
}

fn backends_json(backends: &[pb::Backend]) -> Vec<BackendJson> {
    backends
        .iter()
        .map(|b| BackendJson {
            model: b.model.clone(),
            priority: b.priority,
            weight: b.weight,
        })
        .collect()
}

fn backends_proto(backends: Vec<BackendJson>) -> Vec<pb::Backend> {
    backends
        .into_iter()
        .map(|b| pb::Backend {
            model: b.model,
            priority: b.priority,
            weight: b.weight,
        })
        .collect()
}

fn encode_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("encoding JSON: {e}")))
}

/// A routing configuration's `backends_json` and `rules_json` columns.
pub(crate) fn routing_config_json(
    config: &RoutingConfigRow,
) -> Result<(String, String), StoreError> {
    let rules: Vec<ConfigRuleJson> = config
        .rules
        .iter()
        .map(|r| ConfigRuleJson {
            name: r.name.clone(),
            match_json: r.match_json.clone(),
            backends: backends_json(&r.backends),
        })
        .collect();
    Ok((
        encode_json(&backends_json(&config.backends))?,
        encode_json(&rules)?,
    ))
}

/// The columns of a `routing_configs` row, as read.
pub(crate) struct RoutingConfigColumns {
    pub key_id: String,
    pub active: bool,
    pub strategy: String,
    pub backends_json: String,
    pub rules_json: String,
    pub updated_at_ms: i64,
}

/// A routing configuration from its row; JSON that does not parse is `Corrupt`.
pub(crate) fn routing_config_from_columns(
    c: RoutingConfigColumns,
) -> Result<RoutingConfigRow, StoreError> {
    let corrupt = |column: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!(
            "routing configuration of {}: {column}: {e}",
            c.key_id
        ))
    };
    let backends: Vec<BackendJson> =
        serde_json::from_str(&c.backends_json).map_err(|e| corrupt("backends_json", e))?;
    let rules: Vec<ConfigRuleJson> =
        serde_json::from_str(&c.rules_json).map_err(|e| corrupt("rules_json", e))?;
    Ok(RoutingConfigRow {
        active: c.active,
        strategy: c.strategy,
        backends: backends_proto(backends),
        rules: rules
            .into_iter()
            .map(|r| pb::ConfigRule {
                name: r.name,
                match_json: r.match_json,
                backends: backends_proto(r.backends),
            })
            .collect(),
        updated_at_ms: c.updated_at_ms,
        key_id: c.key_id,
    })
}

/// A `LIKE … ESCAPE '\'` pattern matching `text` anywhere.
pub(crate) fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// How many columns a backend's usage sums yield, read back by [`usage_totals`]: every request,
/// the failed ones, then tokens (input, output) and cost of successful non-replayed ones, each
/// summed as a high part and a remainder (x = hi * 1e6 + lo) so that no SQL sum overflows even
/// when one row holds `i64::MAX`.
pub(crate) const USAGE_SUM_COLUMNS: usize = 8;

/// Totals from the [`USAGE_SUM_COLUMNS`] columns, put together exactly (tokens saturate).
pub(crate) fn usage_totals(columns: [i64; USAGE_SUM_COLUMNS]) -> UsageTotals {
    let split = |hi: usize| i128::from(columns[hi]) * 1_000_000 + i128::from(columns[hi + 1]);
    let tokens = |n: i128| u64::try_from(n.max(0)).unwrap_or(u64::MAX);
    UsageTotals {
        requests: to_u64(columns[0]),
        failed_requests: to_u64(columns[1]),
        input_tokens: tokens(split(2)),
        output_tokens: tokens(split(4)),
        cost_picos: split(6),
    }
}

/// Two totals added (tokens saturate).
pub fn add_totals(a: UsageTotals, b: UsageTotals) -> UsageTotals {
    UsageTotals {
        requests: a.requests.saturating_add(b.requests),
        failed_requests: a.failed_requests.saturating_add(b.failed_requests),
        input_tokens: a.input_tokens.saturating_add(b.input_tokens),
        output_tokens: a.output_tokens.saturating_add(b.output_tokens),
        cost_picos: a.cost_picos.saturating_add(b.cost_picos),
    }
}

/// The four limit columns in table order (`rps_limit`, `hour_total_tokens`, `hour_input_tokens`,
/// `hour_output_tokens`; `None` = inherit).
pub(crate) fn limit_columns(limits: &Limits) -> [Option<i64>; 4] {
    let tokens = |v: Option<u64>| v.map(to_i64);
    [
        limits.rps.map(i64::from),
        tokens(limits.hour_total_tokens),
        tokens(limits.hour_input_tokens),
        tokens(limits.hour_output_tokens),
    ]
}

/// Limits from the columns of [`limit_columns`].
pub(crate) fn limits_from_columns(columns: [Option<i64>; 4]) -> Limits {
    let tokens = |v: Option<i64>| v.map(to_u64);
    Limits {
        rps: columns[0].map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
        hour_total_tokens: tokens(columns[1]),
        hour_input_tokens: tokens(columns[2]),
        hour_output_tokens: tokens(columns[3]),
    }
}

/// The `models` columns beyond the primary key `(provider_kind, id)`, in the order each
/// backend binds them.
pub(crate) const MODEL_FIELDS: [&str; 17] = [
    "upstream_model",
    "input_price_micros_per_mtok",
    "output_price_micros_per_mtok",
    "cached_input_price_micros_per_mtok",
    "context_window",
    "enabled",
    "tools",
    "vision",
    "json_mode",
    "streaming",
    "embeddings",
    "quality",
    "tier",
    "max_output_tokens",
    "price_source",
    "price_as_of",
    "display_name",
];

/// A stored `u32` column (context window, quality, output limit) read back, saturating.
pub(crate) fn to_u32_saturating(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The table whose row count the check of `changed` is shown, if any (rule sets have a size
/// limit).
pub(crate) fn counted_table(changed: &Changed) -> Option<&'static str> {
    match changed {
        Changed::FirewallRule(_) => Some("firewall_rules"),
        Changed::RoutingRule(_) => Some("routing_rules"),
        _ => None,
    }
}

/// What the check of a write is shown; `count` is the row count of [`counted_table`] after the
/// write (0 where there is none).
pub(crate) fn proposed(changed: &Changed, count: i64) -> Proposed<'_> {
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    match changed {
        Changed::Key(key) => Proposed::Key(key),
        Changed::Workspace(workspace) => Proposed::Workspace(workspace),
        Changed::Provider(provider) => Proposed::Provider(provider),
        Changed::ModelsSeeded(models) => Proposed::Models(models),
        Changed::Model(row) => Proposed::Models(std::slice::from_ref(&row.model)),
        Changed::FirewallRule(rule) => Proposed::FirewallRule { rule, count },
        Changed::RoutingRule(rule) => Proposed::RoutingRule { rule, count },
        Changed::RoutingConfig(config) => Proposed::RoutingConfig(config),
        Changed::ProviderRemoved(_)
        | Changed::FirewallRuleRemoved(_)
        | Changed::RoutingRuleRemoved(_)
        | Changed::RoutingConfigRemoved(_) => Proposed::Removal,
    }
}

/// A failed insert or update: a unique violation is `AlreadyExists` (of `what`), anything else
/// a database error.
pub(crate) fn unique_violation(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists(what()),
        _ => StoreError::Database(e),
    }
}

/// The columns of an `idempotency_keys` row, as read.
pub(crate) struct IdempotencyColumns {
    pub request_id: String,
    pub request_sha256: Vec<u8>,
    pub state: String,
    pub status: Option<i64>,
    pub content_type: Option<String>,
    pub body: Option<Vec<u8>>,
}

/// What a claim finds in a live entry held by another request.
pub(crate) fn claim_state_held(c: IdempotencyColumns) -> ClaimState {
    if c.state == "done" {
        ClaimState::Done {
            request_id: c.request_id,
            request_sha256: c.request_sha256,
            recorded: Recorded {
                status: u32::try_from(c.status.unwrap_or(200)).unwrap_or(200),
                content_type: c.content_type.unwrap_or_default(),
                body: c.body.unwrap_or_default(),
            },
        }
    } else {
        ClaimState::Running {
            request_id: c.request_id,
            request_sha256: c.request_sha256,
        }
    }
}
