//! The limits flags `keys create|update` and `workspaces create|update` share, and how limits
//! are printed.

use clap::Args;
use serde::{Deserialize, Serialize};
use tokenrouter_proto::admin::v1 as api;

/// Largest token budget (what the store keeps).
const MAX_TOKENS: u64 = i64::MAX as u64;

/// Unset flags leave the limit as it is (inherit, for a new key or workspace); 0 = off.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct LimitArgs {
    /// Burst requests per second (0 = off).
    #[arg(long, value_name = "N")]
    pub rps: Option<u32>,
    /// Tokens (input + output) per rolling hour (0 = off).
    #[arg(long = "hour-tokens", value_name = "N",
        value_parser = clap::value_parser!(u64).range(0..=MAX_TOKENS))]
    pub hour_tokens: Option<u64>,
    /// Input tokens per rolling hour (0 = off).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=MAX_TOKENS))]
    pub hour_input_tokens: Option<u64>,
    /// Output tokens per rolling hour (0 = off).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=MAX_TOKENS))]
    pub hour_output_tokens: Option<u64>,
}

impl LimitArgs {
    pub fn is_empty(&self) -> bool {
        self.rps.is_none()
            && self.hour_tokens.is_none()
            && self.hour_input_tokens.is_none()
            && self.hour_output_tokens.is_none()
    }

    /// `None` when no flag was given.
    pub fn to_proto(self) -> Option<api::Limits> {
        (!self.is_empty()).then_some(api::Limits {
            rps: self.rps,
            hour_total_tokens: self.hour_tokens,
            hour_input_tokens: self.hour_input_tokens,
            hour_output_tokens: self.hour_output_tokens,
        })
    }
}

/// Limits as printed: null = inherit, 0 = off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsJson {
    pub rps: Option<u32>,
    pub hour_total_tokens: Option<u64>,
    pub hour_input_tokens: Option<u64>,
    pub hour_output_tokens: Option<u64>,
}

impl From<Option<api::Limits>> for LimitsJson {
    fn from(l: Option<api::Limits>) -> LimitsJson {
        let l = l.unwrap_or_default();
        LimitsJson {
            rps: l.rps,
            hour_total_tokens: l.hour_total_tokens,
            hour_input_tokens: l.hour_input_tokens,
            hour_output_tokens: l.hour_output_tokens,
        }
    }
}

/// Limits in force (0 = off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveJson {
    pub rps: u32,
    pub hour_total_tokens: u64,
    pub hour_input_tokens: u64,
    pub hour_output_tokens: u64,
}

impl From<Option<api::Limits>> for EffectiveJson {
    fn from(l: Option<api::Limits>) -> EffectiveJson {
        let l = l.unwrap_or_default();
        EffectiveJson {
            rps: l.rps.unwrap_or(0),
            hour_total_tokens: l.hour_total_tokens.unwrap_or(0),
            hour_input_tokens: l.hour_input_tokens.unwrap_or(0),
            hour_output_tokens: l.hour_output_tokens.unwrap_or(0),
        }
    }
}

/// A table cell: `-` unset (inherited), `off` for 0, else the number.
pub fn cell<T: PartialEq + Default + ToString>(v: Option<T>) -> String {
    match v {
        None => "-".into(),
        Some(n) if n == T::default() => "off".into(),
        Some(n) => n.to_string(),
    }
}

/// `rps 10, 1000 tokens/h` (only the limits that are on); `none` when all are off.
pub fn describe(e: &EffectiveJson) -> String {
    let mut parts = Vec::new();
    if e.rps > 0 {
        parts.push(format!("{} rps", e.rps));
    }
    for (n, what) in [
        (e.hour_total_tokens, "tokens/h"),
        (e.hour_input_tokens, "input tokens/h"),
        (e.hour_output_tokens, "output tokens/h"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_descriptions() {
        assert_eq!(cell::<u32>(None), "-");
        assert_eq!(cell(Some(0_u32)), "off");
        assert_eq!(cell(Some(7_u64)), "7");
        assert_eq!(describe(&EffectiveJson::default()), "none");
        let e = EffectiveJson {
            rps: 10,
            hour_total_tokens: 1000,
            hour_input_tokens: 0,
            hour_output_tokens: 5,
        };
        assert_eq!(describe(&e), "10 rps, 1000 tokens/h, 5 output tokens/h");
        assert!(LimitArgs::default().to_proto().is_none());
        let some = LimitArgs {
            rps: Some(0),
            ..LimitArgs::default()
        };
        assert_eq!(some.to_proto().unwrap_or_default().rps, Some(0));
    }
}
