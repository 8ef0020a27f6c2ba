//! Routing rules as the seeds' SDK writes them: `match_json` conditions that must all hold and
//! `action_json` actions that are combined. Compiled once per snapshot; evaluated per request
//! with a trace entry for every condition.

use serde_json::{Map, Value};
use tokenrouter_proto::config::v1 as pb;

use super::trace::{ConditionTrace, RuleTrace};
use super::Mode;
use crate::snapshot::ConfigError;

/// Largest `match_json` / `action_json` accepted (bytes).
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// Most strings in one `contains` list.
pub const MAX_CONTAINS: usize = 100;
/// Longest string a condition compares (characters).
pub const MAX_CONDITION_CHARS: usize = 1024;
/// Most routing rules in one snapshot.
pub const MAX_RULES: usize = 1000;

/// Condition names accepted in `match_json`.
pub const CONDITIONS: [&str; 6] = [
    "contains",
    "metadata_equals",
    "mode",
    "task",
    "model",
    "headers",
];
/// Action names accepted in `action_json`.
pub const ACTIONS: [&str; 4] = ["set_provider", "set_model", "set_mode", "add_warning"];

/// One condition of a match.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// The prompt contains any of these (lower-cased; compared ASCII-case-insensitively).
    Contains(Vec<String>),
    /// Every listed metadata entry equals (strings compared exactly).
    MetadataEquals(Vec<(String, String)>),
    Mode(Mode),
    /// `metadata.task`, else the task the classifier detects (lower-cased).
    Task(String),
    /// The requested `model`: exact, or a prefix when it ends with `*`.
    Model(String),
    /// Request headers (names lower-case) equal these values exactly.
    Headers(Vec<(String, String)>),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub set_provider: Option<String>,
    pub set_model: Option<String>,
    pub set_mode: Option<Mode>,
    pub add_warning: Option<String>,
}

/// A validated routing rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: i64,
    pub name: String,
    pub priority: i32,
    pub enabled: bool,
    /// Empty = every key.
    pub key_id: String,
    pub conditions: Vec<Condition>,
    pub actions: Actions,
}

/// What a rule's conditions are checked against.
pub trait Facts {
    /// The prompt text, lower-cased ASCII (bounded by the caller).
    fn prompt_lower(&self) -> &str;
    fn metadata(&self, key: &str) -> Option<&str>;
    fn mode(&self) -> Option<Mode>;
    /// The task: `metadata.task` or the detected one.
    fn task(&self) -> Option<String>;
    fn requested_model(&self) -> &str;
    fn header(&self, name: &str) -> Option<String>;
}

/// Checks a rule the way the edge would compile it; the control plane calls this before it
/// stores a rule.
pub fn validate(rule: &pb::RoutingRule) -> Result<(), ConfigError> {
    compile(rule).map(drop)
}

/// Compiles one rule.
pub fn compile(rule: &pb::RoutingRule) -> Result<Rule, ConfigError> {
    let name = if rule.name.trim().is_empty() {
        format!("rule {}", rule.id)
    } else {
        rule.name.clone()
    };
    if name.chars().count() > 200 {
        return Err(ConfigError(format!(
            "routing rule name is longer than 200 characters ({})",
            name.chars().take(40).collect::<String>()
        )));
    }
    let at = |what: &str, e: String| ConfigError(format!("routing rule '{name}': {what}: {e}"));
    let conditions = parse_conditions(&rule.match_json).map_err(|e| at("match_json", e))?;
    let actions = parse_actions(&rule.action_json).map_err(|e| at("action_json", e))?;
    Ok(Rule {
        id: rule.id,
        name,
        priority: rule.priority,
        enabled: rule.enabled,
        key_id: rule.key_id.clone(),
        conditions,
        actions,
    })
}

fn object(json: &str, empty_ok: bool) -> Result<Map<String, Value>, String> {
    if json.len() > MAX_JSON_BYTES {
        return Err(format!("longer than {MAX_JSON_BYTES} bytes"));
    }
    if json.trim().is_empty() {
        return if empty_ok {
            Ok(Map::new())
        } else {
            Err("empty; expected a JSON object".into())
        };
    }
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("not valid JSON ({e})")),
    }
}

