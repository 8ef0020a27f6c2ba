//! Routing rules as the seeds' SDK writes them: `match_json` conditions that must all hold and
//! `action_json` actions that are combined. Compiled once per snapshot; evaluated per request
//! with a trace entry for every condition.
//!
//! Every enabled rule is evaluated on every request, and most rules do not match, so a rule
//! that does not match costs no allocation beyond its trace entry's list: what the trace shows
//! as each condition's `expected`, and as its `actual` when the request has none of what the
//! condition looks at, is built once when the rule is compiled; the request's model and task
//! are built once per request ([`Evaluation`]); all are shared (`Arc`) with the traces. The
//! `contains` strings of all the rules of a snapshot form one Aho–Corasick automaton
//! ([`RuleSet`]), so the prompt is scanned once per request, not once per string.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde_json::{Map, Value};
use tokenrouter_proto::config::v1 as pb;

use super::trace::{condition_position, ConditionTrace, RuleTrace};
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
/// Most bytes of distinct `contains` strings one snapshot's automaton holds (its memory grows
/// with them); beyond, each condition scans the prompt on its own.
const MAX_NEEDLE_BYTES: usize = 64 * 1024;

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
    /// Shared with every trace of the rule.
    pub name: Arc<str>,
    pub priority: i32,
    pub enabled: bool,
    /// Empty = every key.
    pub key_id: String,
    pub conditions: Vec<Condition>,
    /// What the trace shows for each condition, in the order of `conditions`.
    traced: Vec<Traced>,
    pub actions: Actions,
}

/// A condition's trace values that do not depend on the request, built when the rule is
/// compiled.
#[derive(Clone, Debug, PartialEq)]
struct Traced {
    /// What the condition expects, as compact JSON (the trace writes it as it is).
    expected_json: Arc<str>,
    /// `actual` when the request has none of what the condition looks at: `null`, or
    /// `{"key": null, …}` for `metadata_equals` and `headers`.
    absent: Arc<Value>,
    /// For `contains`: each string's pattern in its [`RuleSet`]'s automaton (empty when there
    /// is none).
    needles: Vec<usize>,
    /// For `headers`: each header's place in its [`RuleSet`]'s header names (empty outside a
    /// set).
    headers: Vec<usize>,
}

impl Traced {
    fn of(c: &Condition) -> Traced {
        let absent = match c {
            Condition::MetadataEquals(pairs) | Condition::Headers(pairs) => Value::Object(
                pairs
                    .iter()
                    .map(|(k, _)| (k.clone(), Value::Null))
                    .collect(),
            ),
            _ => Value::Null,
        };
        Traced {
            expected_json: Arc::from(c.expected().to_string()),
            absent: Arc::new(absent),
            needles: Vec::new(),
            headers: Vec::new(),
        }
    }
}

/// A snapshot's routing rules, in evaluation order, and one automaton over the distinct
/// `contains` strings of all of them.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// `None` without `contains` conditions, or when the strings exceed [`MAX_NEEDLE_BYTES`].
    needles: Option<AhoCorasick>,
    needle_count: usize,
    /// The distinct header names of all `headers` conditions: an evaluation reads each once
    /// (1 000 rules ask for the same few headers).
    header_names: Vec<String>,
}

