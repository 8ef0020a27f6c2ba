//! The cost of admission: the same Envoy and control plane, three keys that differ only in what
//! the control plane must admit:
//! (a) no limits and no balance (the bench's control plane runs with
//!     `TOKENROUTER_DEFAULT_RPS=0`, so the edge never asks it);
//! (b) a request rate high enough never to refuse ([`HIGH_RPS`]): one loopback
//!     `RateLimitService/ShouldRateLimit` call per request, checking the token bucket;
//! (c) a balance ([`BALANCE_USD`]), metered: the same call, which also reserves the request's
//!     cost against the balance (settled when its usage record arrives).
//!
//! Latency at one connection and saturated throughput for each key, in interleaved rounds whose
//! order rotates; ratios to (a) are taken within a round. Envoy's own counter of requests to
//! the control plane's cluster (`cluster.tokenrouter_control.upstream_rq_total`), read around
//! each latency step, shows how many calls each request made.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use bytes::Bytes;
use tokenrouter_proto::admin::v1 as pb;

use super::admin::Admin;
use super::load::Oha;
use super::report::{per_round, stat_text, Candidate, Stat};
use super::{Plan, Stacks, Target};
use crate::Supervisor;

/// The rate of key (b): far above anything this machine serves.
pub const HIGH_RPS: u32 = 100_000;
/// The balance of key (c): enough for every request of a run.
pub const BALANCE_USD: &str = "1000000";
/// Envoy workers (as the latency table and the 1-worker throughput table).
const ENVOY_CONCURRENCY: usize = 1;

