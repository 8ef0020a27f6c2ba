//! Live provider scores (latency, error rate, 429 cool-down) as the control plane computes them
//! from ingested usage, indexed for the decision.

use std::collections::HashMap;

use tokenrouter_proto::config::v1 as pb;

/// Samples below which observed latency is not trusted over the catalogue prior.
pub const MIN_SAMPLES: u32 = 3;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    pub latency_ms: u32,
    pub ttfb_ms: u32,
    /// 0.0–1.0.
    pub error_rate: f64,
    pub samples: u32,
    pub cooldown_until_ms: i64,
}

/// Scores by (provider, upstream model); model "" is the provider as a whole.
#[derive(Clone, Debug, Default)]
pub struct ScoreBoard {
    pub version: u64,
    by: HashMap<(String, String), Score>,
}

impl ScoreBoard {
    pub fn from_proto(p: pb::Scores) -> ScoreBoard {
        let by = p
            .scores
            .into_iter()
            .map(|s| {
                (
                    (s.provider, s.model),
                    Score {
                        latency_ms: s.latency_p50_ms,
                        ttfb_ms: s.ttfb_p50_ms,
                        error_rate: f64::from(s.error_rate_permille.min(1000)) / 1000.0,
                        samples: s.samples,
                        cooldown_until_ms: s.cooldown_until_unix_ms,
                    },
                )
            })
            .collect();
        ScoreBoard {
            version: p.version,
            by,
        }
    }

    /// The score of a model at a provider, else of the provider as a whole.
    pub fn get(&self, provider: &str, model: &str) -> Option<&Score> {
        self.by
            .get(&(provider.to_string(), model.to_string()))
            .or_else(|| self.by.get(&(provider.to_string(), String::new())))
    }

    /// Whether the provider asked not to be called before a later time (429 Retry-After).
    pub fn cooling(&self, provider: &str, now_ms: i64) -> bool {
        self.by
            .get(&(provider.to_string(), String::new()))
            .is_some_and(|s| s.cooldown_until_ms > now_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }
}
