//! The firewall: block, mask or warn on text the provider or the client would read.
//!
//! Rules are validated and compiled once per snapshot ([`Firewall::compile`]) — the control plane
//! runs the same compiler before it stores a rule, so an invalid rule never reaches an edge.
//!
//! # Layout
//! - this module: rule model, validation, the compiled [`Firewall`] and the text-level scan
//!   ([`Firewall::scan`], [`Inspection`] for a request made of many texts, [`Verdict`]).
//! - [`stream`]: a scanner for text that arrives in pieces (streamed responses), holding back
//!   only what a match still in progress could need.
//! - [`formats`]: walkers that visit every text of a client API's request and response bodies
//!   and SSE events (adding a format is one walker function).
//! - [`templates`]: ready-made rules (SSN, card numbers with a Luhn check, email, phone, keys).
//! - [`prefilter`]: the regex rules of a scope behind multi-pattern automata (required
//!   literals; a lazy DFA for the rest) that tell which of them can match a text, so the cost
//!   of a text does not grow by one regex search per rule.
//!
//! # Semantics
//! - Every rule sees the original text. Rules are applied in priority order (higher `priority`
//!   first, then lower id): the first matching `block` rule blocks and is the one named; masks
//!   of all matching `mask` rules are applied, and where masked spans of several rules overlap
//!   they become one span replaced by the highest-priority rule's replacement; every matching
//!   `warn` rule adds a warning.
//! - A rule applies to the requests of a [`Subject`] (the request's key and that key's
//!   workspace) when its `key_id` is empty or that key, and its `workspace_id` is empty or that
//!   workspace ([`Rule::applies_to`]); [`Firewall::applies`] answers per scope in O(1).
//! - `substring` rules are ASCII case-insensitive: `a`–`z` match `A`–`Z`; every other character
//!   (é, ß, Ω, …) must match exactly, code point for code point (no Unicode case folding, no
//!   normalisation). `regex` rules use the `regex` crate's syntax (Unicode-aware: `\d` is any
//!   Unicode digit, `(?i)` folds Unicode case); matching is linear in the text's length.

pub mod formats;
pub mod prefilter;
pub mod stream;
pub mod templates;

use std::collections::{BTreeSet, HashMap, HashSet};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder};
use tokenrouter_proto::config::v1 as pb;

use crate::error::{ErrorKind, GatewayError};
use prefilter::RegexRules;

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Compiled size limit of one regex (its NFA), in bytes.
pub const MAX_REGEX_SIZE: usize = 1024 * 1024;
/// Lazy-DFA cache of one regex (per worker VM); beyond it the engine falls back to its slower
/// linear-time NFA simulation.
pub const MAX_DFA_CACHE: usize = 64 * 1024;
/// Deepest nesting of groups and repetitions in one regex.
pub const REGEX_NEST_LIMIT: u32 = 32;
/// Longest regex match caught across streamed chunks when a rule names none.
pub const DEFAULT_MAX_MATCH_CHARS: u32 = 256;
/// Highest `max_match_chars` a rule may ask for (it is what a stream holds back).
pub const MAX_MAX_MATCH_CHARS: u32 = 4096;
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_REPLACEMENT_CHARS: usize = 200;
/// Most rules one snapshot may carry.
pub const MAX_RULES: usize = 10_000;
/// What a masked span becomes when a rule names no replacement.
pub const DEFAULT_REPLACEMENT: &str = "[REDACTED]";

/// Which text a rule inspects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Everything the provider reads: messages, system/developer text, tool results, tool-call
    /// arguments.
    Prompt,
    /// Everything the client reads: message content, tool-call arguments, streamed deltas.
    Response,
    /// The string values of the request's `metadata` object.
    Metadata,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Prompt, Scope::Response, Scope::Metadata];

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "prompt" => Some(Scope::Prompt),
            "response" => Some(Scope::Response),
            "metadata" => Some(Scope::Metadata),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Prompt => "prompt",
            Scope::Response => "response",
            Scope::Metadata => "metadata",
        }
    }

    fn index(self) -> usize {
        match self {
            Scope::Prompt => 0,
            Scope::Response => 1,
            Scope::Metadata => 2,
        }
    }
}

