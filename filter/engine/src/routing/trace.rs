//! The rule trace: why a request went where it went. Returned in `x-tokenrouter-rule-trace`
//! (JSON, ASCII-only, bounded) and stored with the request log row.

use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

#[cfg(test)]
use serde_json::json;
use serde_json::{Map, Value};

use super::rules::{Rule, RuleSet};

/// Longest trace sent in a header; a longer one loses its candidate list, then its conditions.
pub const MAX_HEADER_BYTES: usize = 4096;

/// Up to this many rules the log row keeps the full trace; above it, rules that did not match
/// are listed by id only (see [`Trace::to_log_json`]).
pub const LOG_FULL_TRACE_RULES: usize = 32;

/// One condition as it was checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionTrace {
    pub condition: &'static str,
    /// What the condition expects, as compact JSON: serialized once by the compiled rule and
    /// shared with it.
    pub expected_json: Arc<str>,
    /// Shared with the rule (what a request lacking everything shows) or the request.
    pub actual: Arc<Value>,
    pub matched: bool,
}

/// Where the next condition pushed onto a trace's conditions goes (a bound of a
/// [`RuleTrace::conditions`] range).
pub(crate) fn condition_position(conditions: &[ConditionTrace]) -> u32 {
    u32::try_from(conditions.len()).unwrap_or(u32::MAX)
}

/// One routing rule as it was evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleTrace {
    pub id: i64,
    pub name: Arc<str>,
    pub priority: i32,
    pub matched: bool,
    /// Where its conditions are in [`Trace::conditions`] ([`Trace::conditions_of`]).
    pub conditions: Range<u32>,
    /// Actions that took effect, e.g. `set_provider=openai`.
    pub applied: Vec<String>,
    /// Actions that did not, with the reason, e.g. `set_mode=cost (a higher rule set it)`.
    pub ignored: Vec<String>,
}

/// A step of the decision after the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub step: &'static str,
    pub detail: Map<String, Value>,
}

/// Everything that decided one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// The rules traced with their conditions (every rule, unless some were passed over).
    pub rules: Vec<RuleTrace>,
    /// The conditions of [`Trace::rules`], rule after rule, in one vector rather than one per
    /// rule (an allocation fewer per rule and request).
    pub conditions: Vec<ConditionTrace>,
    pub steps: Vec<Step>,
    /// Some rules that did not match carry no conditions: the edge's decision (above
    /// [`LOG_FULL_TRACE_RULES`] rules, where neither the log row nor the header shows an
    /// unmatched rule's conditions) stops at a rule's first failing condition. The header then
    /// goes straight to its condition-less form; the preview always traces every condition.
    pub conditions_skipped: bool,
    /// Where the edge's decision passed over rules: they are listed by their position in the
    /// snapshot's rules, not by an entry each.
    pub passed_over: Option<PassedOver>,
}

/// The rules a decision passed over at their first failing condition, by position in the
/// snapshot's rule list (shared, not copied), and where the traced rules stand among them. A
/// 1 000-rule decision then builds, compares (the edge keeps its last trace) and drops one
/// `u32` per rule instead of a [`RuleTrace`] with its name.
#[derive(Clone, Debug)]
pub struct PassedOver {
    set: Arc<RuleSet>,
    /// Positions in `set` of the rules of [`Trace::rules`], in their order.
    traced: Vec<u32>,
    /// Positions in `set` of the rules passed over, in order.
    passed: Vec<u32>,
}

impl PassedOver {
    pub fn new(set: Arc<RuleSet>, capacity: usize) -> PassedOver {
        PassedOver {
            set,
            traced: Vec::new(),
            passed: Vec::with_capacity(capacity),
        }
    }

    /// The rule at `at` in the set is the next entry of [`Trace::rules`].
    pub fn traced(&mut self, at: u32) {
        self.traced.push(at);
    }

    /// The rule at `at` in the set did not match and is listed without conditions.
    pub fn passed(&mut self, at: u32) {
        self.passed.push(at);
    }
}

