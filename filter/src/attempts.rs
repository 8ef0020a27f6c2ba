//! What each attempt of a request did, kept per VM between the upstream filter (which sees every
//! attempt, failed ones included) and the edge (which writes the request's one usage record).
//! Both run on the same worker thread; the edge takes a request's entries when it logs.

use std::cell::RefCell;
use std::collections::VecDeque;

use tokenrouter_engine::HashMap;
use tokenrouter_proto::sync::v1::Attempt;

/// Requests whose attempts are kept at most (oldest dropped): a bound for requests whose edge
/// never logged.
const MAX_REQUESTS: usize = 10_000;

/// What the edge decided for a request, for every attempt's upstream filter. Kept here (not
/// only in headers) because Envoy hands every attempt the same request header map: what the
/// first attempt's filter removes, a retry would not see.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// `(provider, upstream model)` per attempt.
    pub chain: Vec<(String, String)>,
    /// The stored credential each attempt uses, taken from the snapshot the edge routed with
    /// (a snapshot that changes mid-request cannot pair a plan with another key list); missing
    /// or empty = the provider's current primary. Held in memory for the request only.
    pub credentials: Vec<String>,
    pub client_api: String,
    pub stream: bool,
    /// Length of the body the edge forwards (an earlier attempt may have changed the shared
    /// `content-length`).
    pub body_len: Option<usize>,
    /// BYOK keys the request carried, by provider kind: held in memory for the request's
    /// attempts only, never logged or stored.
    pub byok: Vec<(String, String)>,
}

#[derive(Default)]
struct Log {
    plans: HashMap<String, Plan>,
    by_request: HashMap<String, Vec<(Attempt, i64)>>,
    /// Largest Retry-After (seconds) a provider answered a request's attempts with.
    retry_after: HashMap<String, u32>,
    order: VecDeque<String>,
}

thread_local! {
    static LOG: RefCell<Log> = RefCell::new(Log::default());
}

/// The edge's plan for a request (keyed by the request id it sends as `x-request-id`).
pub fn plan(request_id: &str, plan: Plan) {
    if request_id.is_empty() {
        return;
    }
    LOG.with(|l| {
        let mut l = l.borrow_mut();
        if !l.by_request.contains_key(request_id) && !l.plans.contains_key(request_id) {
            l.order.push_back(request_id.to_string());
            while l.order.len() > MAX_REQUESTS {
                if let Some(old) = l.order.pop_front() {
                    l.by_request.remove(&old);
                    l.retry_after.remove(&old);
                    l.plans.remove(&old);
                }
            }
        }
        l.plans.insert(request_id.to_string(), plan);
    });
}

/// The plan of a request, if the edge of this worker made one.
pub fn planned(request_id: &str) -> Option<Plan> {
    LOG.with(|l| l.borrow().plans.get(request_id).cloned())
}

/// How many attempts of a request started on this worker (a retry is the next one).
pub fn started(request_id: &str) -> usize {
    LOG.with(|l| l.borrow().by_request.get(request_id).map_or(0, Vec::len))
}

/// An attempt starts (no response yet).
pub fn start(request_id: &str, provider: &str, model: &str, now_ms: i64) {
    if request_id.is_empty() {
        return;
    }
    LOG.with(|l| {
        let mut l = l.borrow_mut();
        if !l.by_request.contains_key(request_id) && !l.plans.contains_key(request_id) {
            l.order.push_back(request_id.to_string());
            while l.order.len() > MAX_REQUESTS {
                if let Some(old) = l.order.pop_front() {
                    l.by_request.remove(&old);
                    l.retry_after.remove(&old);
                    l.plans.remove(&old);
                }
            }
        }
        l.by_request
            .entry(request_id.to_string())
            .or_default()
            .push((
                Attempt {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    ..Attempt::default()
                },
                now_ms,
            ));
    });
}

/// The current attempt of a request got response headers (`retry_after_s`: its Retry-After).
pub fn answered(request_id: &str, status: u16, retry_after_s: Option<u32>, now_ms: i64) {
    LOG.with(|l| {
        let mut l = l.borrow_mut();
        if let Some(s) = retry_after_s {
            let e = l.retry_after.entry(request_id.to_string()).or_default();
            *e = (*e).max(s);
        }
        if let Some((a, started)) = l.by_request.get_mut(request_id).and_then(|v| v.last_mut()) {
            a.status = u32::from(status);
            a.latency_ms = u64::try_from(now_ms.saturating_sub(*started)).unwrap_or(0);
            if !(200..300).contains(&status) {
                a.error = format!("http_{status}");
            }
        }
    });
}

/// Takes a request's attempts and largest Retry-After; attempts without an answer are closed
/// as `no_response` (connect failure, reset or per-try timeout — Envoy does not tell the
/// filter which).
pub fn take(request_id: &str, now_ms: i64) -> (Vec<Attempt>, u32) {
    LOG.with(|l| {
        let mut l = l.borrow_mut();
        let retry_after = l.retry_after.remove(request_id).unwrap_or(0);
        l.plans.remove(request_id);
        let entries = l.by_request.remove(request_id).unwrap_or_default();
        l.order.retain(|r| r != request_id);
        let attempts = entries
            .into_iter()
            .map(|(mut a, started)| {
                if a.status == 0 {
                    a.latency_ms = u64::try_from(now_ms.saturating_sub(started)).unwrap_or(0);
                    a.error = "no_response".into();
                }
                a
            })
            .collect();
        (attempts, retry_after)
    })
}