/// How a rule's pattern matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchType {
    /// The pattern as literal text, ASCII case-insensitive.
    Substring,
    /// A `regex`-crate regular expression (linear time in the text's length).
    Regex,
}

impl MatchType {
    pub fn parse(s: &str) -> Option<MatchType> {
        match s {
            "substring" => Some(MatchType::Substring),
            "regex" => Some(MatchType::Regex),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::Substring => "substring",
            MatchType::Regex => "regex",
        }
    }
}

/// What a match does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Refuse with 422 `firewall_error` naming the rule.
    Block,
    /// Replace the matched text with the rule's replacement.
    Mask,
    /// Let the text through and add a warning.
    Warn,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "block" => Some(Action::Block),
            "mask" => Some(Action::Mask),
            "warn" => Some(Action::Warn),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Mask => "mask",
            Action::Warn => "warn",
        }
    }
}

/// A check a match must also pass, for what a regular expression cannot express.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    None,
    /// The match's digits must pass the Luhn checksum (payment card numbers).
    Luhn,
}

impl Check {
    pub fn parse(s: &str) -> Option<Check> {
        match s {
            "" | "none" => Some(Check::None),
            "luhn" => Some(Check::Luhn),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Check::None => "",
            Check::Luhn => "luhn",
        }
    }

    fn passes(self, text: &str) -> bool {
        match self {
            Check::None => true,
            Check::Luhn => templates::luhn_valid(text),
        }
    }
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: i64,
    pub name: String,
    pub priority: i32,
    pub enabled: bool,
    pub scope: Scope,
    pub match_type: MatchType,
    pub pattern: String,
    pub action: Action,
    /// Already resolved: never empty.
    pub replacement: String,
    /// `None`: every key; `Some(id)`: only requests authenticated with that key.
    pub key_id: Option<String>,
    /// `None`: every workspace; `Some(id)`: only requests of keys in that workspace.
    pub workspace_id: Option<String>,
    /// Regex rules: longest match guaranteed to be caught across streamed chunks.
    pub max_match_chars: u32,
    pub check: Check,
}

impl Rule {
    /// Whether the rule applies to requests of `subject`: its key is none or the subject's,
    /// and its workspace is none or the subject's. The one place that decides it.
    pub fn applies_to(&self, subject: Subject<'_>) -> bool {
        self.key_id.as_deref().is_none_or(|k| k == subject.key_id)
            && self
                .workspace_id
                .as_deref()
                .is_none_or(|w| w == subject.workspace_id)
    }
}

/// Whom a request is made for, as far as rule scoping goes: its key and the key's workspace
/// (a key inherits its workspace's rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Subject<'a> {
    pub key_id: &'a str,
    pub workspace_id: &'a str,
}

impl<'a> Subject<'a> {
    pub fn new(key_id: &'a str, workspace_id: &'a str) -> Subject<'a> {
        Subject {
            key_id,
            workspace_id,
        }
    }
}

/// Why a rule was refused; the message is meant for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError(pub String);

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleError {}

/// Validates one rule as configured, compiling its regex to prove it is accepted.
pub fn validate(p: &pb::FirewallRule) -> Result<Rule, RuleError> {
    validated(p, &HashMap::new()).map(|(rule, _)| rule)
}

