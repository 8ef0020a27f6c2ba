//! `tokenrouter usage --days N [--by key|model|provider|day] [--key ID]` (seed 002).

use clap::{Args, ValueEnum};
use serde::Serialize;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, Output};
use super::{client, CliError, Globals};

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The last N UTC calendar days, today included (1-365).
    #[arg(
        long,
        default_value_t = crate::service::DEFAULT_USAGE_DAYS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::service::MAX_USAGE_DAYS))
    )]
    days: u32,
    /// Break the totals down.
    #[arg(long = "by", value_enum)]
    by: Option<By>,
    /// Only this key's requests.
    #[arg(long = "key")]
    key: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum By {
    Key,
    Model,
    Provider,
    Day,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            By::Key => "key",
            By::Model => "model",
            By::Provider => "provider",
            By::Day => "day",
        }
    }
}

/// Without `--by`, exactly seed 002's object; with it, the REST API's `/usage?group_by=`.
#[derive(Debug, Serialize)]
struct UsageJson {
    range_days: u32,
    /// Successful (2xx) requests.
    total_requests: u64,
    total_tokens_in: u64,
    total_tokens_out: u64,
    total_cost_usd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since_day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    breakdown: Option<Vec<GroupJson>>,
}

/// One group: its own field(s), then its totals.
#[derive(Debug, Serialize)]
struct GroupJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    requests: u64,
    failed_requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    cost_usd: String,
}

impl UsageJson {
    fn new(r: api::GetUsageResponse, by: Option<By>) -> UsageJson {
        let grouped = by.is_some();
        let group = |g: api::UsageGroup| GroupJson {
            key_id: matches!(by, Some(By::Key)).then(|| g.key_id.clone()),
            key_name: matches!(by, Some(By::Key)).then(|| g.key_name.clone()),
            model: matches!(by, Some(By::Model)).then(|| g.model.clone()),
            provider: matches!(by, Some(By::Provider)).then(|| g.provider.clone()),
            day: matches!(by, Some(By::Day)).then(|| g.day.clone()),
            requests: g.requests,
            failed_requests: g.failed_requests,
            input_tokens: g.input_tokens,
            output_tokens: g.output_tokens,
            total_tokens: g.total_tokens,
            cost_usd: g.cost_usd,
        };
        UsageJson {
            range_days: r.range_days,
            total_requests: r.total_requests,
            total_tokens_in: r.total_tokens_in,
            total_tokens_out: r.total_tokens_out,
            total_cost_usd: r.total_cost_usd,
            requests: grouped.then_some(r.requests),
            failed_requests: grouped.then_some(r.failed_requests),
            since_day: grouped.then_some(r.since_day.clone()),
            group_by: by.map(|b| b.as_str().to_string()),
            breakdown: grouped.then(|| r.breakdown.into_iter().map(group).collect()),
        }
    }

    fn human(&self, since_day: &str) -> String {
        let mut text = format!(
            "last {} days (since {since_day} UTC): {} successful requests, {} tokens in, {} out, \
             ${}\n",
            self.range_days,
            self.total_requests,
            self.total_tokens_in,
            self.total_tokens_out,
            self.total_cost_usd
        );
        let Some(groups) = &self.breakdown else {
            return text;
        };
        let dash = |s: &Option<String>| match s.as_deref() {
            None | Some("") => "-".to_string(),
            Some(s) => s.to_string(),
        };
        let (mut headers, named): (Vec<&str>, Vec<Vec<String>>) = match self.group_by.as_deref() {
            Some("key") => (
                vec!["KEY", "NAME"],
                groups
                    .iter()
                    .map(|g| vec![dash(&g.key_id), dash(&g.key_name)])
                    .collect(),
            ),
            Some("model") => (
                vec!["MODEL"],
                groups.iter().map(|g| vec![dash(&g.model)]).collect(),
            ),
            Some("provider") => (
                vec!["PROVIDER"],
                groups.iter().map(|g| vec![dash(&g.provider)]).collect(),
            ),
            _ => (
                vec!["DAY"],
                groups.iter().map(|g| vec![dash(&g.day)]).collect(),
            ),
        };
        headers.extend(["REQUESTS", "FAILED", "IN", "OUT", "TOKENS", "COST"]);
        let rows: Vec<Vec<String>> = groups
            .iter()
            .zip(named)
            .map(|(g, mut row)| {
                row.extend([
                    g.requests.to_string(),
                    g.failed_requests.to_string(),
                    g.input_tokens.to_string(),
                    g.output_tokens.to_string(),
                    g.total_tokens.to_string(),
                    format!("${}", g.cost_usd),
                ]);
                row
            })
            .collect();
        text.push_str(&table(&headers, &rows));
        text
    }
}

pub async fn run(args: UsageArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    let mut admin = client::connect(g).await?;
    let response = admin
        .get_usage(api::GetUsageRequest {
            days: args.days,
            group_by: args.by.map(|b| b.as_str().to_string()).unwrap_or_default(),
            key_id: args.key.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let since_day = response.since_day.clone();
    let usage = UsageJson::new(response, args.by);
    out.print(&usage, || usage.human(&since_day))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn response() -> api::GetUsageResponse {
        api::GetUsageResponse {
            range_days: 7,
            total_requests: 2,
            total_tokens_in: 30,
            total_tokens_out: 4,
            total_cost_usd: "0.18".into(),
            requests: 3,
            failed_requests: 1,
            group_by: "model".into(),
            since_day: "2025-01-01".into(),
            breakdown: vec![api::UsageGroup {
                model: "gpt-4o".into(),
                requests: 3,
                failed_requests: 1,
                input_tokens: 30,
                output_tokens: 4,
                total_tokens: 34,
                cost_usd: "0.18".into(),
                ..api::UsageGroup::default()
            }],
        }
    }

    #[test]
    fn without_a_breakdown_the_json_is_the_seeds() {
        let json = serde_json::to_value(UsageJson::new(response(), None)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"range_days": 7, "total_requests": 2, "total_tokens_in": 30,
                               "total_tokens_out": 4, "total_cost_usd": "0.18"})
        );
    }

    #[test]
    fn a_breakdown_has_only_the_groups_field() {
        let usage = UsageJson::new(response(), Some(By::Model));
        let json = serde_json::to_value(&usage).unwrap();
        assert_eq!(json["group_by"], "model");
        assert_eq!(json["failed_requests"], 1);
        assert_eq!(
            json["breakdown"][0],
            serde_json::json!({"model": "gpt-4o", "requests": 3, "failed_requests": 1,
                               "input_tokens": 30, "output_tokens": 4, "total_tokens": 34,
                               "cost_usd": "0.18"})
        );
        let text = usage.human("2025-01-01");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("since 2025-01-01"), "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["MODEL", "REQUESTS", "FAILED", "IN", "OUT", "TOKENS", "COST"]
        );
        assert!(lines[2].starts_with("gpt-4o"), "{text}");
    }
}
