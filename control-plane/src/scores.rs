//! Live provider scores: latency, time to first byte, error rate and 429 cool-downs, computed
//! from the usage the control plane ingests and published as `config.v1.Scores` on a watch
//! channel that every FilterSync stream forwards to its edge.
//!
//! Every attempt of every newly stored usage record is a sample (a record without `attempts`
//! is one attempt: its own provider, model, status and latency). Samples go into a rolling
//! window per (provider, upstream model) and per provider (model `""`): the last
//! [`WINDOW_MS`], at most [`MAX_SAMPLES`] each, at most [`MAX_WINDOWS`] windows. Per window:
//! - `latency_p50_ms`: median latency of successful (2xx) attempts of non-streamed records;
//! - `ttfb_p50_ms`: median `ttfb_ms` of successful streamed records, counted for the attempt
//!   that produced the response (the last one);
//! - `error_rate_permille`: failed attempts (status 0 = no response, 429, ≥ 500) per thousand
//!   attempts, rounded to nearest; other 4xx are the client's doing and count only as samples;
//! - `samples`: attempts in the window;
//! - `cooldown_until_unix_ms`: for a 429 attempt of a record with `retry_after_s > 0`, the time
//!   the record was received + `retry_after_s` (at most [`MAX_COOLDOWN_MS`]); the latest such
//!   time, dropped once past.
//!
//! Times are the control plane's (when a record is received), not the edges'. A record that
//! finished before the window began (a batch resent after a long outage) is not a sample.
//!
//! Publishing: at most once per [`PUBLISH_INTERVAL_MS`] and only when a figure changed, except
//! that a new cool-down goes out at once: it means "do not send there now". A background task
//! ([`ScoreKeeper::spawn_ticker`]) publishes what a burst left pending and what expiry changed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::{Attempt, UsageRecord};
use tokio::sync::watch;

/// How far back samples count.
pub const WINDOW_MS: i64 = 5 * 60 * 1000;
/// Samples kept per window (the oldest go first).
pub const MAX_SAMPLES: usize = 500;
/// Windows kept; beyond it the one seen least recently is dropped. Bounds memory whatever
/// provider and model names the edges report.
pub const MAX_WINDOWS: usize = 1024;
/// Shortest time between two publications (a new cool-down excepted).
pub const PUBLISH_INTERVAL_MS: i64 = 1000;
/// Longest cool-down a Retry-After can ask for.
pub const MAX_COOLDOWN_MS: i64 = 60 * 60 * 1000;
/// How often the background task looks for pending changes and expired samples.
const TICK: Duration = Duration::from_millis(250);

/// Where the keeper reads the time; tests drive it by hand.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::service::now_ms()
    }
}

/// One attempt as the figures need it.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// When the record was received; the sample leaves the window [`WINDOW_MS`] later.
    at_ms: i64,
    failed: bool,
    /// Set for a successful attempt of a non-streamed record.
    latency_ms: Option<u32>,
    /// Set for the last attempt of a successful streamed record that reported a TTFB.
    ttfb_ms: Option<u32>,
}

#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<Sample>,
    /// Latest 429 Retry-After end seen; 0 = none.
    cooldown_until_ms: i64,
    /// Cool-down in the last publication: a later one that extends it by less than a publish
    /// interval waits for the next regular publication instead of going out at once.
    published_cooldown_ms: i64,
    /// Last time a sample arrived; the least recently seen window goes first at the bound.
    last_seen_ms: i64,
}

impl Window {
    /// Drops samples older than the window and a past cool-down.
    fn expire(&mut self, now_ms: i64) {
        while self
            .samples
            .front()
            .is_some_and(|s| s.at_ms <= now_ms - WINDOW_MS)
        {
            self.samples.pop_front();
        }
        if self.cooldown_until_ms <= now_ms {
            self.cooldown_until_ms = 0;
        }
    }