/// [`validate`], also returning the compiled regex of a regex rule: taken from `compiled` when
/// it holds the pattern (it passed the same checks when it was compiled), compiled otherwise.
fn validated(
    p: &pb::FirewallRule,
    compiled: &HashMap<&str, &Regex>,
) -> Result<(Rule, Option<Regex>), RuleError> {
    let err = |msg: String| RuleError(format!("firewall rule {:?}: {msg}", p.name));
    let name = p.name.trim();
    if name.is_empty() {
        return Err(RuleError("firewall rule: name is required".into()));
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(err(format!(
            "name must be at most {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    let scope = Scope::parse(&p.scope).ok_or_else(|| {
        err(format!(
            "unknown scope {:?}: use prompt, response or metadata",
            p.scope
        ))
    })?;
    let match_type = MatchType::parse(&p.r#type).ok_or_else(|| {
        err(format!(
            "unknown type {:?}: use substring or regex",
            p.r#type
        ))
    })?;
    let action = Action::parse(&p.action).ok_or_else(|| {
        err(format!(
            "unknown action {:?}: use block, mask or warn",
            p.action
        ))
    })?;
    let check = Check::parse(&p.check)
        .ok_or_else(|| err(format!("unknown check {:?}: use luhn or none", p.check)))?;
    if p.pattern.is_empty() {
        return Err(err("pattern is required".into()));
    }
    if p.pattern.len() > MAX_PATTERN_BYTES {
        return Err(err(format!(
            "pattern is {} bytes; at most {MAX_PATTERN_BYTES} are accepted",
            p.pattern.len()
        )));
    }
    if !p.workspace_id.is_empty() && !crate::snapshot::valid_name(&p.workspace_id) {
        return Err(err(format!(
            "workspace {:?} is not valid: use 1-64 of a-z, 0-9, '-' and '_'",
            p.workspace_id
        )));
    }
    if p.replacement.chars().count() > MAX_REPLACEMENT_CHARS {
        return Err(err(format!(
            "replacement must be at most {MAX_REPLACEMENT_CHARS} characters"
        )));
    }
    let max_match_chars = match (match_type, p.max_match_chars) {
        (MatchType::Substring, 0) => 0,
        (MatchType::Substring, _) => {
            return Err(err(
                "max_match_chars applies to regex rules only (a substring's length is its own)"
                    .into(),
            ))
        }
        (MatchType::Regex, 0) => DEFAULT_MAX_MATCH_CHARS,
        (MatchType::Regex, n) if n > MAX_MAX_MATCH_CHARS => {
            return Err(err(format!(
                "max_match_chars must be at most {MAX_MAX_MATCH_CHARS}"
            )))
        }
        (MatchType::Regex, n) => n,
    };
    let regex = match match_type {
        MatchType::Regex => match compiled.get(p.pattern.as_str()) {
            Some(&re) => Some(re.clone()),
            None => Some(compile_regex(&p.pattern).map_err(err)?),
        },
        MatchType::Substring => None,
    };
    let rule = Rule {
        id: p.id,
        name: name.to_string(),
        priority: p.priority,
        enabled: p.enabled,
        scope,
        match_type,
        pattern: p.pattern.clone(),
        action,
        replacement: if p.replacement.is_empty() {
            DEFAULT_REPLACEMENT.to_string()
        } else {
            p.replacement.clone()
        },
        key_id: Some(p.key_id.trim().to_string()).filter(|k| !k.is_empty()),
        workspace_id: Some(p.workspace_id.clone()).filter(|w| !w.is_empty()),
        max_match_chars,
        check,
    };
    Ok((rule, regex))
}

fn compile_regex(pattern: &str) -> Result<Regex, String> {
    let re = RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_SIZE)
        .nest_limit(REGEX_NEST_LIMIT)
        .dfa_size_limit(MAX_DFA_CACHE)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("size limit") || text.contains("exceeds") {
                format!("regex is too large once compiled (limit {MAX_REGEX_SIZE} bytes): {text}")
            } else {
                format!("invalid regex: {text}")
            }
        })?;
    // A pattern that can match nothing would "match" everywhere; such a rule is a mistake.
    for probe in ["", "a", "0", " ", "a b"] {
        if re.find(probe).is_some_and(|m| m.is_empty()) {
            return Err(
                "regex matches the empty string; make it match at least one character".into(),
            );
        }
    }
    Ok(re)
}

/// A rule that matched, as reported to the client and the request log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub rule_id: i64,
    pub name: String,
    pub scope: Scope,
    pub action: Action,
}