fn bounded_str(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) if s.is_empty() => Err(format!("{what} must not be empty")),
        Value::String(s) if s.chars().count() > MAX_CONDITION_CHARS => Err(format!(
            "{what} is longer than {MAX_CONDITION_CHARS} characters"
        )),
        Value::String(s) => Ok(s.clone()),
        _ => Err(format!("{what} must be a string")),
    }
}

fn string_map(v: &Value, what: &str) -> Result<Vec<(String, String)>, String> {
    let Value::Object(m) = v else {
        return Err(format!("{what} must be an object of strings"));
    };
    if m.is_empty() || m.len() > MAX_CONTAINS {
        return Err(format!("{what} must have 1 to {MAX_CONTAINS} entries"));
    }
    m.iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(_) => bounded_str(v, &format!("{what}.{k}"))?,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(format!("{what}.{k} must be a string")),
            };
            Ok((k.clone(), value))
        })
        .collect()
}

/// Parses `match_json` (also the match of a key configuration's advanced rule). An empty
/// object matches every request.
pub fn parse_conditions(json: &str) -> Result<Vec<Condition>, String> {
    let m = object(json, true)?;
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in &m {
        let c = match k.as_str() {
            "contains" => {
                let items = match v {
                    Value::Array(items) => {
                        if items.is_empty() || items.len() > MAX_CONTAINS {
                            return Err(format!("contains must list 1 to {MAX_CONTAINS} strings"));
                        }
                        items
                            .iter()
                            .map(|i| bounded_str(i, "contains"))
                            .collect::<Result<Vec<_>, _>>()?
                    }
                    _ => vec![bounded_str(v, "contains")?],
                };
                Condition::Contains(items.iter().map(|s| s.to_ascii_lowercase()).collect())
            }
            "metadata_equals" => Condition::MetadataEquals(string_map(v, "metadata_equals")?),
            "mode" => {
                let s = bounded_str(v, "mode")?;
                Condition::Mode(Mode::parse(&s).ok_or_else(|| {
                    format!("mode {s:?} is not one of cost, quality, latency, balance(d)")
                })?)
            }
            "task" => Condition::Task(bounded_str(v, "task")?.to_ascii_lowercase()),
            "model" => Condition::Model(bounded_str(v, "model")?),
            "headers" => Condition::Headers(
                string_map(v, "headers")?
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
            ),
            other => {
                return Err(format!(
                    "unknown condition {other:?} (expected {})",
                    CONDITIONS.join(", ")
                ))
            }
        };
        out.push(c);
    }
    Ok(out)
}

fn parse_actions(json: &str) -> Result<Actions, String> {
    let m = object(json, false)?;
    let mut a = Actions::default();
    for (k, v) in &m {
        match k.as_str() {
            "set_provider" => a.set_provider = Some(bounded_str(v, "set_provider")?),
            "set_model" => a.set_model = Some(bounded_str(v, "set_model")?),
            "set_mode" => {
                let s = bounded_str(v, "set_mode")?;
                a.set_mode = Some(Mode::parse(&s).ok_or_else(|| {
                    format!("set_mode {s:?} is not one of cost, quality, latency, balance")
                })?);
            }
            "add_warning" => {
                let message = match v {
                    Value::Object(w) => w
                        .get("message")
                        .ok_or_else(|| "add_warning needs a \"message\"".to_string())
                        .and_then(|m| bounded_str(m, "add_warning.message"))?,
                    _ => bounded_str(v, "add_warning")?,
                };
                a.add_warning = Some(message);
            }
            other => {
                return Err(format!(
                    "unknown action {other:?} (expected {})",
                    ACTIONS.join(", ")
                ))
            }
        }
    }
    if a == Actions::default() {
        return Err(format!("no action (expected {})", ACTIONS.join(", ")));
    }
    if let Some(p) = &a.set_provider {
        if !crate::snapshot::valid_name(p) {
            return Err(format!("set_provider {p:?} is not a provider name"));
        }
    }
    Ok(a)
}

/// ASCII-case-insensitive `haystack_lower.contains(needle_lower)`; both already lower-cased.
fn contains(haystack_lower: &str, needle_lower: &str) -> bool {
    haystack_lower.contains(needle_lower)
}

