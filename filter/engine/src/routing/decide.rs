//! The decision: one function from a request to its chain of attempts (module docs of
//! [`crate::routing`] give the order of precedence).

use std::cell::{Cell, OnceCell};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::complexity::{self, Tier};
use super::features::Features;
use super::rules::{Evaluation, Facts};
use super::scores::{ScoreBoard, MIN_SAMPLES};
use super::trace::{PassedOver, Trace, LOG_FULL_TRACE_RULES};
use super::{check_pair, resolve, resolve_pinned, Mode, Target};
use crate::error::{ErrorKind, GatewayError};
use crate::money::Price;
use crate::request::ClientApi;
use crate::snapshot::{ModelEntry, Snapshot};
use crate::upstream::ProviderKind;

/// Attempts per request when the snapshot does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most attempts a snapshot may ask for.
pub const MAX_ATTEMPTS: u32 = 5;
/// Time an attempt may take to send response headers when the snapshot does not say.
pub const DEFAULT_PER_TRY_TIMEOUT_MS: u32 = 60_000;
/// Candidates within this utility of the best are "equivalent" (BYOK preference applies).
const EQUIVALENT: f64 = 0.05;
/// Most candidates listed in the trace.
const TRACE_CANDIDATES: usize = 5;

/// Everything the decision reads about one request.
pub struct RouteInput<'a> {
    pub api: ClientApi,
    /// The `model` field as sent.
    pub model: &'a str,
    /// `router_mode`, if sent (already checked to be a mode name).
    pub router_mode: Option<&'a str>,
    pub metadata: Option<&'a Map<String, Value>>,
    pub features: &'a Features,
    pub stream: bool,
    pub key_id: &'a str,
    /// Request header by lower-case name (the edge reads its copy of the request's headers).
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
    /// Provider kinds whose BYOK header the request carries.
    pub byok: &'a [ProviderKind],
    /// Randomness for traffic splits (the edge derives it from the request id).
    pub random: u64,
    pub now_ms: i64,
}

/// Where a request goes, in attempt order, and why.
#[derive(Debug)]
pub struct Decision<'s> {
    /// At least one; the Envoy cluster [`Decision::cluster`] reaches them in this order.
    pub attempts: Vec<Target<'s>>,
    /// Cluster of the route: the provider's own, or a chain (aggregate) cluster.
    pub cluster: String,
    pub mode: Option<Mode>,
    pub tier: Option<Tier>,
    pub trace: Trace,
    pub warnings: Vec<String>,
}

/// The parsed `model` field.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ModelRef {
    Auto,
    /// `provider/model` (the provider may be a registered name or a kind).
    Pinned {
        provider: String,
        model: String,
    },
    Bare(String),
}

/// Splits a `:mode` suffix off and classifies the rest. A suffix that is not a mode name stays
/// part of the model (`llama3:8b`).
fn parse_model(model: &str) -> (ModelRef, Option<Mode>) {
    let (base, mode) = match model.rsplit_once(':') {
        Some((base, suffix)) if Mode::parse(suffix).is_some() && !base.is_empty() => {
            (base, Mode::parse(suffix))
        }
        _ => (model, None),
    };
    let r = if base.eq_ignore_ascii_case("auto") {
        ModelRef::Auto
    } else {
        match base.split_once('/') {
            Some((p, m)) => ModelRef::Pinned {
                provider: p.to_string(),
                model: m.to_string(),
            },
            None => ModelRef::Bare(base.to_string()),
        }
    };
    (r, mode)
}

/// The facts rules are checked against. Every enabled rule is evaluated on every request, so
/// what many rules ask for is computed once per request.
struct RequestFacts<'i, 'a> {
    input: &'i RouteInput<'a>,
    prompt_lower: String,
    /// The mode so far: a rule may set it for the rules after it.
    mode: Cell<Option<Mode>>,
    /// The task (`metadata.task` or the detected one), on first use: detection scans the
    /// prompt, and every `task` condition asks.
    task: OnceCell<Option<&'i str>>,
}

impl<'i, 'a: 'i> RequestFacts<'i, 'a> {
    fn new(input: &'i RouteInput<'a>, prompt_lower: String, mode: Option<Mode>) -> Self {
        RequestFacts {
            input,
            prompt_lower,
            mode: Cell::new(mode),
            task: OnceCell::new(),
        }
    }

    /// `metadata.<key>` as a string, borrowed from the request.
    fn metadata_str(&self, key: &str) -> Option<&'i str> {
        self.input.metadata?.get(key)?.as_str()
    }
}

impl Facts for RequestFacts<'_, '_> {
    fn prompt_lower(&self) -> &str {
        &self.prompt_lower
    }
    fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata_str(key)
    }
    fn mode(&self) -> Option<Mode> {
        self.mode.get()
    }
    fn task(&self) -> Option<&str> {
        *self.task.get_or_init(|| {
            self.metadata_str("task")
                .or_else(|| complexity::detect_task(&self.input.features.text))
        })
    }
    fn requested_model(&self) -> &str {
        self.input.model
    }
    fn header(&self, name: &str) -> Option<&str> {
        (self.input.header)(name)
    }
}

/// What the rules decided.
#[derive(Default)]
struct RuleOutcome {
    provider: Option<String>,
    model: Option<String>,
}

/// Name of a provider's own cluster (ARCHITECTURE.md, "Provider clusters").
pub fn provider_cluster_name(provider: &str) -> String {
    // `concat` rather than `format!`: the formatting machinery costs several times the copy,
    // and a direct request's cluster name is built per request.
    [PROVIDER_CLUSTER_PREFIX, provider].concat()
}

const PROVIDER_CLUSTER_PREFIX: &str = "tr_provider_";

/// Whether `cluster` is [`provider_cluster_name`] of `provider` (without building the name).
pub fn is_provider_cluster(cluster: &str, provider: &str) -> bool {
    cluster.strip_prefix(PROVIDER_CLUSTER_PREFIX) == Some(provider)
}

/// Name of a provider's direct cluster: its endpoint without the upstream filter, for a
/// request the edge prepares itself (ARCHITECTURE.md, "Direct requests").
pub fn direct_cluster_name(provider: &str) -> String {
    ["tr_direct_", provider].concat()
}

/// Name of the chain cluster for these provider names in attempt order.
pub fn chain_cluster_name(providers: &[&str]) -> String {
    format!("tr_chain_{}", providers.join("+"))
}

/// The clusters a chain cluster aggregates: each provider's own cluster, and for a provider's
/// second and later positions a slot copy of it (`tr_provider_<name>~<n>`), because an
/// aggregate cluster moves to its next member on every retry.
pub fn chain_children(providers: &[&str]) -> Vec<String> {
    let mut seen: Vec<&str> = Vec::with_capacity(providers.len());
    providers
        .iter()
        .map(|p| {
            let n = seen.iter().filter(|s| *s == p).count();
            seen.push(p);
            if n == 0 {
                provider_cluster_name(p)
            } else {
                format!("{}~{n}", provider_cluster_name(p))
            }
        })
        .collect()
}

fn pair_ok(api: ClientApi, t: &Target<'_>) -> bool {
    check_pair(api, t).is_ok()
}

/// Whether a catalogue model can serve the request.
fn fits(m: &ModelEntry, api: ClientApi, f: &Features, stream: bool) -> Result<(), &'static str> {
    if !m.enabled {
        return Err("disabled");
    }
    if (api == ClientApi::Embeddings) != m.embeddings {
        return Err(if m.embeddings {
            "embeddings model"
        } else {
            "not an embeddings model"
        });
    }
    if f.has_tools && !m.tools {
        return Err("no tools");
    }
    if f.has_images && !m.vision {
        return Err("no vision");
    }
    if f.json_mode && !m.json_mode {
        return Err("no JSON mode");
    }
    if stream && !m.streaming {
        return Err("no streaming");
    }
    if m.context_window > 0
        && f.est_input_tokens
            .saturating_add(if f.requested_output_limit {
                f.max_output_tokens
            } else {
                0
            })
            > u64::from(m.context_window)
    {
        return Err("context window too small");
    }
    Ok(())
}