impl Applied {
    /// `action:scope:name`, the form used in `x-tokenrouter-firewall` and the request log.
    pub fn label(&self) -> String {
        format!(
            "{}:{}:{}",
            self.action.as_str(),
            self.scope.as_str(),
            self.name
        )
    }

    /// The warning a `warn` rule adds.
    pub fn warning(&self) -> String {
        format!(
            "firewall rule '{}' matched the {}",
            self.name,
            self.scope.as_str()
        )
    }
}

/// Outcome of inspecting a request or a response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first matching `block` rule in priority order.
    pub blocked_by: Option<Applied>,
    /// Every rule that matched, in priority order (up to and including the blocking rule).
    pub applied: Vec<Applied>,
}

impl Verdict {
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    /// Warnings of the `warn` rules that matched.
    pub fn warnings(&self) -> Vec<String> {
        self.applied
            .iter()
            .filter(|a| a.action == Action::Warn)
            .map(Applied::warning)
            .collect()
    }

    /// Labels of every applied rule (see [`Applied::label`]).
    pub fn labels(&self) -> Vec<String> {
        self.applied.iter().map(Applied::label).collect()
    }

    /// The 422 the client gets when a rule blocked.
    pub fn error(&self) -> Option<GatewayError> {
        let rule = self.blocked_by.as_ref()?;
        let what = match rule.scope {
            Scope::Response => "The response was",
            Scope::Prompt | Scope::Metadata => "The request was",
        };
        Some(GatewayError::new(
            ErrorKind::Firewall,
            format!(
                "{what} blocked by firewall rule '{}' ({} scope).",
                rule.name,
                rule.scope.as_str()
            ),
        ))
    }
}

/// One match of one rule, as byte offsets into the scanned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Index into the firewall's rules (priority order: lower is more important).
    pub rule: usize,
    pub start: usize,
    pub end: usize,
}

/// The compiled rules of one scope.
#[derive(Clone, Debug, Default)]
struct ScopeSet {
    /// The scope's substring patterns, then its regexes' required literals
    /// ([`RegexRules::take_literals`]), in one ASCII-case-insensitive automaton: a text is scanned
    /// once for both, and the cost does not grow per rule.
    patterns: Option<AhoCorasick>,
    /// Automaton pattern id → rule index, for the substring patterns (the first ids).
    substring_rules: Vec<usize>,
    /// The regex rules, behind a prefilter that runs only those that can match a text.
    regexes: RegexRules,
    /// Longest substring pattern, in bytes (what a stream must hold back for them, minus one).
    max_substring_bytes: usize,
    /// Largest `max_match_chars` of the scope's regex rules.
    max_regex_chars: usize,
    /// Some rule of the scope names neither a key nor a workspace: it applies to every request.
    has_global: bool,
    /// Workspaces with rules of their own (naming no key) in this scope.
    workspaces: HashSet<String>,
    /// Keys with rules of their own in this scope → the workspaces those rules are limited to
    /// (`None`: some rule of the key names no workspace).
    keys: HashMap<String, Option<HashSet<String>>>,
}

impl ScopeSet {
    /// Whether some rule of the scope applies to `s` — exactly, in O(1) (at most three
    /// lookups), whatever the number of rules.
    fn applies_to(&self, s: Subject<'_>) -> bool {
        self.has_global
            || self.workspaces.contains(s.workspace_id)
            || self
                .keys
                .get(s.key_id)
                .is_some_and(|ws| ws.as_ref().is_none_or(|ws| ws.contains(s.workspace_id)))
    }

    /// Records that `rule` (of this scope) exists, for [`ScopeSet::applies_to`].
    fn add_subject(&mut self, rule: &Rule) {
        match (&rule.key_id, &rule.workspace_id) {
            (None, None) => self.has_global = true,
            (None, Some(w)) => {
                self.workspaces.insert(w.clone());
            }
            (Some(k), None) => {
                self.keys.insert(k.clone(), None);
            }
            (Some(k), Some(w)) => {
                let limited = self.keys.entry(k.clone()).or_insert(Some(HashSet::new()));
                // `None`: a rule of the key applies in every workspace already.
                if let Some(ws) = limited {
                    ws.insert(w.clone());
                }
            }
        }
    }
}

