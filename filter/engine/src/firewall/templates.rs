//! Ready-made rules a user enables by name (`tokenrouter firewall enable-template NAME`).
//!
//! Patterns are the seeds' PII patterns. A regular expression cannot tell a card number from any
//! other sixteen digits, so `credit_card` also runs the Luhn checksum on every match
//! ([`super::Check::Luhn`]).

use tokenrouter_proto::config::v1 as pb;

use super::{Action, Check, MatchType, Scope};

/// A rule recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    /// What the user types: `ssn`, `credit_card`, …
    pub name: &'static str,
    /// Name of the rule it creates.
    pub rule_name: &'static str,
    pub description: &'static str,
    pub match_type: MatchType,
    pub pattern: &'static str,
    /// Defaults; the user may override scope, action and priority when enabling.
    pub scope: Scope,
    pub action: Action,
    pub priority: i32,
    pub replacement: &'static str,
    pub check: Check,
}

impl Template {
    /// The rule this template creates, with the given overrides.
    pub fn rule(
        &self,
        scope: Option<Scope>,
        action: Option<Action>,
        priority: Option<i32>,
    ) -> pb::FirewallRule {
        pb::FirewallRule {
            id: 0,
            name: self.rule_name.to_string(),
            priority: priority.unwrap_or(self.priority),
            enabled: true,
            scope: scope.unwrap_or(self.scope).as_str().to_string(),
            r#type: self.match_type.as_str().to_string(),
            pattern: self.pattern.to_string(),
            action: action.unwrap_or(self.action).as_str().to_string(),
            replacement: self.replacement.to_string(),
            key_id: String::new(),
            workspace_id: String::new(),
            max_match_chars: 0,
            check: self.check.as_str().to_string(),
        }
    }
}

pub const TEMPLATES: &[Template] = &[
    Template {
        name: "ssn",
        rule_name: "US Social Security numbers",
        description: "US Social Security numbers such as 123-45-6789",
        match_type: MatchType::Regex,
        pattern: r"\d{3}-\d{2}-\d{4}",
        scope: Scope::Prompt,
        action: Action::Block,
        priority: 100,
        replacement: "[SSN_REDACTED]",
        check: Check::None,
    },
    Template {
        name: "credit_card",
        rule_name: "Payment card numbers",
        description: "16-digit card numbers (spaces or dashes allowed) that pass the Luhn check",
        match_type: MatchType::Regex,
        pattern: r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}",
        scope: Scope::Prompt,
        action: Action::Block,
        priority: 100,
        replacement: "[CARD_REDACTED]",
        check: Check::Luhn,
    },
    Template {
        name: "email",
        rule_name: "Email addresses",
        description: "Email addresses",
        match_type: MatchType::Regex,
        pattern: r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
        scope: Scope::Response,
        action: Action::Mask,
        priority: 80,
        replacement: "[EMAIL_REDACTED]",
        check: Check::None,
    },
    Template {
        name: "phone",
        rule_name: "Phone numbers",
        description: "North American phone numbers such as +1 (555) 123-4567",
        match_type: MatchType::Regex,
        pattern: r"\+?1?\s?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}",
        scope: Scope::Prompt,
        action: Action::Mask,
        priority: 70,
        replacement: "[PHONE_REDACTED]",
        check: Check::None,
    },
    Template {
        name: "openai_key",
        rule_name: "OpenAI API keys",
        description: "OpenAI-style secret keys (sk- followed by 32 or more letters and digits)",
        match_type: MatchType::Regex,
        pattern: r"sk-[a-zA-Z0-9]{32,}",
        scope: Scope::Prompt,
        action: Action::Block,
        priority: 100,
        replacement: "[KEY_REDACTED]",
        check: Check::None,
    },
];

pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// Luhn checksum over the digits of `text` (other characters ignored); card numbers have 12 to
/// 19 digits.
pub fn luhn_valid(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (0, _) => d,
            (_, doubled) if doubled > 9 => doubled - 9,
            (_, doubled) => doubled,
        })
        .sum();
    sum.is_multiple_of(10)
}
