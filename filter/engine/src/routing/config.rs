//! Per-key routing configurations (console guide, "configure routing across providers"):
//! a fallback policy, a traffic split, or advanced rules, each an ordered list of backends.

use tokenrouter_proto::config::v1 as pb;

use super::rules::{self, Condition, Facts};
use super::trace::ConditionTrace;
use crate::snapshot::ConfigError;

/// Most backends in one list.
pub const MAX_BACKENDS: usize = 10;
/// Most advanced rules in one configuration.
pub const MAX_CONFIG_RULES: usize = 50;
/// Largest traffic-split weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Backends in priority order; the next only when the previous fails.
    Fallback,
    /// The first backend is drawn by weight on every request; the others follow as fallbacks.
    Split,
    /// The first advanced rule that matches gives the backends (in fallback order).
    Rules,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s.to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
            "fallback" | "fallback_policy" => Some(Strategy::Fallback),
            "split" | "traffic_split" | "weighted" => Some(Strategy::Split),
            "rules" | "advanced" | "advanced_routing_rules" => Some(Strategy::Rules),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Split => "split",
            Strategy::Rules => "rules",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `provider/model` or a bare catalogue model.
    pub model: String,
    pub priority: i32,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigRule {
    pub name: String,
    pub conditions: Vec<Condition>,
    pub backends: Vec<Backend>,
}

/// A validated key configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyConfig {
    pub key_id: String,
    pub active: bool,
    pub strategy: Strategy,
    pub backends: Vec<Backend>,
    pub rules: Vec<ConfigRule>,
}

/// Checks a configuration the way the edge would compile it (the control plane also checks
/// that the key and each backend exist).
pub fn validate(config: &pb::RoutingConfig) -> Result<(), ConfigError> {
    compile(config).map(drop)
}

fn backends(list: &[pb::Backend], at: &str) -> Result<Vec<Backend>, ConfigError> {
    if list.len() > MAX_BACKENDS {
        return Err(ConfigError(format!(
            "{at}: {} backends; at most {MAX_BACKENDS} are accepted",
            list.len()
        )));
    }
    list.iter()
        .map(|b| {
            let model = b.model.trim();
            if model.is_empty()
                || model.len() > 256
                || model.starts_with('/')
                || model.ends_with('/')
            {
                return Err(ConfigError(format!(
                    "{at}: backend model {:?} is not `provider/model` or a catalogue model",
                    b.model
                )));
            }
            if b.weight > MAX_WEIGHT {
                return Err(ConfigError(format!(
                    "{at}: weight {} of {model} is above {MAX_WEIGHT}",
                    b.weight
                )));
            }
            Ok(Backend {
                model: model.to_string(),
                priority: b.priority,
                weight: b.weight.max(1),
            })
        })
        .collect()
}