    /// When the figures change without a new sample: the oldest sample leaves or the
    /// cool-down ends.
    fn next_expiry(&self) -> Option<i64> {
        let sample = self.samples.front().map(|s| s.at_ms + WINDOW_MS);
        let cooldown = (self.cooldown_until_ms > 0).then_some(self.cooldown_until_ms);
        match (sample, cooldown) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn score(&self, provider: &str, model: &str) -> pb::ProviderScore {
        let mut latencies: Vec<u32> = self.samples.iter().filter_map(|s| s.latency_ms).collect();
        let mut ttfbs: Vec<u32> = self.samples.iter().filter_map(|s| s.ttfb_ms).collect();
        let n = self.samples.len() as u64;
        let failed = self.samples.iter().filter(|s| s.failed).count() as u64;
        let error_rate_permille = match n {
            0 => 0,
            n => u32::try_from((failed * 1000 + n / 2) / n).unwrap_or(1000),
        };
        pb::ProviderScore {
            provider: provider.to_string(),
            model: model.to_string(),
            latency_p50_ms: median(&mut latencies),
            ttfb_p50_ms: median(&mut ttfbs),
            error_rate_permille,
            samples: u32::try_from(n).unwrap_or(u32::MAX),
            cooldown_until_unix_ms: self.cooldown_until_ms,
        }
    }
}

/// Median (mean of the two middle values for an even count); 0 for none.
fn median(values: &mut [u32]) -> u32 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        let sum = u64::from(values[mid - 1]) + u64::from(values[mid]);
        u32::try_from(sum / 2).unwrap_or(u32::MAX)
    }
}

fn is_success(status: u32) -> bool {
    (200..300).contains(&status)
}

/// No response, rate limited, or a server error: the provider's failure, not the client's.
fn is_failure(status: u32) -> bool {
    status == 0 || status == 429 || status >= 500
}

fn clamp_ms(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

/// (provider, model); model "" = the provider as a whole.
type Key = (String, String);

/// The windows and what was last published. Everything here runs under the keeper's lock.
#[derive(Debug)]
struct State {
    windows: HashMap<Key, Window>,
    /// Figures of the last publication (sorted), to publish only changes.
    published: Vec<pb::ProviderScore>,
    version: u64,
    /// `i64::MIN` until the first change is published: the empty board the channel starts
    /// with does not hold back the first real figures.
    last_published_ms: i64,
    /// A sample arrived since the last publication.
    dirty: bool,
    /// Earliest time the figures change by themselves (a sample leaves, a cool-down ends).
    next_expiry_ms: Option<i64>,
}

impl State {
    /// Adds a record's attempts. Returns whether it started (or markedly extended) a
    /// cool-down, which is published at once.
    fn add(&mut self, r: &UsageRecord, now_ms: i64) -> bool {
        let finished = r
            .started_at_unix_ms
            .saturating_add(i64::try_from(r.latency_ms).unwrap_or(i64::MAX));
        if r.started_at_unix_ms > 0 && finished <= now_ms - WINDOW_MS {
            return false;
        }
        let own;
        let attempts: &[Attempt] = if r.attempts.is_empty() {
            own = [Attempt {
                provider: r.provider.clone(),
                model: r.model.clone(),
                status: r.status,
                latency_ms: r.latency_ms,
                error: String::new(),
            }];
            &own
        } else {
            &r.attempts
        };
        let streamed_ok = r.stream && is_success(r.status) && r.ttfb_ms > 0;
        let mut urgent = false;
        for (i, a) in attempts.iter().enumerate() {
            if a.provider.is_empty() {
                continue; // Refused before any provider was chosen.
            }
            let last = i + 1 == attempts.len();
            let sample = Sample {
                at_ms: now_ms,
                failed: is_failure(a.status),
                latency_ms: (is_success(a.status) && !r.stream).then(|| clamp_ms(a.latency_ms)),
                ttfb_ms: (last && streamed_ok).then(|| clamp_ms(r.ttfb_ms)),
            };
            let cooldown = (a.status == 429 && r.retry_after_s > 0)
                .then(|| now_ms + (i64::from(r.retry_after_s) * 1000).min(MAX_COOLDOWN_MS));
            let models = [a.model.as_str(), ""];
            let models = if a.model.is_empty() {
                &models[1..]
            } else {
                &models[..]
            };
            for model in models {
                let w = self.window(&a.provider, model, now_ms);
                if w.samples.len() >= MAX_SAMPLES {
                    w.samples.pop_front();
                }
                w.samples.push_back(sample);
                w.last_seen_ms = now_ms;
                if let Some(until) = cooldown {
                    w.cooldown_until_ms = w.cooldown_until_ms.max(until);
                    // New, or extending the published one by more than an interval.
                    urgent |= w.published_cooldown_ms <= now_ms
                        || until > w.published_cooldown_ms + PUBLISH_INTERVAL_MS;
                }
            }
            self.dirty = true;
        }
        urgent
    }

    /// The window of (provider, model), created if needed; at the bound the window seen least
    /// recently (then the one with fewest samples) makes room.
    fn window(&mut self, provider: &str, model: &str, now_ms: i64) -> &mut Window {
        let key = (provider.to_string(), model.to_string());
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_WINDOWS {
            let oldest = self
                .windows
                .iter()
                .min_by_key(|(_, w)| (w.last_seen_ms, w.samples.len()))
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.windows.remove(&oldest);
            }
        }
        self.windows.entry(key).or_insert_with(|| Window {
            last_seen_ms: now_ms,
            ..Window::default()
        })
    }

    /// Expires what is past, drops empty windows and returns the figures, sorted.
    fn figures(&mut self, now_ms: i64) -> Vec<pb::ProviderScore> {
        let mut next: Option<i64> = None;
        self.windows.retain(|_, w| {
            w.expire(now_ms);
            if let Some(t) = w.next_expiry() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            !w.samples.is_empty() || w.cooldown_until_ms > 0
        });
        self.next_expiry_ms = next;
        let mut scores: Vec<pb::ProviderScore> = self
            .windows
            .iter()
            .map(|((provider, model), w)| w.score(provider, model))
            .collect();
        scores.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        scores
    }

    /// Publishes the figures if they differ from the last publication.
    fn publish(&mut self, now_ms: i64, tx: &watch::Sender<Arc<pb::Scores>>) {
        let scores = self.figures(now_ms);
        self.dirty = false;
        if scores == self.published {
            return;
        }
        self.version = (self.version + 1).max(u64::try_from(now_ms).unwrap_or(0));
        for w in self.windows.values_mut() {
            w.published_cooldown_ms = w.cooldown_until_ms;
        }
        self.last_published_ms = now_ms;
        tx.send_replace(Arc::new(pb::Scores {
            version: self.version,
            computed_at_unix_ms: now_ms,
            scores: scores.clone(),
        }));
        self.published = scores;
    }

    fn interval_passed(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.last_published_ms) >= PUBLISH_INTERVAL_MS
    }
}