/// Equal when they list the same positions of the same rule set (the same snapshot's).
impl PartialEq for PassedOver {
    fn eq(&self, other: &PassedOver) -> bool {
        Arc::ptr_eq(&self.set, &other.set)
            && self.traced == other.traced
            && self.passed == other.passed
    }
}

/// A rule of a trace, in evaluation order.
#[derive(Clone, Copy)]
enum Entry<'a> {
    Traced(&'a RuleTrace),
    /// Passed over: did not match, no conditions listed.
    Passed(&'a Rule),
}

impl Entry<'_> {
    fn matched(&self) -> bool {
        match self {
            Entry::Traced(r) => r.matched,
            Entry::Passed(_) => false,
        }
    }

    fn id(&self) -> i64 {
        match self {
            Entry::Traced(r) => r.id,
            Entry::Passed(r) => r.id,
        }
    }
}

/// The traced and passed-over rules merged back into evaluation order (positions in the set
/// rise with it).
struct Entries<'a> {
    traced: &'a [RuleTrace],
    over: Option<&'a PassedOver>,
    next_traced: usize,
    next_passed: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        let passed_first = self.over.and_then(|over| {
            let passed_at = *over.passed.get(self.next_passed)?;
            let before_traced = over
                .traced
                .get(self.next_traced)
                .is_none_or(|&traced_at| passed_at < traced_at);
            before_traced.then_some((over, passed_at))
        });
        match passed_first {
            Some((over, at)) => {
                self.next_passed += 1;
                over.set.rules().get(at as usize).map(Entry::Passed)
            }
            None => {
                let r = self.traced.get(self.next_traced)?;
                self.next_traced += 1;
                Some(Entry::Traced(r))
            }
        }
    }
}