/// One key's figures, one value per round.
#[derive(Clone, Debug, Default)]
pub struct KeyFigures {
    pub label: String,
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    pub rps: Vec<f64>,
    /// Requests to the control plane's cluster per request of the latency step.
    pub calls_per_request: Vec<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct AdmissionFigures {
    pub rounds: usize,
    pub latency_duration: Duration,
    pub saturation_connections: usize,
    pub saturation_duration: Duration,
    /// (a), (b), (c) in that order.
    pub keys: Vec<KeyFigures>,
}

pub fn run(
    rt: &tokio::runtime::Runtime,
    oha: &Oha,
    plan: &Plan,
    stacks: &mut Stacks,
    base_url: &str,
) -> Result<AdmissionFigures> {
    let cp = stacks.control_plane("admission")?;
    let admin = rt.block_on(Admin::connect(&cp.grpc, super::ADMIN_TOKEN))?;
    rt.block_on(admin.add_provider(super::PROVIDER, base_url))?;
    rt.block_on(admin.seed_keys(0, super::SMALL_KEYS, Duration::from_secs(120)))?;
    rt.block_on(admin.seed_routing_rules(0, super::SMALL_ROUTING_RULES))?;
    rt.block_on(admin.seed_firewall_rules(0, super::SMALL_FIREWALL_RULES))?;
    let plain = rt.block_on(admin.create_key("bench-admission-plain".into()))?;
    let limited = rt.block_on(admin.create_key_with(
        "bench-admission-rps".into(),
        Some(pb::Limits {
            rps: Some(HIGH_RPS),
            ..Default::default()
        }),
        None,
    ))?;
    // Created last: once it authenticates, the snapshot with all three keys is live.
    let metered = rt.block_on(admin.create_key_with(
        "bench-admission-balance".into(),
        None,
        Some(BALANCE_USD.into()),
    ))?;
    let mut children = Supervisor::default();
    let (addr, envoy_admin) =
        stacks.tr_envoy(&mut children, &cp, "admission", ENVOY_CONCURRENCY)?;
    let body = Bytes::from(super::request_body(super::TR_MODEL, false));
    super::wait_until(
        Duration::from_secs(120),
        &format!("Envoy at {addr} to answer 200 for the metered key"),
        &mut children,
        || super::first_status(addr, Some(&metered.raw), &body) == Some(200),
    )?;
    let keys = [
        ("(a) no limits, no balance".to_string(), plain),
        (format!("(b) `rps` {HIGH_RPS}"), limited),
        (format!("(c) balance ${BALANCE_USD} (metered)"), metered),
    ];
    let targets: Vec<Target> = keys
        .iter()
        .map(|(_, key)| Target {
            candidate: Candidate::Tr,
            addr,
            key: Some(key.raw.clone()),
            model: super::TR_MODEL,
        })
        .collect();
    super::warm_up(oha, &targets)?;
    let mut figures = AdmissionFigures {
        rounds: plan.rounds,
        latency_duration: plan.latency_duration,
        saturation_connections: plan.saturation_connections,
        saturation_duration: plan.saturation_duration,
        keys: keys
            .iter()
            .map(|(label, _)| KeyFigures {
                label: label.clone(),
                ..KeyFigures::default()
            })
            .collect(),
    };
    let load = |target: &Target, connections, duration| target.load(connections, duration, None);
    for round in 0..plan.rounds {
        println!("--- round {}/{} (admission)", round + 1, plan.rounds);
        let n = targets.len();
        for i in 0..n {
            let at = (i + round) % n;
            let target = &targets[at];
            let before = control_requests(envoy_admin)?;
            let r = oha.run(&load(target, 1, plan.latency_duration))?;
            let after = control_requests(envoy_admin)?;
            super::check(target, &r)?;
            let calls = after.saturating_sub(before) as f64 / (r.total.max(1)) as f64;
            println!(
                "{:>40} 1 conn: p50 {:.0} µs p99 {:.0} µs, {calls:.2} control-plane calls per request",
                figures.keys[at].label, r.p50_us, r.p99_us
            );
            let k = &mut figures.keys[at];
            k.p50_us.push(r.p50_us);
            k.p99_us.push(r.p99_us);
            k.calls_per_request.push(calls);
        }
        for i in 0..n {
            let at = (i + round) % n;
            let target = &targets[at];
            let r = oha.run(&load(
                target,
                plan.saturation_connections,
                plan.saturation_duration,
            ))?;
            super::check(target, &r)?;
            println!(
                "{:>40} saturated: {:.0} req/s",
                figures.keys[at].label, r.rps
            );
            figures.keys[at].rps.push(r.rps);
        }
    }
    children.check_running()?;
    Ok(figures)
}

/// Envoy's count of requests to the control plane's cluster (the FilterSync stream is one
/// long-lived request; each admission is one more).
fn control_requests(envoy_admin: SocketAddr) -> Result<u64> {
    let stats = super::http_get(
        envoy_admin,
        "/stats?filter=^cluster\\.tokenrouter_control\\.upstream_rq_total$",
    )?;
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cluster.tokenrouter_control.upstream_rq_total: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no cluster.tokenrouter_control.upstream_rq_total in {stats:?}"))
}

impl AdmissionFigures {
    pub fn render(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Admission: what a limit or a balance costs\n\n\
             One tokenrouter Envoy (`--concurrency {ENVOY_CONCURRENCY}`) and its control plane \
             (the `tr` configuration: 100 keys, 10 routing rules, 10 firewall rules; \
             `TOKENROUTER_DEFAULT_RPS=0`), three keys created through `CreateKey`: (a) no limits \
             and no balance, so the edge never asks the control plane; (b) `limits.rps` \
             {HIGH_RPS}, which never refuses here but makes the edge ask the control plane's \
             Rate Limit Service (`ShouldRateLimit`, one loopback gRPC call) before each request; \
             (c) `balance_usd` {BALANCE_USD}, metered: the same call also reserves the request's \
             cost against the balance, settled when its usage record is stored. Each round \
             measures every key at one connection back to back ({:.0} s), then saturated ({} \
             connections, {:.0} s), in an order that rotates between rounds; ratios to (a) are \
             per round. {} round(s); median (min–max). Calls per request: Envoy's \
             `cluster.tokenrouter_control.upstream_rq_total` around the latency step ÷ its \
             requests.\n\n\
             | key | control-plane calls per request | p50 µs (1 connection) | p99 µs | saturated req/s | p50 ÷ (a) | p99 ÷ (a) | req/s ÷ (a) | added p50 over (a) µs |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            self.latency_duration.as_secs_f64(),
            self.saturation_connections,
            self.saturation_duration.as_secs_f64(),
            self.rounds,
        );
        let Some(a) = self.keys.first() else {
            return;
        };
        for (i, k) in self.keys.iter().enumerate() {
            // The reference row's ratios to itself say nothing.
            let vs_a = |values: &[f64], reference: &[f64], f: fn(f64, f64) -> f64, d, unit| {
                if i == 0 {
                    "—".to_string()
                } else {
                    stat_text(per_round(values, reference, f), d, unit)
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                k.label,
                stat_text(Stat::of(&k.calls_per_request), 2, ""),
                stat_text(Stat::of(&k.p50_us), 0, ""),
                stat_text(Stat::of(&k.p99_us), 0, ""),
                stat_text(Stat::of(&k.rps), 0, ""),
                vs_a(&k.p50_us, &a.p50_us, |x, r| x / r, 2, " ×"),
                vs_a(&k.p99_us, &a.p99_us, |x, r| x / r, 2, " ×"),
                vs_a(&k.rps, &a.rps, |x, r| x / r, 2, " ×"),
                vs_a(&k.p50_us, &a.p50_us, |x, r| x - r, 0, ""),
            );
        }
        md.push('\n');
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_per_round() {
        let key = |label: &str, p50: [f64; 2], rps: [f64; 2]| KeyFigures {
            label: label.into(),
            p50_us: p50.to_vec(),
            p99_us: p50.iter().map(|x| x * 2.0).collect(),
            rps: rps.to_vec(),
            calls_per_request: vec![0.0, 0.0],
        };
        let figures = AdmissionFigures {
            rounds: 2,
            keys: vec![
                key("a", [100.0, 200.0], [1000.0, 500.0]),
                key("b", [150.0, 260.0], [800.0, 450.0]),
            ],
            ..AdmissionFigures::default()
        };
        let (a, b) = (&figures.keys[0], &figures.keys[1]);
        let p50 = per_round(&b.p50_us, &a.p50_us, |x, r| x / r).unwrap();
        let rps = per_round(&b.rps, &a.rps, |x, r| x / r).unwrap();
        assert!((p50.min - 1.3).abs() < 1e-9 && (p50.max - 1.5).abs() < 1e-9);
        assert!((rps.min - 0.8).abs() < 1e-9 && (rps.max - 0.9).abs() < 1e-9);
        let mut md = String::new();
        figures.render(&mut md);
        assert!(
            md.contains("| b | 0.00 (0.00–0.00) | 205 (150–260)"),
            "{md}"
        );
    }
}