/// One ranked candidate.
struct Candidate<'s> {
    target: Target<'s>,
    quality: u32,
    tier: Option<Tier>,
    /// Estimated cost in micro-dollars × tokens (relative only).
    cost: f64,
    latency_ms: f64,
    error_rate: f64,
    byok: bool,
    utility: f64,
}

/// Latency assumed for a model nobody has measured yet, from its tier.
fn prior_latency_ms(tier: Option<Tier>, stream: bool) -> f64 {
    let full = match tier {
        Some(Tier::Simple) => 600.0,
        Some(Tier::Medium) | None => 900.0,
        Some(Tier::Complex) => 1500.0,
        Some(Tier::Reasoning) => 4000.0,
    };
    if stream {
        full / 3.0
    } else {
        full
    }
}

fn estimated_cost(price: &Price, f: &Features) -> f64 {
    price.input as f64 * f.est_input_tokens as f64
        + price.output as f64 * f.max_output_tokens as f64
}

fn candidate<'s>(
    target: Target<'s>,
    m: Option<&ModelEntry>,
    input: &RouteInput<'_>,
    scores: &ScoreBoard,
) -> Candidate<'s> {
    let tier = m.and_then(|m| m.tier);
    let score = scores.get(&target.provider.name, &target.upstream_model);
    let measured = score.filter(|s| s.samples >= MIN_SAMPLES).and_then(|s| {
        let v = if input.stream && s.ttfb_ms > 0 {
            s.ttfb_ms
        } else {
            s.latency_ms
        };
        (v > 0).then_some(f64::from(v))
    });
    Candidate {
        quality: m.map_or(50, |m| if m.quality == 0 { 50 } else { m.quality }),
        tier,
        cost: estimated_cost(&target.price, input.features),
        latency_ms: measured.unwrap_or_else(|| prior_latency_ms(tier, input.stream)),
        error_rate: score.map_or(0.0, |s| s.error_rate),
        byok: input.byok.contains(&target.provider.kind.catalogue_kind())
            || input.byok.contains(&target.provider.kind),
        target,
        utility: 0.0,
    }
}

/// Scores candidates for `mode` (utility 0–1, higher is better) and sorts them, best first.
fn rank(cands: &mut [Candidate<'_>], mode: Mode) {
    let min_cost = cands.iter().map(|c| c.cost).fold(f64::INFINITY, f64::min);
    let max_cost = cands.iter().map(|c| c.cost).fold(0.0, f64::max);
    let min_latency = cands
        .iter()
        .map(|c| c.latency_ms)
        .fold(f64::INFINITY, f64::min)
        .max(1.0);
    for c in cands.iter_mut() {
        // Log scale: prices span three orders of magnitude.
        let cost_score = if max_cost <= min_cost {
            1.0
        } else {
            let span = (max_cost + 1.0).ln() - (min_cost + 1.0).ln();
            1.0 - ((c.cost + 1.0).ln() - (min_cost + 1.0).ln()) / span
        };
        let quality_score = f64::from(c.quality) / 100.0;
        let latency_score = min_latency / c.latency_ms.max(1.0);
        let base = match mode {
            Mode::Cost => cost_score + 0.001 * quality_score,
            Mode::Quality => quality_score + 0.001 * cost_score,
            Mode::Latency => latency_score + 0.001 * cost_score,
            Mode::Balance => 0.4 * cost_score + 0.4 * quality_score + 0.2 * latency_score,
        };
        let health = (1.0 - c.error_rate).clamp(0.0, 1.0);
        c.utility = base * health * health;
    }
    cands.sort_by(|a, b| {
        b.utility
            .partial_cmp(&a.utility)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    // Equivalent candidates: those with a BYOK key first.
    if let Some(best) = cands.first().map(|c| c.utility) {
        let n = cands
            .iter()
            .take_while(|c| best - c.utility <= EQUIVALENT)
            .count();
        cands[..n].sort_by_key(|c| !c.byok);
    }
}

fn trace_candidates(trace: &mut Trace, cands: &[Candidate<'_>]) {
    let ranked: Vec<Value> = cands
        .iter()
        .take(TRACE_CANDIDATES)
        .map(|c| {
            json!({
                "model": format!("{}/{}", c.target.provider.name, c.target.model_id),
                "utility": (c.utility * 1000.0).round() / 1000.0,
                "byok": c.byok,
            })
        })
        .collect();
    trace.step(
        "candidates",
        json!({"eligible": cands.len(), "ranked": ranked}),
    );
}

/// Every (enabled provider, catalogue model) pair that can serve the request, optionally only
/// of providers matching `only` (a provider name or kind).
fn catalogue_candidates<'s>(
    snapshot: &'s Snapshot,
    input: &RouteInput<'_>,
    scores: &ScoreBoard,
    only: Option<&str>,
) -> Vec<Candidate<'s>> {
    let mut out = Vec::new();
    for p in snapshot.enabled_providers() {
        if let Some(only) = only {
            if p.name != only && p.kind.as_str() != only {
                continue;
            }
        }
        if scores.cooling(&p.name, input.now_ms) {
            continue;
        }
        let kind = p.kind.catalogue_kind();
        for id in snapshot.models_of_kind(kind) {
            let Some(m) = snapshot.model(kind, id) else {
                continue;
            };
            if fits(m, input.api, input.features, input.stream).is_err() {
                continue;
            }
            let target = Target {
                provider: p,
                model_id: m.id.clone(),
                upstream_model: m.upstream_model.clone(),
                price: m.price,
                catalogued: true,
                credential: 0,
            };
            if pair_ok(input.api, &target) {
                out.push(candidate(target, Some(m), input, scores));
            }
        }
    }
    out
}

/// Providers that serve a bare catalogue model, as candidates.
fn bare_candidates<'s>(
    snapshot: &'s Snapshot,
    input: &RouteInput<'_>,
    scores: &ScoreBoard,
    model: &str,
    only: Option<&str>,
) -> Vec<Candidate<'s>> {
    let mut out = Vec::new();
    for &kind in snapshot.kinds_of_model(model) {
        let Some(m) = snapshot.model(kind, model).filter(|m| m.enabled) else {
            continue;
        };
        for p in snapshot.enabled_providers() {
            if p.kind.catalogue_kind() != kind || p.kind == ProviderKind::Azure {
                continue;
            }
            if only.is_some_and(|o| p.name != o && p.kind.as_str() != o) {
                continue;
            }
            let target = Target {
                provider: p,
                model_id: m.id.clone(),
                upstream_model: m.upstream_model.clone(),
                price: m.price,
                catalogued: true,
                credential: 0,
            };
            out.push(candidate(target, Some(m), input, scores));
        }
    }
    out
}

/// The chain of a ranked list: distinct providers, best first; a single-provider deployment
/// gets that provider's next-best models instead.
fn chain_of<'s>(cands: Vec<Candidate<'s>>, max: usize, input: &RouteInput<'_>) -> Vec<Target<'s>> {
    let distinct = {
        let mut names: Vec<&str> = cands
            .iter()
            .map(|c| c.target.provider.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    };
    let mut chain: Vec<Target<'s>> = Vec::with_capacity(max);
    for c in cands {
        if chain.len() >= max {
            break;
        }
        let same_provider = chain
            .iter()
            .any(|t| t.provider.name == c.target.provider.name);
        if distinct > 1 && same_provider {
            continue;
        }
        if pair_ok(input.api, &c.target) {
            chain.push(c.target);
        }
    }
    chain
}

/// Decides where a request goes.
pub fn decide<'s>(
    snapshot: &'s Snapshot,
    scores: &ScoreBoard,
    input: &RouteInput<'_>,
) -> Result<Decision<'s>, GatewayError> {
    decide_traced(snapshot, scores, input, Tracing::Full)
}