impl Trace {
    pub fn step(&mut self, step: &'static str, detail: Value) {
        let detail = match detail {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        self.steps.push(Step { step, detail });
    }

    /// The conditions of `rule`, one of [`Trace::rules`].
    pub fn conditions_of(&self, rule: &RuleTrace) -> &[ConditionTrace] {
        let Range { start, end } = rule.conditions;
        self.conditions
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Adds a traced rule with its conditions (what [`Rule::check`] does in a decision).
    #[cfg(test)]
    pub(crate) fn push_rule(&mut self, mut rule: RuleTrace, conditions: Vec<ConditionTrace>) {
        let start = condition_position(&self.conditions);
        self.conditions.extend(conditions);
        rule.conditions = start..condition_position(&self.conditions);
        self.rules.push(rule);
    }

    /// How many rules the trace lists, traced or passed over.
    pub fn rule_count(&self) -> usize {
        self.rules.len() + self.passed_over.as_ref().map_or(0, |p| p.passed.len())
    }

    /// Every rule listed, in evaluation order.
    fn entries(&self) -> Entries<'_> {
        Entries {
            traced: &self.rules,
            over: self.passed_over.as_ref(),
            next_traced: 0,
            next_passed: 0,
        }
    }

    /// Every rule listed, in evaluation order, a passed-over one as the entry it stands for
    /// (no conditions): what the tests compare.
    #[cfg(test)]
    pub(crate) fn listed_rules(&self) -> Vec<RuleTrace> {
        self.entries()
            .map(|e| match e {
                Entry::Traced(r) => r.clone(),
                Entry::Passed(r) => passed_entry(r),
            })
            .collect()
    }

    /// The trace as a JSON value: rules (with their conditions when `with_conditions`), then
    /// steps (without `candidates` unless `with_candidates`). Only the tests use it, as the
    /// reference [`View`] must serialize exactly like.
    #[cfg(test)]
    fn to_value(&self, with_conditions: bool, with_candidates: bool) -> Value {
        let mut out = Vec::with_capacity(self.rule_count() + self.steps.len());
        for r in &self.listed_rules() {
            let mut o = Map::new();
            o.insert("rule".into(), Value::from(&*r.name));
            o.insert("id".into(), Value::from(r.id));
            o.insert("priority".into(), Value::from(r.priority));
            o.insert("matched".into(), Value::from(r.matched));
            if with_conditions {
                let conditions: Vec<Value> = self
                    .conditions_of(r)
                    .iter()
                    .map(|c| {
                        json!({
                            "condition": c.condition,
                            "expected": serde_json::from_str::<Value>(&c.expected_json)
                                .unwrap_or_default(),
                            "actual": *c.actual,
                            "matched": c.matched,
                        })
                    })
                    .collect();
                o.insert("conditions".into(), Value::from(conditions));
            }
            if !r.applied.is_empty() {
                o.insert("applied".into(), Value::from(r.applied.clone()));
            }
            if !r.ignored.is_empty() {
                o.insert("ignored".into(), Value::from(r.ignored.clone()));
            }
            out.push(Value::Object(o));
        }
        for s in &self.steps {
            if !with_candidates && s.step == "candidates" {
                continue;
            }
            out.push(Value::Object(s.object()));
        }
        Value::Array(out)
    }

    /// The trace serialized (not yet ASCII-escaped) in `form`: `Ok` with the whole JSON, or
    /// `Err` with a prefix longer than `limit` when it does not fit.
    ///
    /// Written by hand rather than through serde (the edge does it on every request), with
    /// each condition's `expected` pre-serialized by its rule. Keys come in a
    /// `serde_json::Map`'s (sorted) order, so the JSON is byte for byte what the `Value` form
    /// gives (a test checks it). Stops after the first element that takes it past `limit`:
    /// `Err` with that prefix, which ends on an element's boundary.
    fn write(&self, form: Form, limit: usize) -> Result<String, String> {
        let mut out = Vec::with_capacity(limit.min(MAX_HEADER_BYTES) + 64);
        out.push(b'[');
        let mut first = true;
        let mut next = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        let full = |out: Vec<u8>| String::from_utf8(out).unwrap_or_default();
        for entry in self
            .entries()
            .filter(|e| !form.unmatched_as_ids || e.matched())
        {
            next(&mut out);
            match entry {
                Entry::Traced(rule) => {
                    let conditions = form.with_conditions.then(|| self.conditions_of(rule));
                    write_rule(&mut out, rule, conditions);
                }
                Entry::Passed(rule) => write_passed(&mut out, rule, form.with_conditions),
            }
            if out.len() > limit {
                return Err(full(out));
            }
        }
        if form.unmatched_as_ids {
            let mut ids = self.entries().filter(|e| !e.matched()).map(|e| e.id());
            if let Some(first_id) = ids.next() {
                next(&mut out);
                out.extend_from_slice(b"{\"rule_ids\":[");
                write_int(&mut out, first_id);
                for id in ids {
                    out.push(b',');
                    write_int(&mut out, id);
                }
                out.extend_from_slice(b"],\"step\":\"not_matched\"}");
            }
        }
        for step in &self.steps {
            if !form.with_candidates && step.step == "candidates" {
                continue;
            }
            next(&mut out);
            if serde_json::to_writer(&mut out, &step.object()).is_err() {
                out.extend_from_slice(b"{}");
            }
            if out.len() > limit {
                return Err(full(out));
            }
        }
        out.push(b']');
        if out.len() > limit {
            return Err(full(out));
        }
        Ok(full(out))
    }

    /// The full trace as JSON (for the preview, the log row of a small rule set, and the header
    /// when it fits).
    pub fn to_json(&self) -> String {
        match self.write(Form::full(true, true), usize::MAX) {
            Ok(s) | Err(s) => ascii(s),
        }
    }

    /// The trace for the request log row: the full trace up to [`LOG_FULL_TRACE_RULES`] rules;
    /// above that, matched rules in full and one `{"step":"not_matched","rule_ids":[…]}` entry
    /// for the others (their conditions are in the rules, and a preview of the same request
    /// shows every condition). This keeps a 1,000-rule trace in the log at a few KB instead of
    /// hundreds.
    pub fn to_log_json(&self) -> String {
        if self.rule_count() <= LOG_FULL_TRACE_RULES {
            return self.to_json();
        }
        let form = Form {
            with_conditions: true,
            with_candidates: true,
            unmatched_as_ids: true,
        };
        match self.write(form, usize::MAX) {
            Ok(s) | Err(s) => ascii(s),
        }
    }

    /// What the edge needs of every routed request: the log row's JSON
    /// ([`Trace::to_log_json`]) and the header ([`Trace::header_value`]). When the log row holds
    /// the full trace and it fits the header, the header is that same text, serialized once.
    pub fn render(&self) -> (String, Option<String>) {
        let log = self.to_log_json();
        let header = match self.header_beside(&log) {
            HeaderText::Log => Some(log.clone()),
            HeaderText::Own(header) => header,
        };
        (log, header)
    }

    /// [`Trace::render`] as shared texts: when the header is the log row's text, both are the
    /// same `Rc` (no copy), for an edge that keeps them beyond the request.
    pub fn render_shared(&self) -> (Rc<str>, Option<Rc<str>>) {
        let log: Rc<str> = Rc::from(self.to_log_json());
        let header = match self.header_beside(&log) {
            HeaderText::Log => Some(Rc::clone(&log)),
            HeaderText::Own(header) => header.map(Rc::from),
        };
        (log, header)
    }

    /// The header given the log row's text `log`: that same text when the log row holds the
    /// full trace and it fits, else its own ([`Trace::header_value`]).
    fn header_beside(&self, log: &str) -> HeaderText {
        let full_in_log = self.rule_count() <= LOG_FULL_TRACE_RULES && !self.conditions_skipped;
        if self.rule_count() == 0 && self.steps.is_empty() {
            HeaderText::Own(None)
        } else if full_in_log && log.len() <= MAX_HEADER_BYTES {
            HeaderText::Log
        } else {
            HeaderText::Own(self.header_value())
        }
    }

    /// The trace for `x-tokenrouter-rule-trace`: ASCII JSON of at most [`MAX_HEADER_BYTES`],
    /// shedding detail (candidates, then conditions) to fit; `None` when there is nothing to say.
    ///
    /// Each form is serialized only until it is known not to fit, so the cost is bounded by the
    /// header's size, not by the number of rules.
    pub fn header_value(&self) -> Option<String> {
        if self.rule_count() == 0 && self.steps.is_empty() {
            return None;
        }
        let mut longest = String::new();
        let forms: &[(bool, bool)] = if self.conditions_skipped {
            &[(false, false)]
        } else {
            &[(true, true), (true, false), (false, false)]
        };
        for &(conditions, candidates) in forms {
            // ASCII escaping only lengthens, so a raw prefix past the limit cannot fit.
            let s = match self.write(Form::full(conditions, candidates), MAX_HEADER_BYTES) {
                Ok(s) | Err(s) => ascii(s),
            };
            if s.len() <= MAX_HEADER_BYTES {
                return Some(s);
            }
            longest = s;
        }
        // `longest` starts like the whole condition-less trace and is longer than the limit.
        let cut = MAX_HEADER_BYTES.saturating_sub(16).min(longest.len());
        Some(format!("{}...truncated", &longest[..cut]))
    }
}

impl Step {
    /// The step as one JSON object: `step` and its details.
    fn object(&self) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("step".into(), Value::from(self.step));
        for (k, v) in &self.detail {
            o.insert(k.clone(), v.clone());
        }
        o
    }
}