/// All enabled rules of a snapshot, compiled. Built once per configuration version.
#[derive(Clone, Debug, Default)]
pub struct Firewall {
    /// Enabled rules in priority order.
    rules: Vec<Rule>,
    scopes: [ScopeSet; 3],
}

impl Firewall {
    /// Validates every rule (disabled ones too) and compiles the enabled ones.
    pub fn compile(rules: &[pb::FirewallRule]) -> Result<Firewall, RuleError> {
        Firewall::compile_with(rules, &HashMap::new())
    }

    /// [`Firewall::compile`], taking the compiled regex of every pattern `previous` (the
    /// firewall of the snapshot being replaced) already has instead of compiling it again: a
    /// regex depends on its pattern only, and compiling them is most of the work (a new
    /// snapshot usually changes a rule or two). The result is the same as `compile`'s.
    pub fn compile_reusing(
        rules: &[pb::FirewallRule],
        previous: &Firewall,
    ) -> Result<Firewall, RuleError> {
        let compiled: HashMap<&str, &Regex> = previous
            .scopes
            .iter()
            .flat_map(|s| s.regexes.regexes())
            .map(|re| (re.as_str(), re))
            .collect();
        Firewall::compile_with(rules, &compiled)
    }

    fn compile_with(
        rules: &[pb::FirewallRule],
        compiled: &HashMap<&str, &Regex>,
    ) -> Result<Firewall, RuleError> {
        if rules.len() > MAX_RULES {
            return Err(RuleError(format!(
                "{} firewall rules; at most {MAX_RULES} are accepted",
                rules.len()
            )));
        }
        let mut valid = Vec::with_capacity(rules.len());
        let mut ids = HashSet::with_capacity(rules.len());
        for p in rules {
            // Each regex is compiled once: the regex that proved the rule valid is the one kept.
            let (rule, regex) = validated(p, compiled)?;
            if !ids.insert(rule.id) {
                return Err(RuleError(format!(
                    "firewall rule id {} appears twice",
                    rule.id
                )));
            }
            if rule.enabled {
                valid.push((rule, regex));
            }
        }
        valid.sort_by(|(a, _), (b, _)| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        let (valid, regexes): (Vec<Rule>, Vec<Option<Regex>>) = valid.into_iter().unzip();
        let mut scopes: [ScopeSet; 3] = Default::default();
        let mut patterns: [Vec<&str>; 3] = Default::default();
        let mut scope_regexes: [Vec<(usize, Regex)>; 3] = Default::default();
        for (i, (rule, regex)) in valid.iter().zip(regexes).enumerate() {
            let set = &mut scopes[rule.scope.index()];
            set.add_subject(rule);
            match rule.match_type {
                MatchType::Substring => {
                    patterns[rule.scope.index()].push(&rule.pattern);
                    set.substring_rules.push(i);
                    set.max_substring_bytes = set.max_substring_bytes.max(rule.pattern.len());
                }
                MatchType::Regex => {
                    let re = match regex {
                        Some(re) => re,
                        None => compile_regex(&rule.pattern).map_err(|e| {
                            RuleError(format!("firewall rule {:?}: {e}", rule.name))
                        })?,
                    };
                    scope_regexes[rule.scope.index()].push((i, re));
                    set.max_regex_chars = set.max_regex_chars.max(rule.max_match_chars as usize);
                }
            }
        }
        for (set, regexes) in scopes.iter_mut().zip(scope_regexes) {
            if !regexes.is_empty() {
                set.regexes = RegexRules::new(regexes);
            }
        }
        for (set, pats) in scopes.iter_mut().zip(patterns) {
            let build = |literals: &[Vec<u8>]| {
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(
                        pats.iter()
                            .map(|p| p.as_bytes())
                            .chain(literals.iter().map(Vec::as_slice)),
                    )
            };
            let literals = set.regexes.take_literals();
            if pats.is_empty() && literals.is_empty() {
                continue;
            }
            let ac = match build(&literals) {
                Ok(ac) => ac,
                Err(_) => {
                    // The literals made it too large: their regexes run on every text.
                    set.regexes.unfilter_literals();
                    build(&[])
                        .map_err(|e| RuleError(format!("firewall substring patterns: {e}")))?
                }
            };
            set.patterns = Some(ac);
        }
        Ok(Firewall {
            rules: valid,
            scopes,
        })
    }

    /// Enabled rules, in priority order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Heap bytes of the regex prefilter automata of all scopes as compiled, and of the
    /// lazy-DFA caches the calling thread (worker) has filled so far; a cache grows to at most
    /// [`prefilter::MAX_SET_DFA_CACHE`] bytes per automaton (or that automaton's minimum).
    pub fn prefilter_bytes(&self) -> (usize, usize) {
        self.scopes
            .iter()
            .map(|s| {
                // The scope's automaton serves the regexes' literals too (and its substrings).
                let literals = match s.regexes.literal_count() {
                    0 => 0,
                    _ => s.patterns.as_ref().map_or(0, AhoCorasick::memory_usage),
                };
                let (automata, caches) = s.regexes.prefilter_bytes();
                (automata + literals, caches)
            })
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    /// Whether any enabled rule of `scope` applies to requests of `subject` (O(1)). When
    /// not, the edge skips that scope entirely (no parsing, no buffering).
    pub fn applies(&self, scope: Scope, subject: Subject<'_>) -> bool {
        self.scopes[scope.index()].applies_to(subject)
    }

    /// Every match in `text[from..]` of the rules of `scope` that apply to `subject`, in no
    /// particular order. `text[..from]` is context only (for `^` and `\b`).
    pub fn find(&self, scope: Scope, subject: Subject<'_>, text: &str, from: usize) -> Vec<Hit> {
        let set = &self.scopes[scope.index()];
        let mut hits = Vec::new();
        if !set.applies_to(subject) || from >= text.len() {
            return hits;
        }
        let applies = |rule: usize| self.rules.get(rule).is_some_and(|r| r.applies_to(subject));
        // Which of the regexes' literals occur, by literal id: found in the same scan.
        let mut found = vec![false; set.regexes.literal_count()];
        if let (Some(ac), Some(tail)) = (&set.patterns, text.get(from..)) {
            let substrings = set.substring_rules.len();
            for m in ac.find_overlapping_iter(tail) {
                let id = m.pattern().as_usize();
                let Some(&rule) = set.substring_rules.get(id) else {
                    if let Some(f) = id.checked_sub(substrings).and_then(|i| found.get_mut(i)) {
                        *f = true;
                    }
                    continue;
                };
                if applies(rule) {
                    hits.push(Hit {
                        rule,
                        start: from + m.start(),
                        end: from + m.end(),
                    });
                }
            }
        }
        if set.regexes.is_empty() {
            return hits;
        }
        // Only the regexes the prefilter cannot rule out run their own search.
        for (rule, re) in set.regexes.candidates(text, from, &found) {
            if !applies(*rule) {
                continue;
            }
            let check = self.rules.get(*rule).map_or(Check::None, |r| r.check);
            let mut at = from;
            while at <= text.len() {
                let Some(m) = re.find_at(text, at) else {
                    break;
                };
                if m.is_empty() {
                    at = next_char(text, m.end());
                    continue;
                }
                if check.passes(m.as_str()) {
                    hits.push(Hit {
                        rule: *rule,
                        start: m.start(),
                        end: m.end(),
                    });
                    at = m.end();
                } else {
                    // A failed check may hide a valid match that starts one character later.
                    at = next_char(text, m.start());
                }
            }
        }
        hits
    }

    /// Scans one text: what a single-text request or response would get. Returns the verdict
    /// and, when a mask applied, the masked text.
    pub fn scan(
        &self,
        scope: Scope,
        subject: Subject<'_>,
        text: &str,
    ) -> (Verdict, Option<String>) {
        let mut inspection = Inspection::new(self, subject);
        let masked = inspection.check(scope, text);
        (inspection.verdict(), masked)
    }

    /// `text` with the mask hits replaced (hits of other actions are ignored). `hits` must lie
    /// within `text`.
    pub fn apply_masks(&self, text: &str, hits: &[Hit]) -> Option<String> {
        let mut spans: Vec<Hit> = hits
            .iter()
            .copied()
            .filter(|h| {
                self.rules
                    .get(h.rule)
                    .is_some_and(|r| r.action == Action::Mask)
            })
            .collect();
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|h| (h.start, h.end));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut i = 0;
        while i < spans.len() {
            let mut span = spans[i];
            i += 1;
            while i < spans.len() && spans[i].start < span.end {
                span.end = span.end.max(spans[i].end);
                span.rule = span.rule.min(spans[i].rule);
                i += 1;
            }
            out.push_str(text.get(at..span.start).unwrap_or_default());
            out.push_str(self.rules.get(span.rule).map_or("", |r| &r.replacement));
            at = span.end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        Some(out)
    }

    fn verdict_of(&self, matched: &BTreeSet<usize>) -> Verdict {
        let mut verdict = Verdict::default();
        for rule in matched.iter().filter_map(|&i| self.rules.get(i)) {
            let applied = Applied {
                rule_id: rule.id,
                name: rule.name.clone(),
                scope: rule.scope,
                action: rule.action,
            };
            verdict.applied.push(applied.clone());
            if rule.action == Action::Block {
                verdict.blocked_by = Some(applied);
                break;
            }
        }
        verdict
    }

    fn blocks(&self, matched: &BTreeSet<usize>) -> bool {
        matched
            .iter()
            .any(|&i| self.rules.get(i).is_some_and(|r| r.action == Action::Block))
    }

    /// Holdback a stream of `scope` needs: (bytes for substrings, characters for regexes).
    fn holdback(&self, scope: Scope) -> (usize, usize) {
        let set = &self.scopes[scope.index()];
        (
            set.max_substring_bytes.saturating_sub(1),
            set.max_regex_chars,
        )
    }
}

/// Items as one HTTP header value (`x-tokenrouter-firewall`, `x-tokenrouter-warnings`): joined
/// with `", "`; in each item `%`, `,` and every byte outside printable ASCII are
/// percent-encoded (UTF-8), so a rule name can never split an item or break the header.
pub fn header_value(items: &[String]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        for b in item.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' && b != b',' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

fn next_char(text: &str, at: usize) -> usize {
    text.get(at..)
        .and_then(|rest| rest.chars().next())
        .map_or(text.len() + 1, |c| at + c.len_utf8())
}

/// Inspection of one request or response made of many texts (messages, tool calls, metadata):
/// masks each text as it is checked and gives one verdict at the end.
#[derive(Debug)]
pub struct Inspection<'a> {
    firewall: &'a Firewall,
    subject: Subject<'a>,
    /// Rule indices that matched; ordered, so iteration is priority order.
    matched: BTreeSet<usize>,
}

impl<'a> Inspection<'a> {
    pub fn new(firewall: &'a Firewall, subject: Subject<'a>) -> Inspection<'a> {
        Inspection {
            firewall,
            subject,
            matched: BTreeSet::new(),
        }
    }

    /// Checks one text; returns the masked text when a mask applied.
    pub fn check(&mut self, scope: Scope, text: &str) -> Option<String> {
        let hits = self.firewall.find(scope, self.subject, text, 0);
        self.matched.extend(hits.iter().map(|h| h.rule));
        self.firewall.apply_masks(text, &hits)
    }

    /// Checks one text and masks it in place.
    pub fn check_in_place(&mut self, scope: Scope, text: &mut String) {
        if let Some(masked) = self.check(scope, text) {
            *text = masked;
        }
    }

    /// Whether a `block` rule has matched so far.
    pub fn blocked(&self) -> bool {
        self.firewall.blocks(&self.matched)
    }

    pub fn verdict(&self) -> Verdict {
        self.firewall.verdict_of(&self.matched)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests;