impl RuleSet {
    /// The rules in the order given (the snapshot sorts them by priority).
    pub fn new(mut rules: Vec<Rule>) -> RuleSet {
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut needles: Vec<String> = Vec::new();
        for rule in &rules {
            for c in &rule.conditions {
                if let Condition::Contains(items) = c {
                    for item in items {
                        if !ids.contains_key(item) {
                            ids.insert(item.clone(), needles.len());
                            needles.push(item.clone());
                        }
                    }
                }
            }
        }
        let bytes: usize = needles.iter().map(String::len).sum();
        let automaton = if needles.is_empty() || bytes > MAX_NEEDLE_BYTES {
            None
        } else {
            // Standard semantics: the overlapping scan reports every string that occurs.
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(&needles)
                .ok()
        };
        if automaton.is_some() {
            for rule in &mut rules {
                for (c, t) in rule.conditions.iter().zip(&mut rule.traced) {
                    if let Condition::Contains(items) = c {
                        t.needles = items.iter().filter_map(|i| ids.get(i).copied()).collect();
                    }
                }
            }
        }
        let mut header_ids: HashMap<String, usize> = HashMap::new();
        let mut header_names: Vec<String> = Vec::new();
        for rule in &mut rules {
            for (c, t) in rule.conditions.iter().zip(&mut rule.traced) {
                if let Condition::Headers(pairs) = c {
                    t.headers = pairs
                        .iter()
                        .map(|(name, _)| {
                            *header_ids.entry(name.clone()).or_insert_with(|| {
                                header_names.push(name.clone());
                                header_names.len() - 1
                            })
                        })
                        .collect();
                }
            }
        }
        RuleSet {
            rules,
            needles: automaton,
            needle_count: needles.len(),
            header_names,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Which of the automaton's strings occur in `prompt_lower`, by pattern.
    fn scan(&self, prompt_lower: &str) -> Option<Vec<bool>> {
        let automaton = self.needles.as_ref()?;
        let mut present = vec![false; self.needle_count];
        for m in automaton.find_overlapping_iter(prompt_lower) {
            if let Some(p) = present.get_mut(m.pattern().as_usize()) {
                *p = true;
            }
        }
        Some(present)
    }
}

/// What a rule's conditions are checked against.
pub trait Facts {
    /// The prompt text, lower-cased ASCII (bounded by the caller).
    fn prompt_lower(&self) -> &str;
    fn metadata(&self, key: &str) -> Option<&str>;
    fn mode(&self) -> Option<Mode>;
    /// The task: `metadata.task` or the detected one.
    fn task(&self) -> Option<&str>;
    fn requested_model(&self) -> &str;
    fn header(&self, name: &str) -> Option<&str>;
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
        name: name.into(),
        priority: rule.priority,
        enabled: rule.enabled,
        key_id: rule.key_id.clone(),
        traced: conditions.iter().map(Traced::of).collect(),
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
    let traced: Vec<Traced> = conditions.iter().map(Traced::of).collect();
    Evaluation::new(facts).conditions(conditions, &traced, out)
}

/// The rules of one request: its facts, and the trace values every rule would otherwise build
/// again (`null`, the requested model, the task).
pub struct Evaluation<'f> {
    facts: &'f dyn Facts,
    /// The rules' automaton, when the rules come from a [`RuleSet`].
    set: Option<&'f RuleSet>,
    /// The automaton's strings found in the prompt, on the first `contains` condition.
    present: OnceCell<Option<Vec<bool>>>,
    null: Arc<Value>,
    model: OnceCell<Arc<Value>>,
    task: OnceCell<(Option<&'f str>, Arc<Value>)>,
    /// The set's header names' values, read on the first `headers` condition.
    headers: OnceCell<Vec<Option<&'f str>>>,
}

impl<'f> Evaluation<'f> {
    /// For conditions outside a [`RuleSet`]: `contains` scans the prompt per string.
    pub fn new(facts: &'f dyn Facts) -> Evaluation<'f> {
        Evaluation {
            facts,
            set: None,
            present: OnceCell::new(),
            null: Arc::new(Value::Null),
            model: OnceCell::new(),
            task: OnceCell::new(),
            headers: OnceCell::new(),
        }
    }

    /// For the rules of `set`: `contains` reads one scan of the prompt by the set's automaton.
    pub fn of_rules(facts: &'f dyn Facts, set: &'f RuleSet) -> Evaluation<'f> {
        Evaluation {
            set: Some(set),
            ..Evaluation::new(facts)
        }
    }

    /// The request's value of the `i`-th header of a `headers` condition: from the values of
    /// the set's header names, read once per evaluation, or asked of the facts outside a set.
    fn header(&self, name: &str, traced: &Traced, i: usize) -> Option<&'f str> {
        if let (Some(set), Some(&id)) = (self.set, traced.headers.get(i)) {
            let facts = self.facts;
            let values = self
                .headers
                .get_or_init(|| set.header_names.iter().map(|n| facts.header(n)).collect());
            return *values.get(id)?;
        }
        self.facts.header(name)
    }

    /// The first of `items` that the prompt contains.
    fn first_contained<'i>(&self, items: &'i [String], needles: &[usize]) -> Option<&'i String> {
        let present = self
            .present
            .get_or_init(|| self.set?.scan(self.facts.prompt_lower()));
        match present {
            Some(present) if needles.len() == items.len() => items
                .iter()
                .zip(needles)
                .find(|(_, n)| present.get(**n).copied().unwrap_or(false))
                .map(|(item, _)| item),
            _ => items
                .iter()
                .find(|i| contains(self.facts.prompt_lower(), i)),
        }
    }

    fn conditions(
        &self,
        conditions: &[Condition],
        traced: &[Traced],
        out: &mut Vec<ConditionTrace>,
    ) -> bool {
        let mut all = true;
        for (c, t) in conditions.iter().zip(traced) {
            let (actual, held) = self.check(c, t);
            all &= held;
            out.push(ConditionTrace {
                condition: c.name(),
                expected_json: Arc::clone(&t.expected_json),
                actual,
                matched: held,
            });
        }
        all
    }

    /// Whether every condition holds, stopping at the first that does not and building no
    /// trace: [`Self::conditions`]'s verdict at a fraction of its cost.
    fn all_hold(&self, conditions: &[Condition], traced: &[Traced]) -> bool {
        conditions.iter().zip(traced).all(|(c, t)| self.holds(c, t))
    }

    /// Whether one condition holds; the second half of [`Self::check`] without its `actual`.
    fn holds(&self, c: &Condition, traced: &Traced) -> bool {
        let facts = self.facts;
        match c {
            Condition::Contains(items) => self.first_contained(items, &traced.needles).is_some(),
            Condition::MetadataEquals(pairs) => pairs
                .iter()
                .all(|(k, v)| facts.metadata(k) == Some(v.as_str())),
            Condition::Headers(pairs) => pairs
                .iter()
                .enumerate()
                .all(|(i, (k, v))| self.header(k, traced, i) == Some(v.as_str())),
            Condition::Mode(m) => facts.mode() == Some(*m),
            Condition::Task(_) | Condition::Model(_) => self.check(c, traced).1,
        }
    }

    /// Checks one condition: what the request has (for the trace) and whether it holds.
    fn check(&self, c: &Condition, traced: &Traced) -> (Arc<Value>, bool) {
        let facts = self.facts;
        let absent = &traced.absent;
        match c {
            Condition::Contains(items) => match self.first_contained(items, &traced.needles) {
                Some(hit) => (Arc::new(Value::from(hit.clone())), true),
                None => (Arc::clone(&self.null), false),
            },
            Condition::MetadataEquals(pairs) => {
                let (mut held, mut any) = (true, false);
                for (k, v) in pairs {
                    let got = facts.metadata(k);
                    held &= got == Some(v.as_str());
                    any |= got.is_some();
                }
                if !any {
                    return (Arc::clone(absent), held);
                }
                let actual = pairs
                    .iter()
                    .map(|(k, _)| {
                        (
                            k.clone(),
                            facts.metadata(k).map_or(Value::Null, Value::from),
                        )
                    })
                    .collect();
                (Arc::new(Value::Object(actual)), held)
            }
            Condition::Headers(pairs) => {
                let (mut held, mut any) = (true, false);
                for (i, (k, v)) in pairs.iter().enumerate() {
                    let got = self.header(k, traced, i);
                    held &= got == Some(v.as_str());
                    any |= got.is_some();
                }
                if !any {
                    return (Arc::clone(absent), held);
                }
                // Asked again: the values were read once (the set's, or the edge's facts').
                let actual = pairs
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| {
                        let got = self.header(k, traced, i);
                        (k.clone(), got.map_or(Value::Null, Value::from))
                    })
                    .collect();
                (Arc::new(Value::Object(actual)), held)
            }
            Condition::Mode(m) => match facts.mode() {
                Some(got) => (Arc::new(Value::from(got.as_str())), got == *m),
                None => (Arc::clone(&self.null), false),
            },
            Condition::Task(t) => {
                let (got, actual) = self.task.get_or_init(|| {
                    let got = facts.task();
                    (got, Arc::new(got.map_or(Value::Null, Value::from)))
                });
                let held = got.is_some_and(|g| g.eq_ignore_ascii_case(t));
                (Arc::clone(actual), held)
            }
            Condition::Model(pattern) => {
                let model = facts.requested_model();
                let held = match pattern.strip_suffix('*') {
                    Some(prefix) => model.starts_with(prefix),
                    None => model == pattern,
                };
                let actual = self.model.get_or_init(|| Arc::new(Value::from(model)));
                (Arc::clone(actual), held)
            }
        }
    }
}

