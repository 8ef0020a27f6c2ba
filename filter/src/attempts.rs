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

/// The attempts of one request, each with its start (ms since the epoch), and the largest
/// Retry-After (seconds) a provider answered them with. The per-VM log keeps one per request
/// for the upstream filter and the edge; a direct request's edge keeps its own.
#[derive(Debug, Default)]
pub struct Tried {
    attempts: Vec<(Attempt, i64)>,
    retry_after: u32,
}

impl Tried {
    /// An attempt starts (no response yet).
    pub fn start(&mut self, provider: &str, model: &str, now_ms: i64) {
        self.attempts.push((
            Attempt {
                provider: provider.to_string(),
                model: model.to_string(),
                ..Attempt::default()
            },
            now_ms,
        ));
    }

    /// How many attempts started.
    pub fn started(&self) -> usize {
        self.attempts.len()
    }

    /// The current attempt got response headers (`retry_after_s`: its Retry-After).
    pub fn answered(&mut self, status: u16, retry_after_s: Option<u32>, now_ms: i64) {
        if let Some(s) = retry_after_s {
            self.retry_after = self.retry_after.max(s);
        }
        if let Some((a, started)) = self.attempts.last_mut() {
            a.status = u32::from(status);
            a.latency_ms = u64::try_from(now_ms.saturating_sub(*started)).unwrap_or(0);
            if !(200..300).contains(&status) {
                a.error = format!("http_{status}");
            }
        }
    }

    /// The attempts and the largest Retry-After; attempts without an answer are closed as
    /// `no_response` (connect failure, reset or per-try timeout — Envoy does not tell the
    /// filter which).
    pub fn close(self, now_ms: i64) -> (Vec<Attempt>, u32) {
        let attempts = self
            .attempts
            .into_iter()
            .map(|(mut a, started)| {
                if a.status == 0 {
                    a.latency_ms = u64::try_from(now_ms.saturating_sub(started)).unwrap_or(0);
                    a.error = "no_response".into();
                }
                a
            })
            .collect();
        (attempts, self.retry_after)
    }
}

#[derive(Default)]
struct Log {
    plans: HashMap<String, Plan>,
    by_request: HashMap<String, Tried>,
    order: VecDeque<String>,
}

impl Log {
    /// Remembers a request the log has nothing of yet, dropping the oldest past
    /// [`MAX_REQUESTS`].
    fn track(&mut self, request_id: &str) {
        if self.by_request.contains_key(request_id) || self.plans.contains_key(request_id) {
            return;
        }
        self.order.push_back(request_id.to_string());
        while self.order.len() > MAX_REQUESTS {
            if let Some(old) = self.order.pop_front() {
                self.by_request.remove(&old);
                self.plans.remove(&old);
            }
        }
    }
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
        l.track(request_id);
        l.plans.insert(request_id.to_string(), plan);
    });
}

/// The plan of a request, if the edge of this worker made one.
pub fn planned(request_id: &str) -> Option<Plan> {
    LOG.with(|l| l.borrow().plans.get(request_id).cloned())
}

/// How many attempts of a request started on this worker (a retry is the next one).
pub fn started(request_id: &str) -> usize {
    LOG.with(|l| {
        l.borrow()
            .by_request
            .get(request_id)
            .map_or(0, Tried::started)
    })
}

/// An attempt starts (no response yet).
pub fn start(request_id: &str, provider: &str, model: &str, now_ms: i64) {
    if request_id.is_empty() {
        return;
    }
    LOG.with(|l| {
        let mut l = l.borrow_mut();
        l.track(request_id);
        l.by_request
            .entry(request_id.to_string())
            .or_default()
            .start(provider, model, now_ms);
    });
}

/// The current attempt of a request got response headers (`retry_after_s`: its Retry-After).
pub fn answered(request_id: &str, status: u16, retry_after_s: Option<u32>, now_ms: i64) {
    LOG.with(|l| {
        if let Some(tried) = l.borrow_mut().by_request.get_mut(request_id) {
            tried.answered(status, retry_after_s, now_ms);
        }
    });
}

/// Takes a request's attempts and largest Retry-After ([`Tried::close`]) and its plan.
pub fn take(request_id: &str, now_ms: i64) -> (Vec<Attempt>, u32) {
    let tried = LOG.with(|l| {
        let mut l = l.borrow_mut();
        let plan = l.plans.remove(request_id);
        let tried = l.by_request.remove(request_id);
        if plan.is_some() || tried.is_some() {
            l.order.retain(|r| r != request_id);
        }
        tried.unwrap_or_default()
    });
    tried.close(now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_close_with_their_answers_and_the_largest_retry_after() {
        let mut tried = Tried::default();
        tried.start("a", "m1", 1_000);
        tried.answered(429, Some(7), 1_040);
        tried.start("b", "m2", 1_050);
        tried.answered(503, Some(3), 1_060);
        tried.start("c", "m3", 1_100);
        assert_eq!(tried.started(), 3);
        let (attempts, retry_after) = tried.close(1_400);
        assert_eq!(retry_after, 7);
        let got: Vec<_> = attempts
            .iter()
            .map(|a| {
                (
                    a.provider.as_str(),
                    a.status,
                    a.latency_ms,
                    a.error.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", 429, 40, "http_429"),
                ("b", 503, 10, "http_503"),
                ("c", 0, 300, "no_response"),
            ]
        );
    }

    #[test]
    fn the_log_hands_a_request_its_attempts_once() {
        start("req-1", "a", "m", 10);
        answered("req-1", 200, None, 25);
        assert_eq!(started("req-1"), 1);
        let (attempts, _) = take("req-1", 30);
        assert_eq!(attempts.len(), 1);
        assert_eq!((attempts[0].status, attempts[0].latency_ms), (200, 15));
        assert!(attempts[0].error.is_empty());
        assert_eq!(started("req-1"), 0);
        assert!(take("req-1", 40).0.is_empty());
    }
}
