//! The rule trace: why a request went where it went. Returned in `x-tokenrouter-rule-trace`
//! (JSON, ASCII-only, bounded) and stored with the request log row.

use serde_json::{json, Map, Value};

/// Longest trace sent in a header; a longer one loses its candidate list, then its conditions.
pub const MAX_HEADER_BYTES: usize = 4096;

/// One condition as it was checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionTrace {
    pub condition: &'static str,
    pub expected: Value,
    pub actual: Value,
    pub matched: bool,
}

/// One routing rule as it was evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleTrace {
    pub id: i64,
    pub name: String,
    pub priority: i32,
    pub matched: bool,
    pub conditions: Vec<ConditionTrace>,
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
    pub rules: Vec<RuleTrace>,
    pub steps: Vec<Step>,
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

    fn to_value(&self, with_conditions: bool, with_candidates: bool) -> Value {
        let mut out = Vec::with_capacity(self.rules.len() + self.steps.len());
        for r in &self.rules {
            let mut o = Map::new();
            o.insert("rule".into(), Value::from(r.name.clone()));
            o.insert("id".into(), Value::from(r.id));
            o.insert("priority".into(), Value::from(r.priority));
            o.insert("matched".into(), Value::from(r.matched));
            if with_conditions {
                let conditions: Vec<Value> = r
                    .conditions
                    .iter()
                    .map(|c| {
                        json!({
                            "condition": c.condition,
                            "expected": c.expected,
                            "actual": c.actual,
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
            let mut o = Map::new();
            o.insert("step".into(), Value::from(s.step));
            for (k, v) in &s.detail {
                o.insert(k.clone(), v.clone());
            }
            out.push(Value::Object(o));
        }
        Value::Array(out)
    }

    /// The full trace as JSON (for the log row and the preview).
    pub fn to_json(&self) -> String {
        ascii_json(&self.to_value(true, true))
    }

    /// The trace for `x-tokenrouter-rule-trace`: ASCII JSON of at most [`MAX_HEADER_BYTES`],
    /// shedding detail (candidates, then conditions) to fit; `None` when there is nothing to say.
    pub fn header_value(&self) -> Option<String> {
        if self.rules.is_empty() && self.steps.is_empty() {
            return None;
        }
        for (conditions, candidates) in [(true, true), (true, false), (false, false)] {
            let s = ascii_json(&self.to_value(conditions, candidates));
            if s.len() <= MAX_HEADER_BYTES {
                return Some(s);
            }
        }
        let s = ascii_json(&self.to_value(false, false));
        let mut cut = MAX_HEADER_BYTES.saturating_sub(16).min(s.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        Some(format!("{}...truncated", &s[..cut]))
    }
}

/// JSON with every non-ASCII character escaped as `\uXXXX` (header values stay ASCII).
pub fn ascii_json(v: &Value) -> String {
    let s = v.to_string();
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

    #[test]
    fn header_is_ascii_json_and_bounded() {
        let mut t = Trace::default();
        t.rules.push(RuleTrace {
            id: 7,
            name: "Coding Tasks → OpenAI".into(),
            priority: 100,
            matched: true,
            conditions: vec![ConditionTrace {
                condition: "task",
                expected: Value::from("coding"),
                actual: Value::from("coding"),
                matched: true,
            }],
            applied: vec!["set_provider=openai".into()],
            ignored: vec![],
        });
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
}