impl Condition {
    /// The condition's name in `match_json` and in the trace.
    pub fn name(&self) -> &'static str {
        match self {
            Condition::Contains(_) => "contains",
            Condition::MetadataEquals(_) => "metadata_equals",
            Condition::Mode(_) => "mode",
            Condition::Task(_) => "task",
            Condition::Model(_) => "model",
            Condition::Headers(_) => "headers",
        }
    }

    /// What the trace shows as the condition's `expected`.
    pub fn expected(&self) -> Value {
        match self {
            Condition::Contains(items) => Value::from(items.clone()),
            Condition::MetadataEquals(pairs) | Condition::Headers(pairs) => Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect(),
            ),
            Condition::Mode(m) => Value::from(m.as_str()),
            Condition::Task(t) => Value::from(t.clone()),
            Condition::Model(pattern) => Value::from(pattern.clone()),
        }
    }
}

impl Rule {
    /// Whether the rule applies to requests of this key at all.
    pub fn in_scope(&self, key_id: &str) -> bool {
        self.enabled && (self.key_id.is_empty() || self.key_id == key_id)
    }

    /// Whether the rule matches, without a trace (stops at the first condition that fails).
    pub fn matches(&self, evaluation: &Evaluation<'_>) -> bool {
        evaluation.all_hold(&self.conditions, &self.traced)
    }