/// How much of the rules' evaluation the trace keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracing {
    /// Every condition of every rule (the preview, tests).
    Full,
    /// What the log row and the response header show (the edge): above
    /// [`LOG_FULL_TRACE_RULES`] in-scope rules, a rule that does not match is checked only up
    /// to its first failing condition and traced without conditions. The decision is the
    /// same.
    Served,
}

/// [`decide`], keeping the trace `tracing` asks for.
pub fn decide_traced<'s>(
    snapshot: &'s Snapshot,
    scores: &ScoreBoard,
    input: &RouteInput<'_>,
    tracing: Tracing,
) -> Result<Decision<'s>, GatewayError> {
    let mut trace = Trace::default();
    let mut warnings = Vec::new();
    let (model_ref, suffix_mode) = parse_model(input.model);
    let explicit_mode = input.router_mode.and_then(Mode::parse);
    let mut mode = explicit_mode.or(suffix_mode).or(match model_ref {
        ModelRef::Auto => Some(Mode::Balance),
        _ => None,
    });
    if let Some(m) = mode {
        let source = if explicit_mode.is_some() {
            "router_mode"
        } else if suffix_mode.is_some() {
            "model suffix"
        } else {
            "auto default"
        };
        trace.step("mode", json!({"mode": m.as_str(), "source": source}));
    }

    // Routing rules, higher priority first.
    let mut outcome = RuleOutcome::default();
    let mut mode_set_by_rule = false;
    let rule_set = snapshot.routing_rule_set();
    // With their positions in the set (a passed-over rule is listed by it).
    let mut rules = Vec::with_capacity(rule_set.rules().len());
    rules.extend(
        (0u32..)
            .zip(rule_set.rules())
            .filter(|(_, r)| r.in_scope(input.key_id)),
    );
    if !rules.is_empty() {
        let facts = RequestFacts::new(input, input.features.text.to_ascii_lowercase(), mode);
        let evaluation = Evaluation::of_rules(&facts, rule_set);
        let skip_unmatched = tracing == Tracing::Served && rules.len() > LOG_FULL_TRACE_RULES;
        trace.conditions_skipped = skip_unmatched;
        if skip_unmatched {
            trace.passed_over = Some(PassedOver::new(Arc::clone(rule_set), rules.len()));
        } else {
            trace.rules.reserve(rules.len());
            let conditions = rules.iter().map(|(_, r)| r.conditions.len()).sum();
            trace.conditions.reserve(conditions);
        }
        for (at, rule) in rules {
            facts.mode.set(mode);
            if let Some(over) = trace.passed_over.as_mut() {
                if !rule.matches(&evaluation) {
                    over.passed(at);
                    continue;
                }
                over.traced(at);
            }
            let (matched, mut rt) = rule.check(&evaluation, &mut trace.conditions);
            if matched {
                let a = &rule.actions;
                if let Some(m) = a.set_mode {
                    if mode_set_by_rule {
                        rt.ignored
                            .push(format!("set_mode={} (a higher rule set it)", m.as_str()));
                    } else {
                        mode = Some(m);
                        mode_set_by_rule = true;
                        rt.applied.push(format!("set_mode={}", m.as_str()));
                    }
                }
                for (field, value, name) in [
                    (&mut outcome.provider, &a.set_provider, "set_provider"),
                    (&mut outcome.model, &a.set_model, "set_model"),
                ] {
                    if let Some(v) = value {
                        if field.is_some() {
                            rt.ignored
                                .push(format!("{name}={v} (a higher rule set it)"));
                        } else {
                            *field = Some(v.clone());
                            rt.applied.push(format!("{name}={v}"));
                        }
                    }
                }
                if let Some(w) = &a.add_warning {
                    warnings.push(w.clone());
                    rt.applied.push(format!("add_warning={w}"));
                }
            }
            trace.rules.push(rt);
        }
    }

    let max = snapshot.max_attempts.max(1) as usize;
    let mut tier = None;
    let attempts: Vec<Target<'s>> = if let ModelRef::Pinned { provider, model } = &model_ref {
        // A provider the request names is kept (compliance); rules may only change its model.
        let mut model = model.clone();
        if let Some(p) = &outcome.provider {
            if p != provider {
                trace.step(
                    "pinned",
                    json!({"provider": provider, "ignored": format!("set_provider={p}")}),
                );
            }
        }
        if let Some(m) = &outcome.model {
            match m.split_once('/') {
                Some((p, m)) if p == provider => model = m.to_string(),
                Some(_) => trace.step(
                    "pinned",
                    json!({"provider": provider, "ignored": format!("set_model={m}")}),
                ),
                None => model = m.clone(),
            }
        }
        pinned_chain(snapshot, provider, &model, max)?
    } else if outcome.provider.is_some() || outcome.model.is_some() {
        let provider = outcome.provider.as_deref();
        match (&outcome.model, &model_ref) {
            (Some(m), _) if m.contains('/') => {
                let (p, m) = m.split_once('/').unwrap_or(("", m));
                pinned_chain(snapshot, p, m, max)?
            }
            (Some(m), _) | (None, ModelRef::Bare(m)) => match provider {
                Some(p) => pinned_chain(snapshot, p, m, max)?,
                None => {
                    let cands = ranked(
                        bare_candidates(snapshot, input, scores, m, None),
                        mode,
                        &mut trace,
                    );
                    let chain = chain_of(cands, max, input);
                    if chain.is_empty() {
                        vec![resolve(snapshot, m)?]
                    } else {
                        chain
                    }
                }
            },
            (None, _) => {
                let (t, cands) = auto_candidates(snapshot, scores, input, provider);
                tier = t;
                if let Some(t) = t {
                    trace.step("tier", json!({"tier": t.as_str()}));
                }
                let mode = mode.get_or_insert(Mode::Balance);
                let cands = ranked(cands, Some(*mode), &mut trace);
                chain_of(cands, max, input)
            }
        }
    } else if let Some(cfg) = snapshot.routing_config(input.key_id).filter(|c| c.active) {
        let facts = RequestFacts::new(input, String::new(), mode);
        let mut rule_checks = Vec::new();
        let chain = cfg.chain(&facts, input.random, &mut rule_checks);
        let checked: Vec<Value> = rule_checks
            .iter()
            .map(|(name, held, _)| json!({"rule": name, "matched": held}))
            .collect();
        match chain {
            Some(backends) => {
                let mut out = Vec::with_capacity(backends.len());
                let mut skipped = Vec::new();
                for b in backends {
                    match resolve(snapshot, &b.model) {
                        Ok(t) if pair_ok(input.api, &t) => out.push(t),
                        Ok(_) => skipped.push(format!(
                            "{} (cannot serve {})",
                            b.model,
                            input.api.as_str()
                        )),
                        Err(e) => skipped.push(format!("{} ({})", b.model, e.message)),
                    }
                }
                out.truncate(max);
                trace.step(
                    "key_config",
                    json!({
                        "strategy": cfg.strategy.as_str(),
                        "rules": checked,
                        "chain": out.iter().map(|t| format!("{}/{}", t.provider.name, t.model_id)).collect::<Vec<_>>(),
                        "skipped": skipped,
                    }),
                );
                out
            }
            None => {
                trace.step(
                    "key_config",
                    json!({"strategy": cfg.strategy.as_str(), "rules": checked, "chain": []}),
                );
                default_chain(
                    snapshot, scores, input, &model_ref, &mut mode, &mut tier, &mut trace, max,
                )?
            }
        }
    } else {
        default_chain(
            snapshot, scores, input, &model_ref, &mut mode, &mut tier, &mut trace, max,
        )?
    };

    let attempts: Vec<Target<'s>> = attempts.into_iter().take(max).collect();
    let Some(first) = attempts.first() else {
        return Err(GatewayError {
            kind: ErrorKind::Routing,
            message: "No eligible providers available for this request.".into(),
            provider: None,
            raw: None,
        });
    };
    check_pair(input.api, first)?;
    let (cluster, usable) = cluster_for(snapshot, &attempts);
    let mut attempts: Vec<Target<'s>> = attempts.into_iter().take(usable).collect();
    add_credential_fallbacks(&mut attempts, input, max);
    trace.step(
        "route",
        json!({
            "attempts": attempts.iter().map(|t| format!("{}/{}", t.provider.name, t.model_id)).collect::<Vec<_>>(),
            "cluster": cluster,
        }),
    );
    Ok(Decision {
        attempts,
        cluster,
        mode,
        tier,
        trace,
        warnings,
    })
}

