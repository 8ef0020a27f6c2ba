//! Live provider scores (latency, error rate, 429 cool-down) as the control plane computes them
//! from ingested usage, indexed for the decision.

use tokenrouter_proto::config::v1 as pb;

use crate::HashMap;

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

/// Scores by provider, then by upstream model; model "" is the provider as a whole. Two
/// levels, so a lookup borrows its names instead of building a key.
#[derive(Clone, Debug, Default)]
pub struct ScoreBoard {
    pub version: u64,
    by: HashMap<String, HashMap<String, Score>>,
}

impl ScoreBoard {
    pub fn from_proto(p: pb::Scores) -> ScoreBoard {
        let mut by: HashMap<String, HashMap<String, Score>> = HashMap::default();
        for s in p.scores {
            let score = Score {
                latency_ms: s.latency_p50_ms,
                ttfb_ms: s.ttfb_p50_ms,
                error_rate: f64::from(s.error_rate_permille.min(1000)) / 1000.0,
                samples: s.samples,
                cooldown_until_ms: s.cooldown_until_unix_ms,
            };
            by.entry(s.provider).or_default().insert(s.model, score);
        }
        ScoreBoard {
            version: p.version,
            by,
        }
    }

    /// The score of a model at a provider, else of the provider as a whole.
    pub fn get(&self, provider: &str, model: &str) -> Option<&Score> {
        let models = self.by.get(provider)?;
        models.get(model).or_else(|| models.get(""))
    }

    /// Whether the provider asked not to be called before a later time (429 Retry-After).
    pub fn cooling(&self, provider: &str, now_ms: i64) -> bool {
        self.get(provider, "")
            .is_some_and(|s| s.cooldown_until_ms > now_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_model_without_its_own_score_has_its_providers() {
        let score = |provider: &str, model: &str, latency, cooldown| pb::ProviderScore {
            provider: provider.into(),
            model: model.into(),
            latency_p50_ms: latency,
            cooldown_until_unix_ms: cooldown,
            samples: 5,
            ..pb::ProviderScore::default()
        };
        let board = ScoreBoard::from_proto(pb::Scores {
            version: 3,
            scores: vec![
                score("openai", "", 900, 2_000),
                score("openai", "gpt-4o", 300, 0),
                score("claude", "claude-haiku", 200, 0),
            ],
            ..pb::Scores::default()
        });
        let latency = |p, m| board.get(p, m).map(|s| s.latency_ms);
        assert_eq!(latency("openai", "gpt-4o"), Some(300));
        assert_eq!(latency("openai", "gpt-4o-mini"), Some(900));
        assert_eq!(latency("openai", ""), Some(900));
        assert_eq!(latency("claude", "claude-haiku"), Some(200));
        assert_eq!(latency("claude", "claude-opus"), None);
        assert_eq!(latency("gemini", "gpt-4o"), None);
        // The cool-down is the provider's as a whole.
        assert!(board.cooling("openai", 1_999));
        assert!(!board.cooling("openai", 2_000));
        assert!(!board.cooling("claude", 0));
        assert!(!board.cooling("gemini", 0));
        assert_eq!(board.version, 3);
        assert!(!board.is_empty() && ScoreBoard::default().is_empty());
    }
}