/// Compiles one key configuration.
pub fn compile(config: &pb::RoutingConfig) -> Result<KeyConfig, ConfigError> {
    let at = format!("routing configuration of key {}", config.key_id);
    if config.key_id.is_empty() {
        return Err(ConfigError("routing configuration without a key id".into()));
    }
    let strategy = Strategy::parse(&config.strategy).ok_or_else(|| {
        ConfigError(format!(
            "{at}: strategy {:?} is not fallback, split or rules",
            config.strategy
        ))
    })?;
    let list = backends(&config.backends, &at)?;
    if config.rules.len() > MAX_CONFIG_RULES {
        return Err(ConfigError(format!(
            "{at}: {} rules; at most {MAX_CONFIG_RULES} are accepted",
            config.rules.len()
        )));
    }
    let rules = config
        .rules
        .iter()
        .map(|r| {
            let rat = format!("{at}, rule {:?}", r.name);
            let conditions = rules::parse_conditions(&r.match_json)
                .map_err(|e| ConfigError(format!("{rat}: match_json: {e}")))?;
            let backends = backends(&r.backends, &rat)?;
            if backends.is_empty() {
                return Err(ConfigError(format!("{rat}: no backends")));
            }
            Ok(ConfigRule {
                name: r.name.clone(),
                conditions,
                backends,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match strategy {
        Strategy::Fallback | Strategy::Split if list.is_empty() => {
            return Err(ConfigError(format!("{at}: no backends")))
        }
        Strategy::Rules if rules.is_empty() => {
            return Err(ConfigError(format!("{at}: the rules strategy needs rules")))
        }
        _ => {}
    }
    Ok(KeyConfig {
        key_id: config.key_id.clone(),
        active: config.active,
        strategy,
        backends: list,
        rules,
    })
}

/// `backends` in fallback order: by priority (lower first); backends that share a priority
/// are ordered by a weighted draw with `random`.
pub fn fallback_order(backends: &[Backend], random: u64) -> Vec<&Backend> {
    let mut sorted: Vec<&Backend> = backends.iter().collect();
    sorted.sort_by_key(|b| b.priority);
    let mut out = Vec::with_capacity(sorted.len());
    let mut i = 0;
    let mut r = random;
    while i < sorted.len() {
        let level = sorted[i].priority;
        let mut group: Vec<&Backend> = sorted[i..]
            .iter()
            .take_while(|b| b.priority == level)
            .copied()
            .collect();
        i += group.len();
        while !group.is_empty() {
            let pick = weighted_pick(&group, r);
            out.push(group.remove(pick));
            r = mix(r);
        }
    }
    out
}

/// `backends` for a traffic split: the first drawn by weight, then the others by weight
/// (heaviest first), as fallbacks.
pub fn split_order(backends: &[Backend], random: u64) -> Vec<&Backend> {
    let all: Vec<&Backend> = backends.iter().collect();
    if all.is_empty() {
        return all;
    }
    let first = weighted_pick(&all, random);
    let mut rest: Vec<&Backend> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, b)| *b)
        .collect();
    rest.sort_by_key(|b| std::cmp::Reverse(b.weight));
    let mut out = vec![all[first]];
    out.extend(rest);
    out
}

/// Index drawn with probability weight / total.
fn weighted_pick(list: &[&Backend], random: u64) -> usize {
    let total: u64 = list.iter().map(|b| u64::from(b.weight.max(1))).sum();
    if total == 0 {
        return 0;
    }
    let mut x = random % total;
    for (i, b) in list.iter().enumerate() {
        let w = u64::from(b.weight.max(1));
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}

/// SplitMix64 step: a new well-mixed value from the previous one.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl KeyConfig {
    /// The backends this request goes to, in attempt order, and what decided it (the rule that
    /// matched, for the `rules` strategy). `None` when an advanced configuration has no rule
    /// for the request and no default backends.
    pub fn chain<'c>(
        &'c self,
        facts: &dyn Facts,
        random: u64,
        conditions: &mut Vec<(String, bool, Vec<ConditionTrace>)>,
    ) -> Option<Vec<&'c Backend>> {
        match self.strategy {
            Strategy::Fallback => Some(fallback_order(&self.backends, random)),
            Strategy::Split => Some(split_order(&self.backends, random)),
            Strategy::Rules => {
                for r in &self.rules {
                    let mut trace = Vec::new();
                    let held = rules::evaluate(&r.conditions, facts, &mut trace);
                    conditions.push((r.name.clone(), held, trace));
                    if held {
                        return Some(fallback_order(&r.backends, random));
                    }
                }
                (!self.backends.is_empty()).then(|| fallback_order(&self.backends, random))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn b(model: &str, priority: i32, weight: u32) -> pb::Backend {
        pb::Backend {
            model: model.into(),
            priority,
            weight,
        }
    }

    fn cfg(strategy: &str, backends: Vec<pb::Backend>) -> pb::RoutingConfig {
        pb::RoutingConfig {
            key_id: "key_1".into(),
            active: true,
            strategy: strategy.into(),
            backends,
            rules: vec![],
        }
    }

    #[test]
    fn validation() {
        assert!(validate(&cfg("fallback", vec![b("openai/gpt-4o", 0, 0)])).is_ok());
        assert!(validate(&cfg("Traffic Split", vec![b("gpt-4o", 0, 3)])).is_ok());
        let bad = [
            (cfg("roundrobin", vec![b("gpt-4o", 0, 1)]), "strategy"),
            (cfg("fallback", vec![]), "no backends"),
            (cfg("fallback", vec![b("", 0, 1)]), "backend model"),
            (
                cfg("fallback", vec![b("gpt-4o", 0, MAX_WEIGHT + 1)]),
                "weight",
            ),
            (
                cfg("fallback", vec![b("x", 0, 1); MAX_BACKENDS + 1]),
                "at most",
            ),
            (cfg("rules", vec![]), "needs rules"),
        ];
        for (c, want) in bad {
            let e = validate(&c).unwrap_err();
            assert!(e.0.contains(want), "{want}: {e}");
        }
        let mut r = cfg("rules", vec![]);
        r.rules.push(pb::ConfigRule {
            name: "ml".into(),
            match_json: r#"{"bogus": 1}"#.into(),
            backends: vec![b("gpt-4o", 0, 1)],
        });
        assert!(validate(&r).unwrap_err().0.contains("unknown condition"));
    }

    #[test]
    fn fallback_is_by_priority() {
        let c = compile(&cfg(
            "fallback",
            vec![b("c", 2, 1), b("a", 0, 1), b("b", 1, 1)],
        ))
        .unwrap();
        for r in [0, 1, 99, u64::MAX] {
            let order: Vec<&str> = fallback_order(&c.backends, r)
                .iter()
                .map(|b| b.model.as_str())
                .collect();
            assert_eq!(order, ["a", "b", "c"]);
        }
    }

    #[test]
    fn split_follows_weights_within_a_few_percent() {
        let c = compile(&cfg("split", vec![b("a", 0, 3), b("b", 0, 1)])).unwrap();
        let mut a = 0;
        let mut r = 42u64;
        for _ in 0..10_000 {
            r = mix(r);
            let order = split_order(&c.backends, r);
            assert_eq!(order.len(), 2);
            if order[0].model == "a" {
                a += 1;
            }
        }
        assert!((7_200..=7_800).contains(&a), "{a}");
    }
}