/// Checks every condition (no short-circuit, so the trace shows each one) and returns whether
/// all held.
pub fn evaluate(
    conditions: &[Condition],
    facts: &dyn Facts,
    out: &mut Vec<ConditionTrace>,
) -> bool {
    let mut all = true;
    for c in conditions {
        let (name, expected, actual, held) = match c {
            Condition::Contains(items) => {
                let hit = items.iter().find(|i| contains(facts.prompt_lower(), i));
                (
                    "contains",
                    Value::from(items.clone()),
                    hit.map_or(Value::Null, |h| Value::from(h.clone())),
                    hit.is_some(),
                )
            }
            Condition::MetadataEquals(pairs) => {
                let mut actual = Map::new();
                let mut held = true;
                for (k, v) in pairs {
                    let got = facts.metadata(k);
                    held &= got == Some(v.as_str());
                    actual.insert(k.clone(), got.map_or(Value::Null, Value::from));
                }
                let expected: Map<String, Value> = pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect();
                (
                    "metadata_equals",
                    Value::Object(expected),
                    Value::Object(actual),
                    held,
                )
            }
            Condition::Mode(m) => {
                let got = facts.mode();
                (
                    "mode",
                    Value::from(m.as_str()),
                    got.map_or(Value::Null, |g| Value::from(g.as_str())),
                    got == Some(*m),
                )
            }
            Condition::Task(t) => {
                let got = facts.task();
                let held = got.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(t));
                (
                    "task",
                    Value::from(t.clone()),
                    got.map_or(Value::Null, Value::from),
                    held,
                )
            }
            Condition::Model(pattern) => {
                let model = facts.requested_model();
                let held = match pattern.strip_suffix('*') {
                    Some(prefix) => model.starts_with(prefix),
                    None => model == pattern,
                };
                (
                    "model",
                    Value::from(pattern.clone()),
                    Value::from(model),
                    held,
                )
            }
            Condition::Headers(pairs) => {
                let mut actual = Map::new();
                let mut held = true;
                for (k, v) in pairs {
                    let got = facts.header(k);
                    held &= got.as_deref() == Some(v.as_str());
                    actual.insert(k.clone(), got.map_or(Value::Null, Value::from));
                }
                let expected: Map<String, Value> = pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect();
                (
                    "headers",
                    Value::Object(expected),
                    Value::Object(actual),
                    held,
                )
            }
        };
        all &= held;
        out.push(ConditionTrace {
            condition: name,
            expected,
            actual,
            matched: held,
        });
    }
    all
}

impl Rule {
    /// Whether the rule applies to requests of this key at all.
    pub fn in_scope(&self, key_id: &str) -> bool {
        self.enabled && (self.key_id.is_empty() || self.key_id == key_id)
    }