/// Ranks candidates by `mode` (registration order, health and BYOK when there is no mode).
fn ranked<'s>(
    mut cands: Vec<Candidate<'s>>,
    mode: Option<Mode>,
    trace: &mut Trace,
) -> Vec<Candidate<'s>> {
    rank(&mut cands, mode.unwrap_or(Mode::Latency));
    if mode.is_none() {
        // Without a mode, registration order wins among healthy equivalents.
        cands.sort_by(|a, b| {
            let ha = a.error_rate < 0.5;
            let hb = b.error_rate < 0.5;
            hb.cmp(&ha).then(b.byok.cmp(&a.byok))
        });
    }
    trace_candidates(trace, &cands);
    cands
}

/// The eligible catalogue candidates of an auto request, restricted to the prompt's tier when
/// any model of that tier can serve it.
fn auto_candidates<'s>(
    snapshot: &'s Snapshot,
    scores: &ScoreBoard,
    input: &RouteInput<'_>,
    only: Option<&str>,
) -> (Option<Tier>, Vec<Candidate<'s>>) {
    let all = catalogue_candidates(snapshot, input, scores, only);
    if input.api == ClientApi::Embeddings {
        return (None, all);
    }
    let tier = complexity::classify(
        &input.features.text,
        input.features.turns,
        input.features.has_tools,
    )
    .tier;
    let (fit, rest): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|c| c.tier.is_none_or(|t| t >= tier));
    if fit.is_empty() {
        (Some(tier), rest)
    } else {
        (Some(tier), fit)
    }
}

/// Auto, bare and `model:mode` requests without rules or a key configuration.
#[allow(clippy::too_many_arguments)]
fn default_chain<'s>(
    snapshot: &'s Snapshot,
    scores: &ScoreBoard,
    input: &RouteInput<'_>,
    model_ref: &ModelRef,
    mode: &mut Option<Mode>,
    tier: &mut Option<Tier>,
    trace: &mut Trace,
    max: usize,
) -> Result<Vec<Target<'s>>, GatewayError> {
    match model_ref {
        ModelRef::Auto => {
            let (t, cands) = auto_candidates(snapshot, scores, input, None);
            *tier = t;
            if let Some(t) = t {
                trace.step("tier", json!({"tier": t.as_str()}));
            }
            let cands = ranked(cands, Some(mode.unwrap_or(Mode::Balance)), trace);
            Ok(chain_of(cands, max, input))
        }
        ModelRef::Bare(m) => {
            let cands = bare_candidates(snapshot, input, scores, m, None);
            if cands.is_empty() {
                // Not served by any registered provider: the resolver says why.
                return resolve(snapshot, m).map(|t| vec![t]);
            }
            let cands = ranked(cands, *mode, trace);
            Ok(chain_of(cands, max, input))
        }
        ModelRef::Pinned { provider, model } => pinned_chain(snapshot, provider, model, max),
    }
}

/// `provider/model`, formatted when shown.
struct PinnedName<'a> {
    provider: &'a str,
    model: &'a str,
}

impl std::fmt::Display for PinnedName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// A pinned provider: the registered provider of that name, or every enabled provider of that
/// kind (in registration order, as fallbacks of each other).
fn pinned_chain<'s>(
    snapshot: &'s Snapshot,
    provider: &str,
    model: &str,
    max: usize,
) -> Result<Vec<Target<'s>>, GatewayError> {
    // `provider/model` as the request named it, written only into an error.
    let full = PinnedName { provider, model };
    if snapshot.provider(provider).is_some_and(|p| p.enabled) {
        return resolve_pinned(snapshot, provider, model, &full).map(|t| vec![t]);
    }
    let first = resolve_pinned(snapshot, provider, model, &full)?;
    let mut out = vec![first];
    if let Some(kind) = ProviderKind::parse(provider) {
        for p in snapshot
            .providers_of_kind(kind)
            .skip(1)
            .take(max.saturating_sub(1))
        {
            if let Ok(t) = resolve_pinned(snapshot, &p.name, model, &full) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// A request one attempt serves, at a provider with fallback credentials (and no BYOK key of
/// its kind, which replaces every stored credential), gets an attempt with each fallback after
/// it, up to `max` attempts: on the provider's own cluster, Envoy's retries go to the same
/// provider, and the upstream filter sends attempt n with credential n.
fn add_credential_fallbacks(attempts: &mut Vec<Target<'_>>, input: &RouteInput<'_>, max: usize) {
    let [only] = attempts.as_slice() else {
        return;
    };
    let provider = only.provider;
    if provider.fallback_credentials.is_empty()
        || input.byok.contains(&provider.kind.catalogue_kind())
    {
        return;
    }
    let copies: Vec<Target<'_>> = (1..=provider.fallback_credentials.len())
        .take(max.saturating_sub(1))
        .map(|credential| Target {
            credential,
            ..only.clone()
        })
        .collect();
    attempts.extend(copies);
}

/// The cluster that reaches `attempts` in order, and how many of them it reaches.
fn cluster_for(snapshot: &Snapshot, attempts: &[Target<'_>]) -> (String, usize) {
    let names: Vec<&str> = attempts.iter().map(|t| t.provider.name.as_str()).collect();
    let Some(first) = attempts.first() else {
        return (String::new(), 0);
    };
    if names.iter().all(|n| *n == names[0]) {
        // One provider: Envoy retries on its own cluster.
        return (first.provider.cluster.clone(), attempts.len());
    }
    for len in (2..=names.len()).rev() {
        let prefix = &names[..len];
        if prefix.iter().all(|n| *n == prefix[0]) {
            return (first.provider.cluster.clone(), len);
        }
        if let Some(c) = snapshot.explicit_chain(prefix) {
            return (c.to_string(), len);
        }
        let distinct = prefix
            .iter()
            .enumerate()
            .all(|(i, n)| !prefix[..i].contains(n));
        if distinct && len <= snapshot.auto_chain_len as usize {
            return (chain_cluster_name(prefix), len);
        }
    }
    (first.provider.cluster.clone(), 1)
}

/// Most orders enumerated for one backend list (ties within a priority level permute).
const MAX_ORDERS: usize = 120;

/// Every chain of provider names a key configuration can produce that needs an explicitly
/// materialised chain cluster (more than one provider, and either a provider repeats or the
/// chain is longer than the implied tuples). The control plane materialises exactly these.
pub fn config_chains(snapshot: &Snapshot) -> Vec<Vec<String>> {
    use super::config::{Backend, Strategy};
    let max = snapshot.max_attempts.max(1) as usize;
    let mut out: Vec<Vec<String>> = Vec::new();
    let apis = [
        ClientApi::ChatCompletions,
        ClientApi::Responses,
        ClientApi::Messages,
        ClientApi::Embeddings,
    ];
    for cfg in snapshot.routing_configs() {
        let mut lists: Vec<(&[Backend], bool)> =
            vec![(&cfg.backends, cfg.strategy == Strategy::Split)];
        for r in &cfg.rules {
            lists.push((&r.backends, false));
        }
        for (backends, split) in lists {
            let mut orders: Vec<Vec<&Backend>> = Vec::new();
            if split {
                for first in 0..backends.len() {
                    let mut rest: Vec<&Backend> = backends
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != first)
                        .map(|(_, b)| b)
                        .collect();
                    rest.sort_by_key(|b| std::cmp::Reverse(b.weight));
                    let mut o = vec![&backends[first]];
                    o.extend(rest);
                    orders.push(o);
                }
            } else {
                let mut sorted: Vec<&Backend> = backends.iter().collect();
                sorted.sort_by_key(|b| b.priority);
                orders.push(Vec::new());
                let mut i = 0;
                while i < sorted.len() {
                    let level: Vec<&Backend> = sorted[i..]
                        .iter()
                        .take_while(|b| b.priority == sorted[i].priority)
                        .copied()
                        .collect();
                    i += level.len();
                    let perms = permutations(&level);
                    let mut next = Vec::new();
                    for o in &orders {
                        for p in &perms {
                            if next.len() >= MAX_ORDERS {
                                break;
                            }
                            let mut o = o.clone();
                            o.extend(p.iter().copied());
                            next.push(o);
                        }
                    }
                    orders = next;
                }
            }
            for order in orders {
                for api in apis {
                    let names: Vec<String> = order
                        .iter()
                        .filter_map(|b| resolve(snapshot, &b.model).ok())
                        .filter(|t| pair_ok(api, t))
                        .take(max)
                        .map(|t| t.provider.name.clone())
                        .collect();
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    let single = refs.iter().all(|n| Some(n) == refs.first());
                    let distinct = refs.iter().enumerate().all(|(i, n)| !refs[..i].contains(n));
                    let implied = distinct && refs.len() <= snapshot.auto_chain_len as usize;
                    if !single && !implied && !out.contains(&names) {
                        out.push(names);
                    }
                }
            }
        }
    }
    out
}

fn permutations<'a, T>(items: &[&'a T]) -> Vec<Vec<&'a T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            if out.len() >= MAX_ORDERS {
                return out;
            }
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