/// Computes and publishes the scores (module docs). Shared by the service and its ticker.
pub struct ScoreKeeper {
    state: Mutex<State>,
    tx: watch::Sender<Arc<pb::Scores>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ScoreKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoreKeeper")
            .field("version", &self.tx.borrow().version)
            .finish_non_exhaustive()
    }
}

impl ScoreKeeper {
    /// A keeper publishing an empty board. Its version is the current time in ms and later
    /// versions are at least the time of their publication, so versions keep increasing
    /// across control plane restarts and an edge never mistakes new scores for ones it holds.
    pub fn new(clock: Arc<dyn Clock>) -> ScoreKeeper {
        let now = clock.now_ms();
        let version = u64::try_from(now).unwrap_or(0).max(1);
        let (tx, _) = watch::channel(Arc::new(pb::Scores {
            version,
            computed_at_unix_ms: now,
            scores: Vec::new(),
        }));
        ScoreKeeper {
            state: Mutex::new(State {
                windows: HashMap::new(),
                published: Vec::new(),
                version,
                last_published_ms: i64::MIN,
                dirty: false,
                next_expiry_ms: None,
            }),
            tx,
            clock,
        }
    }

    /// Starts the task that publishes pending changes and expiries; it ends when the keeper is
    /// dropped. Needs a tokio runtime.
    pub fn spawn_ticker(self: &Arc<Self>) {
        let keeper: Weak<ScoreKeeper> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match keeper.upgrade() {
                    Some(k) => k.tick(),
                    None => return,
                }
            }
        });
    }

    /// Every publication, starting with the current one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<pb::Scores>> {
        self.tx.subscribe()
    }

    /// The current publication.
    pub fn current(&self) -> Arc<pb::Scores> {
        self.tx.borrow().clone()
    }

    /// Takes newly stored records (never a duplicate: the caller passes only what the store
    /// reported as new). Publishes at once when a cool-down started or the publish interval
    /// has passed; otherwise the ticker publishes within an interval.
    pub fn observe<'a>(&self, records: impl IntoIterator<Item = &'a UsageRecord>) {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let mut urgent = false;
        for r in records {
            urgent |= state.add(r, now);
        }
        if state.dirty && (urgent || state.interval_passed(now)) {
            state.publish(now, &self.tx);
        }
    }

    /// Publishes what is pending or expired, at most once per interval.
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let expired = state.next_expiry_ms.is_some_and(|t| t <= now);
        if (state.dirty || expired) && state.interval_passed(now) {
            state.publish(now, &self.tx);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere must not stop
        // scoring.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn window_count(&self) -> usize {
        self.lock().windows.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    const T0: i64 = 1_700_000_000_000;

    #[derive(Debug)]
    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl ManualClock {
        fn advance(&self, ms: i64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    fn keeper() -> (ScoreKeeper, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        (ScoreKeeper::new(clock.clone()), clock)
    }

    fn attempt(provider: &str, model: &str, status: u32, latency_ms: u64) -> Attempt {
        Attempt {
            provider: provider.into(),
            model: model.into(),
            status,
            latency_ms,
            error: String::new(),
        }
    }

    /// A non-streamed record without attempts (one implicit attempt).
    fn plain(provider: &str, model: &str, status: u32, latency_ms: u64) -> UsageRecord {
        UsageRecord {
            request_id: format!("{provider}-{model}-{status}-{latency_ms}"),
            provider: provider.into(),
            model: model.into(),
            status,
            latency_ms,
            ..UsageRecord::default()
        }
    }

    fn with_attempts(attempts: Vec<Attempt>) -> UsageRecord {
        let last = attempts.last().cloned().unwrap();
        UsageRecord {
            provider: last.provider.clone(),
            model: last.model.clone(),
            status: last.status,
            latency_ms: attempts.iter().map(|a| a.latency_ms).sum(),
            attempts,
            ..UsageRecord::default()
        }
    }

    fn score(k: &ScoreKeeper, provider: &str, model: &str) -> Option<pb::ProviderScore> {
        k.current()
            .scores
            .iter()
            .find(|s| s.provider == provider && s.model == model)
            .cloned()
    }

    #[test]
    fn medians_of_successful_attempts_and_streamed_ttfb() {
        let (k, _clock) = keeper();
        let mut records = vec![
            plain("openai", "gpt-4o", 200, 100),
            plain("openai", "gpt-4o", 200, 300),
            plain("openai", "gpt-4o", 200, 200),
            // A failure's latency is not a latency figure.
            plain("openai", "gpt-4o", 500, 5),
            plain("openai", "gpt-4o-mini", 200, 1000),
        ];
        for ttfb in [50, 70] {
            records.push(UsageRecord {
                stream: true,
                ttfb_ms: ttfb,
                // A stream's total duration is not a latency figure either.
                ..plain("openai", "gpt-4o", 200, 9_000)
            });
        }
        k.observe(&records);
        let model = score(&k, "openai", "gpt-4o").unwrap();
        assert_eq!(
            (model.latency_p50_ms, model.ttfb_p50_ms, model.samples),
            (200, 60, 6)
        );
        let provider = score(&k, "openai", "").unwrap();
        // 100, 200, 300, 1000 → mean of 200 and 300.
        assert_eq!(
            (
                provider.latency_p50_ms,
                provider.ttfb_p50_ms,
                provider.samples
            ),
            (250, 60, 7)
        );
        let mini = score(&k, "openai", "gpt-4o-mini").unwrap();
        assert_eq!((mini.latency_p50_ms, mini.ttfb_p50_ms), (1000, 0));
    }

    #[test]
    fn every_attempt_counts_and_only_provider_failures_are_errors() {
        let (k, _clock) = keeper();
        k.observe(&[
            with_attempts(vec![
                attempt("openai", "gpt-4o", 503, 40),
                attempt("claude", "sonnet", 200, 300),
            ]),
            with_attempts(vec![
                attempt("openai", "gpt-4o", 0, 60_000),
                attempt("openai", "gpt-4o", 429, 10),
                attempt("openai", "gpt-4o", 400, 10),
                attempt("openai", "gpt-4o", 200, 120),
            ]),
            // Refused before routing: no provider, no sample.
            plain("", "", 401, 1),
        ]);
        let openai = score(&k, "openai", "").unwrap();
        assert_eq!((openai.samples, openai.error_rate_permille), (5, 600));
        assert_eq!(openai.latency_p50_ms, 120);
        let claude = score(&k, "claude", "sonnet").unwrap();
        assert_eq!((claude.samples, claude.error_rate_permille), (1, 0));
        assert_eq!(k.current().scores.len(), 4, "{:?}", k.current());
        // 1 in 3 rounds to 333.
        let (k, _clock) = keeper();
        k.observe(&[
            plain("p", "m", 500, 1),
            plain("p", "m", 200, 1),
            plain("p", "m", 200, 1),
        ]);
        assert_eq!(score(&k, "p", "m").unwrap().error_rate_permille, 333);
    }

    #[test]
    fn samples_leave_the_window_and_empty_windows_go() {
        let (k, clock) = keeper();
        k.observe(&[plain("old", "m", 200, 10)]);
        clock.advance(WINDOW_MS / 2);
        k.observe(&[plain("new", "m", 500, 10), plain("old", "m", 500, 10)]);
        let published = k.current().version;
        assert_eq!(score(&k, "old", "m").unwrap().samples, 2);

        clock.advance(WINDOW_MS / 2);
        k.tick();
        let old = score(&k, "old", "m").unwrap();
        assert_eq!((old.samples, old.error_rate_permille), (1, 1000));
        assert!(k.current().version > published);

        clock.advance(WINDOW_MS / 2);
        k.tick();
        assert!(k.current().scores.is_empty(), "{:?}", k.current());
        assert_eq!(k.window_count(), 0);

        // A batch resent after an outage is history, not a sample.
        let stale = UsageRecord {
            started_at_unix_ms: clock.now_ms() - WINDOW_MS - 1_000,
            ..plain("old", "m", 500, 10)
        };
        k.observe(&[stale]);
        assert_eq!(k.window_count(), 0);
    }

    #[test]
    fn a_429_cooldown_goes_out_at_once_and_ends() {
        let (k, clock) = keeper();
        k.observe(&[plain("openai", "gpt-4o", 200, 10)]);
        let v1 = k.current().version;
        clock.advance(10);
        // A 429 without Retry-After is an error but no cool-down.
        k.observe(&[plain("openai", "gpt-4o", 429, 10)]);
        assert_eq!(k.current().version, v1, "within the interval");
        let limited = UsageRecord {
            retry_after_s: 30,
            ..with_attempts(vec![
                attempt("openai", "gpt-4o", 429, 10),
                attempt("claude", "sonnet", 200, 100),
            ])
        };
        k.observe(std::slice::from_ref(&limited));
        let now = clock.now_ms();
        assert!(k.current().version > v1, "published within the interval");
        for model in ["gpt-4o", ""] {
            let s = score(&k, "openai", model).unwrap();
            assert_eq!(s.cooldown_until_unix_ms, now + 30_000, "{model:?}");
            assert_eq!(s.samples, 3);
        }
        assert_eq!(score(&k, "claude", "").unwrap().cooldown_until_unix_ms, 0);

        // Extending a published cool-down slightly waits for the regular publication.
        let v2 = k.current().version;
        clock.advance(100);
        k.observe(&[limited]);
        assert_eq!(k.current().version, v2);
        clock.advance(PUBLISH_INTERVAL_MS);
        k.tick();
        assert_eq!(
            score(&k, "openai", "").unwrap().cooldown_until_unix_ms,
            now + 100 + 30_000
        );

        // Past: dropped.
        clock.advance(30_000);
        k.tick();
        assert_eq!(score(&k, "openai", "").unwrap().cooldown_until_unix_ms, 0);

        // A huge Retry-After is capped.
        k.observe(&[UsageRecord {
            retry_after_s: u32::MAX,
            ..plain("slow", "", 429, 1)
        }]);
        let s = score(&k, "slow", "").unwrap();
        assert_eq!(s.cooldown_until_unix_ms, clock.now_ms() + MAX_COOLDOWN_MS);
        assert!(score(&k, "slow", "slow").is_none(), "no model, one window");
    }

    #[test]
    fn publishes_at_most_once_per_interval_and_only_changes() {
        let (k, clock) = keeper();
        let mut rx = k.subscribe();
        let v0 = rx.borrow_and_update().version;
        assert_eq!(v0, T0 as u64);
        k.observe(&[plain("p", "m", 200, 10)]);
        assert!(
            rx.has_changed().unwrap(),
            "the first figures go out at once"
        );
        let v1 = rx.borrow_and_update().version;
        assert!(v1 > v0);

        clock.advance(300);
        k.observe(&[plain("p", "m", 200, 10)]);
        k.tick();
        assert!(!rx.has_changed().unwrap());
        clock.advance(PUBLISH_INTERVAL_MS);
        k.tick();
        assert!(rx.has_changed().unwrap());
        let s = rx.borrow_and_update().clone();
        assert!(s.version > v1);
        assert_eq!(s.computed_at_unix_ms, clock.now_ms());
        assert_eq!(s.scores[0].samples, 2);

        // Nothing new: no publication, however many ticks.
        for _ in 0..5 {
            clock.advance(PUBLISH_INTERVAL_MS);
            k.tick();
        }
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn memory_is_bounded() {
        let (k, clock) = keeper();
        let many: Vec<UsageRecord> = (0..(MAX_SAMPLES as u64 * 2))
            .map(|i| plain("p", "m", 200, i))
            .collect();
        k.observe(&many);
        let s = score(&k, "p", "m").unwrap();
        assert_eq!(s.samples, MAX_SAMPLES as u32);
        // The newest are kept: latencies 500..999.
        assert_eq!(s.latency_p50_ms, 749);

        clock.advance(1);
        let models: Vec<UsageRecord> = (0..MAX_WINDOWS * 2)
            .map(|i| plain("p", &format!("model-{i}"), 200, 1))
            .collect();
        k.observe(&models);
        assert!(k.window_count() <= MAX_WINDOWS, "{}", k.window_count());
        assert_eq!(
            score(&k, "p", "").unwrap().samples,
            MAX_SAMPLES as u32,
            "the busy provider window stays"
        );
    }

    #[test]
    fn median_of_nothing_one_and_two() {
        assert_eq!(median(&mut []), 0);
        assert_eq!(median(&mut [7]), 7);
        assert_eq!(median(&mut [u32::MAX, u32::MAX]), u32::MAX);
        assert_eq!(median(&mut [3, 1, 2, 10]), 2);
    }

    /// Records the store already held (a resent batch) are not counted again.
    #[tokio::test]
    async fn duplicates_are_not_counted_twice() {
        let (svc, _dir) = crate::service::tests::service().await;
        let batch = [
            UsageRecord {
                request_id: "r1".into(),
                ..plain("p", "m", 500, 10)
            },
            UsageRecord {
                request_id: "r2".into(),
                ..plain("p", "m", 200, 10)
            },
        ];
        assert_eq!(svc.ingest_usage(&batch).await.unwrap(), 2);
        assert_eq!(svc.ingest_usage(&batch).await.unwrap(), 0);
        // A batch that repeats a request id within itself, and one new record.
        let again = [batch[0].clone(), batch[0].clone(), {
            let mut r = batch[1].clone();
            r.request_id = "r3".into();
            r
        }];
        assert_eq!(svc.ingest_usage(&again).await.unwrap(), 1);
        // The third record goes out with the ticker, within a publish interval.
        let mut rx = svc.scores();
        let find = |s: &pb::Scores| {
            s.scores
                .iter()
                .find(|s| s.provider == "p" && s.model == "m")
                .map(|s| (s.samples, s.error_rate_permille))
        };
        let published = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| find(s).is_some_and(|(n, _)| n >= 3)),
        )
        .await
        .expect("published within 5 s")
        .unwrap()
        .clone();
        assert_eq!(find(&published), Some((3, 333)));
    }
}