/// Where the header's text comes from ([`Trace::header_beside`]).
enum HeaderText {
    /// The log row's text.
    Log,
    /// Its own (`None`: no header).
    Own(Option<String>),
}

/// What a serialized trace holds.
#[derive(Clone, Copy)]
struct Form {
    with_conditions: bool,
    /// The `candidates` step (the longest; the header sheds it first).
    with_candidates: bool,
    /// Rules that did not match go into one `not_matched` entry, by id.
    unmatched_as_ids: bool,
}

impl Form {
    /// Every rule listed.
    fn full(with_conditions: bool, with_candidates: bool) -> Form {
        Form {
            with_conditions,
            with_candidates,
            unmatched_as_ids: false,
        }
    }
}

/// One rule (with `conditions`, its own, when given), keys in sorted order.
fn write_rule(out: &mut Vec<u8>, r: &RuleTrace, conditions: Option<&[ConditionTrace]>) {
    out.push(b'{');
    if !r.applied.is_empty() {
        out.extend_from_slice(b"\"applied\":");
        write_strings(out, &r.applied);
        out.push(b',');
    }
    if let Some(conditions) = conditions {
        out.extend_from_slice(b"\"conditions\":[");
        for (i, c) in conditions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"actual\":");
            write_value(out, &c.actual);
            out.extend_from_slice(b",\"condition\":");
            write_str(out, c.condition);
            out.extend_from_slice(b",\"expected\":");
            out.extend_from_slice(c.expected_json.as_bytes());
            out.extend_from_slice(if c.matched {
                b",\"matched\":true}"
            } else {
                b",\"matched\":false}"
            });
        }
        out.extend_from_slice(b"],");
    }
    out.extend_from_slice(b"\"id\":");
    write_int(out, r.id);
    if !r.ignored.is_empty() {
        out.extend_from_slice(b",\"ignored\":");
        write_strings(out, &r.ignored);
    }
    out.extend_from_slice(if r.matched {
        b",\"matched\":true,\"priority\":"
    } else {
        b",\"matched\":false,\"priority\":"
    });
    write_int(out, r.priority);
    out.extend_from_slice(b",\"rule\":");
    write_str(out, &r.name);
    out.push(b'}');
}