/// Length of the implied chains (every ordered tuple of distinct providers) a control plane
/// materialises for `providers` enabled providers: the attempt limit, but at most three and
/// never more than `max_clusters` chain clusters.
pub fn auto_chain_len(providers: usize, max_attempts: u32, max_clusters: usize) -> u32 {
    let tuples = |len: usize| -> usize {
        (2..=len)
            .map(|l| {
                (0..l)
                    .map(|i| providers.saturating_sub(i))
                    .product::<usize>()
            })
            .sum()
    };
    let mut len = (max_attempts.clamp(1, 3)) as usize;
    while len > 1 && tuples(len) > max_clusters {
        len -= 1;
    }
    len as u32
}

/// Every implied chain (ordered tuples of distinct providers, 2..=len).
pub fn implied_chains(providers: &[&str], len: u32) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<&str>> = providers.iter().map(|p| vec![*p]).collect();
    while let Some(prefix) = stack.pop() {
        if prefix.len() >= 2 {
            out.push(prefix.iter().map(|p| (*p).to_string()).collect());
        }
        if prefix.len() < len as usize {
            for p in providers {
                if !prefix.contains(p) {
                    let mut next = prefix.clone();
                    next.push(p);
                    stack.push(next);
                }
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::routing::features::features;
    use tokenrouter_proto::config::v1 as pb;

    fn provider(name: &str, kind: &str) -> pb::Provider {
        pb::Provider {
            name: name.into(),
            kind: kind.into(),
            base_url: "http://127.0.0.1:9/v1".into(),
            cluster: format!("tr_provider_{name}"),
            credential: String::new(),
            enabled: true,
            fallback_credentials: Vec::new(),
        }
    }

    /// (kind, id, input $/Mtok ×1e6, output, quality, tier, tools, vision)
    #[allow(clippy::too_many_arguments)]
    fn model(
        kind: &str,
        id: &str,
        input: i64,
        output: i64,
        q: u32,
        tier: &str,
        tools: bool,
        vision: bool,
    ) -> pb::Model {
        pb::Model {
            id: id.into(),
            provider_kind: kind.into(),
            upstream_model: id.into(),
            input_price_micros_per_mtok: input,
            output_price_micros_per_mtok: output,
            context_window: 128_000,
            enabled: true,
            tools,
            vision,
            json_mode: true,
            streaming: true,
            quality: q,
            tier: tier.into(),
            ..pb::Model::default()
        }
    }

    fn snapshot() -> pb::Snapshot {
        pb::Snapshot {
            schema: crate::snapshot::SCHEMA,
            version: 1,
            providers: vec![
                provider("openai", "openai"),
                provider("claude", "anthropic"),
                provider("gem", "gemini"),
            ],
            models: vec![
                model(
                    "openai",
                    "gpt-4o-mini",
                    150_000,
                    600_000,
                    60,
                    "medium",
                    true,
                    true,
                ),
                model(
                    "openai", "gpt-4o", 2_500_000, 10_000_000, 85, "complex", true, true,
                ),
                model(
                    "anthropic",
                    "claude-haiku-4-5",
                    1_000_000,
                    5_000_000,
                    70,
                    "medium",
                    true,
                    true,
                ),
                model(
                    "anthropic",
                    "claude-sonnet-4-5",
                    3_000_000,
                    15_000_000,
                    92,
                    "reasoning",
                    true,
                    true,
                ),
                model(
                    "gemini",
                    "gemini-1.5-flash",
                    75_000,
                    300_000,
                    55,
                    "simple",
                    false,
                    false,
                ),
                pb::Model {
                    embeddings: true,
                    streaming: false,
                    ..model(
                        "openai",
                        "text-embedding-3-small",
                        20_000,
                        0,
                        0,
                        "",
                        false,
                        false,
                    )
                },
            ],
            settings: Some(pb::Settings {
                max_attempts: 3,
                auto_chain_len: 3,
                ..pb::Settings::default()
            }),
            ..pb::Snapshot::default()
        }
    }

    fn snap(p: pb::Snapshot) -> Snapshot {
        Snapshot::from_proto(p).unwrap()
    }

    fn body(v: serde_json::Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    struct Req {
        api: ClientApi,
        body: Map<String, Value>,
        key: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        byok: Vec<ProviderKind>,
        random: u64,
    }

    fn chat(model: &str, text: &str) -> Req {
        Req {
            api: ClientApi::ChatCompletions,
            body: body(json!({"model": model, "messages": [{"role": "user", "content": text}]})),
            key: "key_1",
            headers: vec![],
            byok: vec![],
            random: 0,
        }
    }

    fn run<'s>(
        s: &'s Snapshot,
        scores: &ScoreBoard,
        r: &Req,
    ) -> Result<Decision<'s>, GatewayError> {
        run_traced(s, scores, r, Tracing::Full)
    }

    fn run_traced<'s>(
        s: &'s Snapshot,
        scores: &ScoreBoard,
        r: &Req,
        tracing: Tracing,
    ) -> Result<Decision<'s>, GatewayError> {
        let f = features(r.api, &r.body, serde_json::to_vec(&r.body).unwrap().len());
        let header = |n: &str| r.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        let model = r.body.get("model").and_then(Value::as_str).unwrap_or("");
        let metadata = r.body.get("metadata").and_then(Value::as_object);
        let input = RouteInput {
            api: r.api,
            model,
            router_mode: r.body.get("router_mode").and_then(Value::as_str),
            metadata,
            features: &f,
            stream: false,
            key_id: r.key,
            header: &header,
            byok: &r.byok,
            random: r.random,
            now_ms: 1_000,
        };
        decide_traced(s, scores, &input, tracing)
    }

    fn chain(d: &Decision<'_>) -> Vec<String> {
        d.attempts
            .iter()
            .map(|t| format!("{}/{}", t.provider.name, t.model_id))
            .collect()
    }

    /// A pinned model that cannot be served is named in the error as the request wrote it,
    /// also when the provider was found by its kind.
    #[test]
    fn pinned_errors_name_the_model_as_requested() {
        let s = snap(snapshot());
        let scores = ScoreBoard::default();
        for (model, message) in [
            (
                "openai/gpt-9",
                "Model 'openai/gpt-9' is not in the catalogue.",
            ),
            (
                "anthropic/claude-9",
                "Model 'anthropic/claude-9' is not in the catalogue.",
            ),
            (
                "nobody/gpt-4o",
                "Provider 'nobody' is not registered (model 'nobody/gpt-4o').",
            ),
            (
                "openai/",
                "Model 'openai/' names no model after the provider.",
            ),
        ] {
            let Err(e) = run(&s, &scores, &chat(model, "hi")) else {
                panic!("{model} routed");
            };
            assert_eq!(e.message, message, "{model}");
        }
    }

    #[test]
    fn model_forms() {
        let cases = [
            ("auto", ModelRef::Auto, None),
            ("auto:cost", ModelRef::Auto, Some(Mode::Cost)),
            ("AUTO:Balanced", ModelRef::Auto, Some(Mode::Balance)),
            (
                "gpt-4o:quality",
                ModelRef::Bare("gpt-4o".into()),
                Some(Mode::Quality),
            ),
            (
                "local/llama3:8b",
                ModelRef::Pinned {
                    provider: "local".into(),
                    model: "llama3:8b".into(),
                },
                None,
            ),
            (
                "openai/gpt-4o:latency",
                ModelRef::Pinned {
                    provider: "openai".into(),
                    model: "gpt-4o".into(),
                },
                Some(Mode::Latency),
            ),
            (":cost", ModelRef::Bare(":cost".into()), None),
        ];
        for (m, want, mode) in cases {
            assert_eq!(parse_model(m), (want, mode), "{m}");
        }
    }

    #[test]
    fn each_mode_picks_what_prices_quality_and_scores_say() {
        let s = snap(snapshot());
        let mut scores = pb::Scores::default();
        // claude measured fast, openai slow, gem slower.
        for (p, ms) in [("openai", 2000), ("claude", 300), ("gem", 5000)] {
            scores.scores.push(pb::ProviderScore {
                provider: p.into(),
                latency_p50_ms: ms,
                samples: 10,
                ..pb::ProviderScore::default()
            });
        }
        let scores = ScoreBoard::from_proto(scores);
        // A medium prompt (the placeholder classifier says medium for everything too).
        let text = "Draft an onboarding email for new customers.";
        let cases = [
            ("auto:cost", "openai/gpt-4o-mini"),
            ("auto:quality", "claude/claude-sonnet-4-5"),
            ("auto:latency", "claude/claude-haiku-4-5"),
        ];
        for (m, want) in cases {
            let d = run(&s, &scores, &chat(m, text)).unwrap();
            assert_eq!(chain(&d)[0], want, "{m}: {:?}", d.trace);
            // Failover goes to other providers.
            let providers: Vec<&str> = d
                .attempts
                .iter()
                .map(|t| t.provider.name.as_str())
                .collect();
            let mut dedup = providers.clone();
            dedup.dedup();
            assert_eq!(providers, dedup, "{m}");
            assert!(d.attempts.len() >= 2, "{m}");
            assert!(d.cluster.starts_with("tr_chain_"), "{}", d.cluster);
        }
        let d = run(&s, &scores, &chat("auto", text)).unwrap();
        assert_eq!(d.mode, Some(Mode::Balance));
        // router_mode wins over the suffix.
        let mut r = chat("auto:quality", text);
        r.body.insert("router_mode".into(), json!("cost"));
        assert_ne!(
            run(&s, &scores, &r).unwrap().attempts[0].provider.name,
            "claude"
        );
    }

    #[test]
    fn auto_cost_picks_the_cheapest_model_of_the_prompts_tier() {
        let s = snap(snapshot());
        let scores = ScoreBoard::default();
        let d = run(&s, &scores, &chat("auto:cost", "what's 2+2")).unwrap();
        assert_eq!(d.tier, Some(Tier::Simple));
        assert_eq!(chain(&d)[0], "gem/gemini-1.5-flash");
        let hard = "Prove that there are infinitely many primes of the form 4k+3. \
                    Derive each step rigorously and justify every lemma you use.";
        let d = run(&s, &scores, &chat("auto:cost", hard)).unwrap();
        assert_eq!(d.tier, Some(Tier::Reasoning), "{:?}", d.trace);
        assert_eq!(chain(&d), ["claude/claude-sonnet-4-5"]);
        assert!(d.trace.steps.iter().any(|st| st.step == "tier"));
    }

    #[test]
    fn capabilities_and_embeddings_filter_candidates() {
        let s = snap(snapshot());
        let scores = ScoreBoard::default();
        let mut r = chat("auto:cost", "hi");
        r.body.insert(
            "tools".into(),
            json!([{"type": "function", "function": {"name": "f"}}]),
        );
        let d = run(&s, &scores, &r).unwrap();
        assert!(
            d.attempts.iter().all(|t| t.model_id != "gemini-1.5-flash"),
            "{:?}",
            chain(&d)
        );
        let e = Req {
            api: ClientApi::Embeddings,
            body: body(json!({"model": "auto:cost", "input": "x"})),
            ..chat("auto", "")
        };
        let d = run(&s, &scores, &e).unwrap();
        assert_eq!(chain(&d), ["openai/text-embedding-3-small"]);
    }

    #[test]
    fn errors_and_cooldown_push_a_provider_down() {
        let s = snap(snapshot());
        let scores = ScoreBoard::from_proto(pb::Scores {
            scores: vec![pb::ProviderScore {
                provider: "openai".into(),
                error_rate_permille: 900,
                samples: 50,
                ..pb::ProviderScore::default()
            }],
            ..pb::Scores::default()
        });
        let d = run(&s, &scores, &chat("auto:cost", "hello")).unwrap();
        assert_ne!(d.attempts[0].provider.name, "openai", "{:?}", chain(&d));
        let cooling = ScoreBoard::from_proto(pb::Scores {
            scores: vec![pb::ProviderScore {
                provider: "openai".into(),
                cooldown_until_unix_ms: 5_000,
                ..pb::ProviderScore::default()
            }],
            ..pb::Scores::default()
        });
        let d = run(&s, &cooling, &chat("auto:cost", "hello")).unwrap();
        assert!(d.attempts.iter().all(|t| t.provider.name != "openai"));
    }

    #[test]
    fn byok_breaks_ties() {
        let mut p = snapshot();
        p.models.push(model(
            "openai", "twin", 1_000_000, 1_000_000, 70, "medium", true, true,
        ));
        p.models.push(model(
            "anthropic",
            "twin",
            1_000_000,
            1_000_000,
            70,
            "medium",
            true,
            true,
        ));
        let s = snap(p);
        let scores = ScoreBoard::default();
        let mut r = chat("twin", "hi");
        assert_eq!(
            chain(&run(&s, &scores, &r).unwrap()),
            ["openai/twin", "claude/twin"]
        );
        r.byok = vec![ProviderKind::Anthropic];
        assert_eq!(
            chain(&run(&s, &scores, &r).unwrap()),
            ["claude/twin", "openai/twin"]
        );
        // Not among equivalents: a BYOK key does not beat a clearly better candidate.
        let mut r = chat("auto:cost", "hi");
        r.byok = vec![ProviderKind::Anthropic];
        assert_ne!(
            run(&s, &scores, &r).unwrap().attempts[0].provider.name,
            "claude"
        );
    }

    fn rule(id: i64, priority: i32, m: &str, a: &str) -> pb::RoutingRule {
        pb::RoutingRule {
            id,
            name: format!("rule {id}"),
            priority,
            enabled: true,
            match_json: m.into(),
            action_json: a.into(),
            key_id: String::new(),
        }
    }

    /// The edge's decision (`Tracing::Served`) is the preview's: the same route, mode and
    /// warnings, the same rules matched with the same actions, the same log row. Only rules
    /// that did not match lose their conditions, and only above the log's full-trace size.
    #[test]
    fn served_tracing_decides_and_logs_like_full_tracing() {
        let conditions = [
            r#"{"contains": ["zebra"]}"#,
            r#"{"metadata_equals": {"team": "ml"}}"#,
            r#"{"headers": {"x-team": "ml"}}"#,
            r#"{"mode": "cost"}"#,
            r#"{"task": "coding"}"#,
            r#"{"model": "gpt-4*"}"#,
            r#"{"contains": ["function"], "metadata_equals": {"team": "web"}}"#,
            r#"{"contains": ["function"], "headers": {"x-team": "ml"}, "mode": "balance"}"#,
            r#"{"metadata_equals": {"team": "ml", "tier": "gold"}}"#,
        ];
        let action = |i: usize| match i % 4 {
            0 => r#"{"set_mode": "cost"}"#.to_string(),
            1 => format!(r#"{{"add_warning": {{"message": "w{i}"}}}}"#),
            2 => r#"{"set_model": "gpt-4o-mini"}"#.to_string(),
            _ => r#"{"set_provider": "openai"}"#.to_string(),
        };
        let mut requests = [
            chat("auto", "Write a function that sorts a list"),
            chat("openai/gpt-4o", "hello zebra"),
            chat("gpt-4o-mini", "hello"),
        ];
        requests[0]
            .body
            .insert("metadata".into(), json!({"team": "ml", "tier": "gold"}));
        requests[0].headers = vec![("x-team", "ml")];
        requests[1].headers = vec![("x-team", "web")];
        requests[2].body.insert("router_mode".into(), json!("cost"));
        for count in [LOG_FULL_TRACE_RULES, LOG_FULL_TRACE_RULES + 1, 200] {
            let mut p = snapshot();
            p.routing_rules = (0..count)
                .map(|i| {
                    let priority = 1_000 - i32::try_from(i).unwrap();
                    rule(
                        i as i64,
                        priority,
                        conditions[i % conditions.len()],
                        &action(i),
                    )
                })
                .collect();
            let s = snap(p);
            let scores = ScoreBoard::default();
            for (n, r) in requests.iter().enumerate() {
                let full = run_traced(&s, &scores, r, Tracing::Full).unwrap();
                let served = run_traced(&s, &scores, r, Tracing::Served).unwrap();
                let what = format!("{count} rules, request {n}");
                assert_eq!(chain(&served), chain(&full), "{what}");
                assert_eq!(served.cluster, full.cluster, "{what}");
                assert_eq!((served.mode, served.tier), (full.mode, full.tier), "{what}");
                assert_eq!(served.warnings, full.warnings, "{what}");
                let outline = |d: &Decision<'_>| -> Vec<_> {
                    d.trace
                        .listed_rules()
                        .into_iter()
                        .map(|r| (r.id, r.matched, r.applied, r.ignored))
                        .collect()
                };
                assert_eq!(outline(&served), outline(&full), "{what}");
                assert_eq!(served.trace.rule_count(), count, "{what}");
                assert!(full.trace.rules.iter().any(|r| r.matched), "{what}");
                assert_eq!(
                    served.trace.to_log_json(),
                    full.trace.to_log_json(),
                    "{what}"
                );
                let skipped = count > LOG_FULL_TRACE_RULES;
                assert_eq!(served.trace.conditions_skipped, skipped, "{what}");
                if skipped {
                    // Unmatched rules are passed over, listed by position; the header is the
                    // full trace's condition-less form.
                    assert!(served.trace.rules.iter().all(|r| r.matched), "{what}");
                    assert!(served.trace.passed_over.is_some(), "{what}");
                    let mut condition_less = full.trace.clone();
                    condition_less.conditions_skipped = true;
                    assert_eq!(
                        served.trace.header_value(),
                        condition_less.header_value(),
                        "{what}"
                    );
                    assert_eq!(
                        served.trace.render(),
                        (served.trace.to_log_json(), served.trace.header_value()),
                        "{what}"
                    );
                    // Written whole, a passed-over rule is the full trace's entry without its
                    // conditions.
                    let mut unmatched_bare = full.trace.clone();
                    for r in unmatched_bare.rules.iter_mut().filter(|r| !r.matched) {
                        r.conditions.end = r.conditions.start;
                    }
                    assert_eq!(served.trace.to_json(), unmatched_bare.to_json(), "{what}");
                    // The same decision again is the same trace (the edge's cache of its last
                    // trace compares them); another request's is not.
                    let again = run_traced(&s, &scores, r, Tracing::Served).unwrap();
                    assert_eq!(again.trace, served.trace, "{what}");
                } else {
                    assert_eq!(served.trace, full.trace, "{what}");
                }
                assert!(!full.trace.conditions_skipped);
                assert!(full.trace.passed_over.is_none());
            }
        }
    }

    #[test]
    fn seed_rules_fire_with_their_trace() {
        let mut p = snapshot();
        p.routing_rules = vec![
            pb::RoutingRule {
                name: "Coding Tasks → OpenAI".into(),
                ..rule(
                    1,
                    100,
                    r#"{"task": "coding"}"#,
                    r#"{"set_provider": "openai", "set_model": "gpt-4o"}"#,
                )
            },
            rule(
                2,
                50,
                r#"{"contains": ["summarize", "list"]}"#,
                r#"{"set_mode": "cost"}"#,
            ),
            rule(
                3,
                10,
                r#"{"mode": "cost"}"#,
                r#"{"set_model": "claude-haiku-4-5", "add_warning": {"message": "Using beta routing"}}"#,
            ),
            pb::RoutingRule {
                enabled: false,
                ..rule(4, 200, "{}", r#"{"set_provider": "gem"}"#)
            },
        ];
        let s = snap(p);
        let scores = ScoreBoard::default();
        let mut r = chat("auto:balance", "Write a function");
        r.body.insert("metadata".into(), json!({"task": "coding"}));
        let d = run(&s, &scores, &r).unwrap();
        assert_eq!(chain(&d), ["openai/gpt-4o"]);
        assert_eq!(d.trace.rules.len(), 3, "disabled rules are not evaluated");
        assert!(d.trace.rules[0].matched);
        assert_eq!(
            d.trace.rules[0].applied,
            ["set_provider=openai", "set_model=gpt-4o"]
        );
        assert_eq!(
            *d.trace.conditions_of(&d.trace.rules[0])[0].actual,
            json!("coding")
        );
        let header = d.trace.header_value().unwrap();
        assert!(header.contains("Coding Tasks \\u2192 OpenAI"), "{header}");

        // Rule 2 sets cost mode, and rule 3 sees it (mode condition) and sets the model.
        let d = run(&s, &scores, &chat("auto:balance", "Please summarize this")).unwrap();
        assert_eq!(d.mode, Some(Mode::Cost));
        assert_eq!(chain(&d)[0], "claude/claude-haiku-4-5");
        assert_eq!(d.warnings, ["Using beta routing"]);
        assert!(!d.trace.rules[0].matched);
        assert_eq!(
            d.trace.conditions_of(&d.trace.rules[0])[0].condition,
            "task"
        );
    }

    #[test]
    fn a_pinned_provider_is_kept() {
        let mut p = snapshot();
        p.routing_rules = vec![rule(1, 1, "{}", r#"{"set_provider": "claude"}"#)];
        let s = snap(p);
        let d = run(&s, &ScoreBoard::default(), &chat("openai/gpt-4o", "hi")).unwrap();
        assert_eq!(chain(&d), ["openai/gpt-4o"]);
        assert!(d.trace.steps.iter().any(|st| st.step == "pinned"));
        // Without a pin the rule moves a bare model to its provider (which lacks it → 404).
        assert_eq!(
            run(&s, &ScoreBoard::default(), &chat("gpt-4o", "hi"))
                .unwrap_err()
                .status(),
            404
        );
        let d = run(&s, &ScoreBoard::default(), &chat("auto:quality", "hi")).unwrap();
        assert!(d.attempts.iter().all(|t| t.provider.name == "claude"));
        assert_eq!(
            d.cluster, "tr_provider_claude",
            "one provider: retries on its cluster"
        );
    }

    fn key_config(strategy: &str, backends: &[(&str, i32, u32)]) -> pb::RoutingConfig {
        pb::RoutingConfig {
            key_id: "key_1".into(),
            active: true,
            strategy: strategy.into(),
            backends: backends
                .iter()
                .map(|(m, p, w)| pb::Backend {
                    model: (*m).into(),
                    priority: *p,
                    weight: *w,
                })
                .collect(),
            rules: vec![],
        }
    }

    #[test]
    fn key_configurations() {
        let mut p = snapshot();
        p.routing_configs = vec![key_config(
            "fallback",
            &[
                ("claude/claude-sonnet-4-5", 1, 1),
                ("openai/gpt-4o-mini", 0, 1),
            ],
        )];
        let s = snap(p.clone());
        let scores = ScoreBoard::default();
        let d = run(&s, &scores, &chat("gpt-4o", "hi")).unwrap();
        assert_eq!(
            chain(&d),
            ["openai/gpt-4o-mini", "claude/claude-sonnet-4-5"]
        );
        assert_eq!(d.cluster, "tr_chain_openai+claude");
        // Another key is not affected; an inactive configuration is not enforced.
        let mut other = chat("gpt-4o", "hi");
        other.key = "key_2";
        assert_eq!(
            chain(&run(&s, &scores, &other).unwrap())[0],
            "openai/gpt-4o"
        );
        p.routing_configs[0].active = false;
        assert_eq!(
            chain(&run(&snap(p.clone()), &scores, &chat("gpt-4o", "hi")).unwrap())[0],
            "openai/gpt-4o"
        );

        // Split: 1,000 draws within 5 % of the weights.
        p.routing_configs = vec![key_config(
            "split",
            &[("openai/gpt-4o", 0, 3), ("claude/claude-haiku-4-5", 0, 1)],
        )];
        let s = snap(p.clone());
        let mut openai = 0;
        let mut r = chat("gpt-4o", "hi");
        for i in 0..1000u64 {
            r.random = super::super::config::mix(i);
            if run(&s, &scores, &r).unwrap().attempts[0].provider.name == "openai" {
                openai += 1;
            }
        }
        assert!((700..=800).contains(&openai), "{openai}");

        // Advanced rules on the model field and a header.
        let mut c = key_config("rules", &[("gem/gemini-1.5-flash", 0, 1)]);
        c.rules = vec![pb::ConfigRule {
            name: "ml team".into(),
            match_json: r#"{"headers": {"x-team": "ml"}}"#.into(),
            backends: vec![pb::Backend {
                model: "claude/claude-sonnet-4-5".into(),
                priority: 0,
                weight: 1,
            }],
        }];
        p.routing_configs = vec![c];
        let s = snap(p);
        let mut r = chat("gpt-4o", "hi");
        assert_eq!(
            chain(&run(&s, &scores, &r).unwrap()),
            ["gem/gemini-1.5-flash"]
        );
        r.headers = vec![("x-team", "ml")];
        assert_eq!(
            chain(&run(&s, &scores, &r).unwrap()),
            ["claude/claude-sonnet-4-5"]
        );
    }

    #[test]
    fn cluster_names() {
        assert_eq!(provider_cluster_name("openai"), "tr_provider_openai");
        assert_eq!(direct_cluster_name("openai"), "tr_direct_openai");
        assert!(is_provider_cluster("tr_provider_openai", "openai"));
        for (cluster, provider) in [
            ("tr_provider_openai~2", "openai"),
            ("tr_direct_openai", "openai"),
            ("tr_provider_open", "openai"),
            ("tr_chain_openai+claude", "openai"),
            ("openai", "openai"),
        ] {
            assert!(!is_provider_cluster(cluster, provider), "{cluster}");
        }
    }

    #[test]
    fn chain_clusters_exist_or_the_chain_is_cut() {
        let mut p = snapshot();
        p.routing_configs = vec![key_config(
            "fallback",
            &[
                ("claude/claude-haiku-4-5", 0, 1),
                ("claude/claude-sonnet-4-5", 1, 1),
                ("openai/gpt-4o", 2, 1),
            ],
        )];
        let s = snap(p.clone());
        let d = run(&s, &ScoreBoard::default(), &chat("x", "hi")).unwrap();
        // claude+claude+openai is not materialised: cut to the two claude attempts.
        assert_eq!(d.cluster, "tr_provider_claude");
        assert_eq!(d.attempts.len(), 2);
        p.chain_clusters = vec![pb::ChainCluster {
            providers: vec!["claude".into(), "claude".into(), "openai".into()],
            cluster: chain_cluster_name(&["claude", "claude", "openai"]),
        }];
        let s = snap(p);
        let d = run(&s, &ScoreBoard::default(), &chat("x", "hi")).unwrap();
        assert_eq!(d.cluster, "tr_chain_claude+claude+openai");
        assert_eq!(d.attempts.len(), 3);
        assert_eq!(
            chain_children(&["claude", "claude", "openai"]),
            [
                "tr_provider_claude",
                "tr_provider_claude~1",
                "tr_provider_openai"
            ]
        );
        // auto_chain_len 1: no implied chains.
        let mut p = snapshot();
        p.settings = Some(pb::Settings {
            auto_chain_len: 1,
            ..pb::Settings::default()
        });
        let s = snap(p);
        let d = run(&s, &ScoreBoard::default(), &chat("auto", "hi")).unwrap();
        assert_eq!(d.attempts.len(), 1);
    }

    #[test]
    fn chain_enumeration() {
        assert_eq!(auto_chain_len(3, 3, 512), 3);
        assert_eq!(auto_chain_len(10, 3, 512), 2);
        assert_eq!(auto_chain_len(40, 3, 512), 1);
        assert_eq!(auto_chain_len(3, 1, 512), 1);
        let chains = implied_chains(&["a", "b", "c"], 3);
        assert_eq!(chains.len(), 6 + 6);
        assert!(chains.contains(&vec!["c".to_string(), "a".into(), "b".into()]));
        let mut p = snapshot();
        p.routing_configs = vec![key_config(
            "fallback",
            &[
                ("claude/claude-haiku-4-5", 0, 1),
                ("claude/claude-sonnet-4-5", 1, 1),
                ("openai/gpt-4o", 2, 1),
            ],
        )];
        let s = snap(p);
        assert_eq!(
            config_chains(&s),
            vec![vec!["claude".to_string(), "claude".into(), "openai".into()]]
        );
    }

    #[test]
    fn nothing_eligible_is_a_routing_error() {
        let mut p = snapshot();
        p.providers.retain(|p| p.name == "gem");
        let s = snap(p);
        let mut r = chat("auto", "hi");
        r.body.insert(
            "tools".into(),
            json!([{"type": "function", "function": {"name": "f"}}]),
        );
        let e = run(&s, &ScoreBoard::default(), &r).unwrap_err();
        assert_eq!(
            (e.status(), e.message.as_str()),
            (422, "No eligible providers available for this request.")
        );
    }

    #[test]
    fn fallback_credentials_add_attempts_on_the_providers_own_cluster() {
        let mut p = snapshot();
        p.providers[0].fallback_credentials = vec!["sk-second".into(), "sk-third".into()];
        let s = snap(p);
        let scores = ScoreBoard::default();
        // One provider serves it: one attempt per credential, on its own cluster.
        let d = run(&s, &scores, &chat("openai/gpt-4o-mini", "hi")).unwrap();
        let creds: Vec<usize> = d.attempts.iter().map(|t| t.credential).collect();
        assert_eq!(creds, [0, 1, 2]);
        assert_eq!(chain(&d), ["openai/gpt-4o-mini"; 3]);
        assert_eq!(d.cluster, d.attempts[0].provider.cluster);
        // A BYOK key of that kind replaces every stored credential: no copies.
        let mut byok = chat("openai/gpt-4o-mini", "hi");
        byok.byok = vec![ProviderKind::OpenAi];
        let d = run(&s, &scores, &byok).unwrap();
        assert_eq!(d.attempts.len(), 1);
        // Capped by the attempt limit.
        let mut p = snapshot();
        p.providers[0].fallback_credentials = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        let s = snap(p);
        let d = run(&s, &scores, &chat("openai/gpt-4o-mini", "hi")).unwrap();
        assert_eq!(d.attempts.len(), 3);
    }
}