    /// Evaluates the rule's conditions into a fresh trace entry, its conditions appended to
    /// `conditions` (a trace's [`Trace::conditions`](super::trace::Trace::conditions)).
    pub fn check(
        &self,
        evaluation: &Evaluation<'_>,
        conditions: &mut Vec<ConditionTrace>,
    ) -> (bool, RuleTrace) {
        let start = condition_position(conditions);
        let matched = evaluation.conditions(&self.conditions, &self.traced, conditions);
        (
            matched,
            RuleTrace {
                id: self.id,
                name: Arc::clone(&self.name),
                priority: self.priority,
                matched,
                conditions: start..condition_position(conditions),
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

    /// [`Rule::check`] with the conditions it traced.
    fn checked(r: &Rule, e: &Evaluation<'_>) -> (bool, RuleTrace, Vec<ConditionTrace>) {
        let mut conditions = Vec::new();
        let (held, trace) = r.check(e, &mut conditions);
        (held, trace, conditions)
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
        fn task(&self) -> Option<&str> {
            Some("documentation")
        }
        fn requested_model(&self) -> &str {
            "gpt-4o-mini"
        }
        fn header(&self, name: &str) -> Option<&str> {
            (name == "x-team").then_some("ml")
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
            let (held, trace, conditions) = checked(&r, &Evaluation::new(&F));
            assert_eq!(held, want, "{m}");
            assert_eq!(
                r.matches(&Evaluation::new(&F)),
                want,
                "{m}: the untraced check"
            );
            assert_eq!(conditions.len(), r.conditions.len(), "{m}");
            assert_eq!(trace.matched, want);
        }
    }

    /// Facts with a prompt and headers, which count the headers asked for.
    #[derive(Default)]
    struct Request {
        prompt: String,
        headers: Vec<(&'static str, &'static str)>,
        asked: std::cell::RefCell<Vec<String>>,
    }
    impl Facts for Request {
        fn prompt_lower(&self) -> &str {
            &self.prompt
        }
        fn metadata(&self, _: &str) -> Option<&str> {
            None
        }
        fn mode(&self) -> Option<Mode> {
            None
        }
        fn task(&self) -> Option<&str> {
            None
        }
        fn requested_model(&self) -> &str {
            "m"
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.asked.borrow_mut().push(name.to_string());
            self.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        }
    }

    /// In a set, each distinct header name is read once per evaluation, however many rules
    /// ask for it; verdicts and traces are those of the rules checked one by one.
    #[test]
    fn rule_set_reads_each_header_once() {
        let matches = [
            r#"{"headers": {"x-team": "ml"}}"#,
            r#"{"headers": {"X-Team": "ops"}}"#,
            r#"{"headers": {"x-project": "p1", "x-team": "ml"}}"#,
            r#"{"headers": {"x-absent": "a"}}"#,
            r#"{"contains": "x", "headers": {"x-project": "p2"}}"#,
            r#"{"headers": {"x-team": "ml", "x-absent": "b"}}"#,
        ];
        let rules: Vec<Rule> = matches
            .iter()
            .map(|m| compile(&rule(m, r#"{"set_mode": "cost"}"#)).unwrap())
            .collect();
        let set = RuleSet::new(rules);
        assert_eq!(set.header_names, ["x-team", "x-project", "x-absent"]);
        for values in [
            vec![("x-team", "ml"), ("x-project", "p1")],
            vec![("x-team", "ops"), ("x-project", "p2")],
            vec![],
        ] {
            let facts = || Request {
                headers: values.clone(),
                ..Request::default()
            };
            let (in_set, alone) = (facts(), facts());
            let one = Evaluation::of_rules(&in_set, &set);
            for r in set.rules() {
                let each = Evaluation::new(&alone);
                let each = checked(r, &each);
                assert_eq!(checked(r, &one), each, "{values:?}");
                assert_eq!(r.matches(&one), each.0, "{values:?}");
                assert_eq!(r.matches(&Evaluation::new(&alone)), each.0, "{values:?}");
            }
            assert_eq!(*in_set.asked.borrow(), ["x-team", "x-project", "x-absent"]);
        }
    }

    /// The set's automaton finds what a scan per string finds, including overlapping strings
    /// and strings shared by rules, and keeps the list order of the hit the trace shows; the
    /// traces are identical. Past [`MAX_NEEDLE_BYTES`] the set falls back to the scan.
    #[test]
    fn rule_set_contains_matches_the_scan_per_string() {
        let lists = [
            r#"["abc", "b", "ab"]"#,
            r#"["b", "abc"]"#,
            r#"["zz", "c d", "ü"]"#,
            r#"["abcd", "bcd"]"#,
            r#"["naïve", "xyz"]"#,
        ];
        let compiled: Vec<Rule> = lists
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut r = rule(
                    &format!(r#"{{"contains": {l}}}"#),
                    r#"{"set_mode": "cost"}"#,
                );
                r.id = i64::try_from(i).unwrap();
                compile(&r).unwrap()
            })
            .collect();
        let huge: Vec<Rule> = (0..80)
            .map(|i| {
                let needle = format!("{i}-{}", "x".repeat(1000));
                compile(&rule(
                    &format!(r#"{{"contains": ["{needle}", "ab"]}}"#),
                    r#"{"set_mode": "cost"}"#,
                ))
                .unwrap()
            })
            .collect();
        for rules in [compiled, huge] {
            let set = RuleSet::new(rules.clone());
            assert_eq!(set.needles.is_none(), rules.len() == 80);
            for prompt in ["", "abc d", "xbcd", "b", "a naïve ü", "zzabcd", "c dab"] {
                let facts = Request {
                    prompt: prompt.to_string(),
                    ..Request::default()
                };
                let (one, each) = (Evaluation::of_rules(&facts, &set), Evaluation::new(&facts));
                for r in set.rules() {
                    let mut plain = Vec::new();
                    let held = evaluate(&r.conditions, &facts, &mut plain);
                    let (one_held, one_trace, one_conditions) = checked(r, &one);
                    let (_, each_trace, _) = checked(r, &each);
                    assert_eq!((one_held, one_trace), (held, each_trace), "{prompt:?}");
                    assert_eq!(one_conditions, plain, "{prompt:?}");
                }
            }
        }
    }
}