/// A passed-over rule as [`write_rule`] writes its entry ([`passed_entry`]).
fn write_passed(out: &mut Vec<u8>, r: &Rule, with_conditions: bool) {
    out.push(b'{');
    if with_conditions {
        out.extend_from_slice(b"\"conditions\":[],");
    }
    out.extend_from_slice(b"\"id\":");
    write_int(out, r.id);
    out.extend_from_slice(b",\"matched\":false,\"priority\":");
    write_int(out, r.priority);
    out.extend_from_slice(b",\"rule\":");
    write_str(out, &r.name);
    out.push(b'}');
}

/// The entry a passed-over rule stands for.
#[cfg(test)]
fn passed_entry(r: &Rule) -> RuleTrace {
    RuleTrace {
        id: r.id,
        name: Arc::clone(&r.name),
        priority: r.priority,
        matched: false,
        conditions: 0..0,
        applied: Vec::new(),
        ignored: Vec::new(),
    }
}

fn write_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn write_strings(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, s);
    }
    out.push(b']');
}

/// A JSON string; text needing no escape is copied as it is.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::String(s) => write_str(out, s),
        other => {
            if serde_json::to_writer(&mut *out, other).is_err() {
                out.extend_from_slice(b"null");
            }
        }
    }
}

/// JSON with every non-ASCII character escaped as `\uXXXX` (header values stay ASCII).
pub fn ascii_json(v: &Value) -> String {
    ascii(v.to_string())
}