    /// Evaluates the rule's conditions into a fresh trace entry.
    pub fn check(&self, facts: &dyn Facts) -> (bool, RuleTrace) {
        let mut conditions = Vec::with_capacity(self.conditions.len());
        let matched = evaluate(&self.conditions, facts, &mut conditions);
        (
            matched,
            RuleTrace {
                id: self.id,
                name: self.name.clone(),
                priority: self.priority,
                matched,
                conditions,
                applied: Vec::new(),
                ignored: Vec::new(),
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn rule(m: &str, a: &str) -> pb::RoutingRule {
        pb::RoutingRule {
            id: 1,
            name: "r".into(),
            priority: 100,
            enabled: true,
            match_json: m.into(),
            action_json: a.into(),
            key_id: String::new(),
        }
    }

    #[test]
    fn seed_examples_compile() {
        let matches = [
            r#"{"task": "coding"}"#,
            r#"{"contains": "code review"}"#,
            r#"{"metadata_equals": {"task": "documentation"}}"#,
            r#"{"mode": "balanced"}"#,
            r#"{"task": "coding", "mode": "quality"}"#,
            r#"{"contains": ["analyze", "complex"], "mode": "quality"}"#,
            r#"{"contains": ["summarize", "list"]}"#,
            r#"{"model": "gpt-4*", "headers": {"X-Team": "ml"}}"#,
            "{}",
        ];
        let actions = [
            r#"{"set_provider": "anthropic"}"#,
            r#"{"set_model": "gpt-4o"}"#,
            r#"{"set_mode": "cost"}"#,
            r#"{"add_warning": {"message": "Using beta routing"}}"#,
            r#"{"set_provider": "openai", "set_model": "gpt-4o", "set_mode": "quality"}"#,
        ];
        for m in matches {
            for a in actions {
                assert!(validate(&rule(m, a)).is_ok(), "{m} {a}");
            }
        }
        let r = compile(&rule(
            r#"{"headers": {"X-Team": "ml"}}"#,
            r#"{"set_mode": "balanced"}"#,
        ))
        .unwrap();
        assert_eq!(
            r.conditions,
            vec![Condition::Headers(vec![("x-team".into(), "ml".into())])]
        );
        assert_eq!(r.actions.set_mode, Some(Mode::Balance));
    }

    #[test]
    fn invalid_rules_say_why() {
        let cases = [
            (
                r#"{"contanis": "x"}"#,
                r#"{"set_mode": "cost"}"#,
                "unknown condition",
            ),
            (
                r#"{"contains": ""}"#,
                r#"{"set_mode": "cost"}"#,
                "must not be empty",
            ),
            (r#"{"contains": []}"#, r#"{"set_mode": "cost"}"#, "1 to 100"),
            (
                r#"{"contains": 5}"#,
                r#"{"set_mode": "cost"}"#,
                "must be a string",
            ),
            (
                r#"{"mode": "fast"}"#,
                r#"{"set_mode": "cost"}"#,
                "not one of",
            ),
            (r#"["task"]"#, r#"{"set_mode": "cost"}"#, "JSON object"),
            ("{", r#"{"set_mode": "cost"}"#, "not valid JSON"),
            ("{}", "{}", "no action"),
            ("{}", "", "empty"),
            ("{}", r#"{"set_mode": "cheap"}"#, "not one of"),
            (
                "{}",
                r#"{"set_provider": "Open AI"}"#,
                "not a provider name",
            ),
            ("{}", r#"{"route_to": "x"}"#, "unknown action"),
            ("{}", r#"{"add_warning": {}}"#, "needs a \"message\""),
        ];
        for (m, a, want) in cases {
            let e = validate(&rule(m, a)).unwrap_err();
            assert!(e.0.contains(want), "{m} {a}: {e}");
        }
        let huge = format!(r#"{{"contains": "{}"}}"#, "x".repeat(MAX_JSON_BYTES));
        assert!(validate(&rule(&huge, r#"{"set_mode": "cost"}"#)).is_err());
    }

    struct F;
    impl Facts for F {
        fn prompt_lower(&self) -> &str {
            "please do a code review of this diff"
        }
        fn metadata(&self, key: &str) -> Option<&str> {
            (key == "task").then_some("documentation")
        }
        fn mode(&self) -> Option<Mode> {
            Some(Mode::Balance)
        }
        fn task(&self) -> Option<String> {
            Some("documentation".into())
        }
        fn requested_model(&self) -> &str {
            "gpt-4o-mini"
        }
        fn header(&self, name: &str) -> Option<String> {
            (name == "x-team").then(|| "ml".into())
        }
    }

    #[test]
    fn conditions_table() {
        let cases: [(&str, bool); 12] = [
            (r#"{"contains": "Code Review"}"#, true),
            (r#"{"contains": ["nothing", "DIFF"]}"#, true),
            (r#"{"contains": ["nothing", "else"]}"#, false),
            (r#"{"metadata_equals": {"task": "documentation"}}"#, true),
            (r#"{"metadata_equals": {"task": "coding"}}"#, false),
            (r#"{"mode": "balanced"}"#, true),
            (r#"{"mode": "cost"}"#, false),
            (r#"{"task": "Documentation"}"#, true),
            (r#"{"model": "gpt-4o*"}"#, true),
            (r#"{"model": "gpt-4o"}"#, false),
            (
                r#"{"headers": {"x-team": "ml"}, "contains": "review"}"#,
                true,
            ),
            (
                r#"{"headers": {"x-team": "ml"}, "contains": "nope"}"#,
                false,
            ),
        ];
        for (m, want) in cases {
            let r = compile(&rule(m, r#"{"set_mode": "cost"}"#)).unwrap();
            let (held, trace) = r.check(&F);
            assert_eq!(held, want, "{m}");
            assert_eq!(trace.conditions.len(), r.conditions.len(), "{m}");
            assert_eq!(trace.matched, want);
        }
    }
}