/// `s` with every non-ASCII character escaped as `\uXXXX`.
fn ascii(s: String) -> String {
    if s.is_ascii() {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A trace of these rules with their conditions.
    fn traced(rules: impl IntoIterator<Item = (RuleTrace, Vec<ConditionTrace>)>) -> Trace {
        let mut t = Trace::default();
        for (rule, conditions) in rules {
            t.push_rule(rule, conditions);
        }
        t
    }

    #[test]
    fn header_is_ascii_json_and_bounded() {
        let mut t = Trace::default();
        let rule = RuleTrace {
            id: 7,
            name: "Coding Tasks → OpenAI".into(),
            priority: 100,
            matched: true,
            conditions: 0..0,
            applied: vec!["set_provider=openai".into()],
            ignored: vec![],
        };
        let condition = ConditionTrace {
            condition: "task",
            expected_json: Arc::from(r#""coding""#),
            actual: Arc::new(Value::from("coding")),
            matched: true,
        };
        t.push_rule(rule, vec![condition]);
        t.step("mode", json!({"mode": "balance", "source": "model"}));
        let h = t.header_value().unwrap();
        assert!(h.is_ascii(), "{h}");
        let back: Value = serde_json::from_str(&h).unwrap();
        assert_eq!(back[0]["rule"], "Coding Tasks → OpenAI");
        assert_eq!(back[0]["conditions"][0]["condition"], "task");
        assert_eq!(back[1]["step"], "mode");

        for i in 0..200 {
            t.step(
                "candidates",
                json!({"ranked": vec![format!("p/model-{i}"); 20]}),
            );
        }
        let h = t.header_value().unwrap();
        assert!(h.len() <= MAX_HEADER_BYTES, "{}", h.len());
        assert!(serde_json::from_str::<Value>(&h).is_ok());
        assert!(Trace::default().header_value().is_none());
    }

    /// The previous implementation of the two outputs, from the `Value` form.
    fn reference(t: &Trace) -> (String, Option<String>) {
        let forms: &[(bool, bool)] = if t.conditions_skipped {
            &[(false, false)]
        } else {
            &[(true, true), (true, false), (false, false)]
        };
        let header = if t.rules.is_empty() && t.steps.is_empty() {
            None
        } else {
            let mut found = None;
            for &(conditions, candidates) in forms {
                let s = ascii_json(&t.to_value(conditions, candidates));
                if s.len() <= MAX_HEADER_BYTES {
                    found = Some(s);
                    break;
                }
            }
            found.or_else(|| {
                let s = ascii_json(&t.to_value(false, false));
                let cut = MAX_HEADER_BYTES.saturating_sub(16).min(s.len());
                Some(format!("{}...truncated", &s[..cut]))
            })
        };
        (ascii_json(&t.to_value(true, true)), header)
    }

    /// The log row's form from the `Value` form: the full trace up to the threshold, else
    /// matched rules in full, one `not_matched` entry, then the steps.
    fn reference_log(t: &Trace) -> String {
        let full = t.to_value(true, true);
        if t.rules.len() <= LOG_FULL_TRACE_RULES {
            return ascii_json(&full);
        }
        let entries = full.as_array().cloned().unwrap_or_default();
        let (rules, steps) = entries.split_at(t.rules.len());
        let mut out: Vec<Value> = rules
            .iter()
            .zip(&t.rules)
            .filter(|(_, r)| r.matched)
            .map(|(v, _)| v.clone())
            .collect();
        let ids: Vec<i64> = t
            .rules
            .iter()
            .filter(|r| !r.matched)
            .map(|r| r.id)
            .collect();
        if !ids.is_empty() {
            out.push(json!({"rule_ids": ids, "step": "not_matched"}));
        }
        out.extend(steps.iter().cloned());
        ascii_json(&Value::Array(out))
    }

    /// The serializer writes what the `Value` form gives, byte for byte, at every size (each
    /// header form fitting, and the cut), with non-ASCII names and values.
    #[test]
    fn serialized_trace_is_the_value_form() {
        let rule = |i: usize| -> (RuleTrace, Vec<ConditionTrace>) {
            let conditions = vec![
                ConditionTrace {
                    condition: "contains",
                    expected_json: Arc::from(json!(["naïve", format!("ticket-{i}")]).to_string()),
                    actual: Arc::new(Value::Null),
                    matched: false,
                },
                ConditionTrace {
                    condition: "model",
                    expected_json: Arc::from(r#""gpt-4*""#),
                    actual: Arc::new(json!(format!("m\"{i}\\\n\u{1}"))),
                    matched: i.is_multiple_of(5),
                },
                ConditionTrace {
                    condition: "task",
                    expected_json: Arc::from(json!({"n": 1.5, "b": true}).to_string()),
                    actual: Arc::new(if i.is_multiple_of(2) {
                        json!(true)
                    } else {
                        json!([1, "x", null])
                    }),
                    matched: false,
                },
                ConditionTrace {
                    condition: "headers",
                    expected_json: Arc::from(json!({"x-team": "ml", "x-b": "ü"}).to_string()),
                    actual: Arc::new(json!({"x-team": null, "x-b": "ü"})),
                    matched: false,
                },
            ];
            let trace = RuleTrace {
                id: i as i64,
                // Names and values that need escaping take the serializer's slow path.
                name: if i % 4 == 1 {
                    format!("rule \"{i}\" \\ tab\t").into()
                } else if i % 4 == 3 {
                    format!("C:\\rules\\{i}").into()
                } else {
                    format!("règle {i} → é").into()
                },
                priority: 100 - i as i32,
                matched: i.is_multiple_of(3),
                conditions: 0..0,
                applied: if i.is_multiple_of(3) {
                    vec![format!("set_mode=cost {i}")]
                } else {
                    vec![]
                },
                ignored: if i.is_multiple_of(6) {
                    vec!["set_model=x (a higher rule set it)".into()]
                } else {
                    vec![]
                },
            };
            (trace, conditions)
        };
        for n in [0, 1, 2, 5, 8, 12, 20, 40, 60, 100, 1000] {
            let mut t = traced((0..n).map(rule));
            t.step("mode", json!({"mode": "balance", "source": "model"}));
            if n % 2 == 0 {
                t.step(
                    "candidates",
                    json!({"eligible": n, "ranked": vec!["p/ü"; n.min(30)]}),
                );
            }
            t.step(
                "route",
                json!({"attempts": ["bench/gpt-4o-mini"], "cluster": "c", "step": "x"}),
            );
            assert_eq!((t.to_json(), t.header_value()), reference(&t), "{n} rules");
            assert_eq!(t.to_log_json(), reference_log(&t), "{n} rules");
            // `render` serializes once where it can and gives the same two texts.
            assert_eq!(t.render(), (t.to_log_json(), t.header_value()), "{n} rules");
            let (log, header) = t.render_shared();
            assert_eq!((log.to_string(), header.map(|h| h.to_string())), t.render());
            t.conditions_skipped = true;
            assert_eq!(
                t.header_value(),
                reference(&t).1,
                "{n} rules, conditions skipped"
            );
            assert_eq!(t.render(), (t.to_log_json(), t.header_value()), "{n} rules");
        }
        assert_eq!(Trace::default().to_json(), "[]");
        assert_eq!(Trace::default().render(), ("[]".to_string(), None));
    }
    #[test]
    fn log_form_lists_unmatched_rules_by_id_above_the_threshold() {
        let rule = |id: i64, matched: bool| {
            let trace = RuleTrace {
                id,
                name: Arc::from(format!("r{id}")),
                priority: 0,
                matched,
                conditions: 0..0,
                applied: Vec::new(),
                ignored: Vec::new(),
            };
            let condition = ConditionTrace {
                condition: "contains",
                expected_json: Arc::from(r#"["x"]"#),
                actual: Arc::new(json!(false)),
                matched,
            };
            (trace, vec![condition])
        };
        let mut small = traced((0..3).map(|i| rule(i, i == 1)));
        small.step("provider", json!({"provider": "openai"}));
        assert_eq!(small.to_log_json(), small.to_json());

        let mut big = traced((0..1000).map(|i| rule(i, i == 7)));
        big.step("provider", json!({"provider": "openai"}));
        let log: Value = serde_json::from_str(&big.to_log_json()).unwrap_or_default();
        let entries = log.as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["id"], 7);
        assert_eq!(entries[0]["conditions"][0]["condition"], "contains");
        assert_eq!(entries[1]["step"], "not_matched");
        assert_eq!(entries[1]["rule_ids"].as_array().map(Vec::len), Some(999));
        assert_eq!(entries[2]["step"], "provider");
        assert!(big.to_log_json().len() < big.to_json().len() / 10);
    }
}
