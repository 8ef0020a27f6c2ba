//! The arithmetic of limits: a token bucket for the request rate, a rolling one-hour window of
//! token usage by the minute. Plain values, no clock of their own: every call takes `now_ms`.

/// Milli-tokens per request: the bucket counts in thousandths so refills stay exact in integers.
const MILLI: u64 = 1000;

/// Burst requests per second: holds up to `rps` requests and refills `rps` per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rps: u32,
    milli: u64,
    at_ms: i64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rps: u32, now_ms: i64) -> TokenBucket {
        TokenBucket {
            rps,
            milli: u64::from(rps) * MILLI,
            at_ms: now_ms,
        }
    }

    pub fn rps(&self) -> u32 {
        self.rps
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = u64::try_from(now_ms.saturating_sub(self.at_ms)).unwrap_or(0);
        let capacity = u64::from(self.rps) * MILLI;
        // rps tokens per second = rps milli-tokens per millisecond.
        self.milli = capacity.min(
            self.milli
                .saturating_add(elapsed.saturating_mul(u64::from(self.rps))),
        );
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// `None` when a request may go now; otherwise the whole seconds until one may (≥ 1).
    pub fn wait_s(&mut self, now_ms: i64) -> Option<u32> {
        self.refill(now_ms);
        if self.milli >= MILLI {
            return None;
        }
        let rate = u64::from(self.rps).max(1);
        let wait_ms = (MILLI - self.milli).div_ceil(rate);
        Some(u32::try_from(wait_ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX))
    }

    /// Takes one request (call after [`TokenBucket::wait_s`] said it may go).
    pub fn take(&mut self, now_ms: i64) {
        self.refill(now_ms);
        self.milli = self.milli.saturating_sub(MILLI);
    }
}

/// Minutes a window spans.
pub const WINDOW_MINUTES: i64 = 60;

/// Token usage of the last hour, by the minute it started in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HourWindow {
    /// (minute since the epoch, input, output), oldest first, at most one per minute.
    minutes: std::collections::VecDeque<(i64, u64, u64)>,
}

/// Input and output tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    pub input: u64,
    pub output: u64,
}

impl Used {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

impl HourWindow {
    /// Drops minutes that left the window.
    fn expire(&mut self, now_ms: i64) {
        let first = minute_of(now_ms) - WINDOW_MINUTES + 1;
        while self.minutes.front().is_some_and(|(m, _, _)| *m < first) {
            self.minutes.pop_front();
        }
    }

    /// Adds a request's tokens at the minute it started (a start older than the window adds
    /// nothing; one in the future counts as now).
    pub fn add(&mut self, started_ms: i64, input: u64, output: u64, now_ms: i64) {
        self.expire(now_ms);
        let minute = minute_of(started_ms.min(now_ms));
        if minute <= minute_of(now_ms) - WINDOW_MINUTES {
            return;
        }
        let at = self.minutes.partition_point(|(m, _, _)| *m < minute);
        match self.minutes.get_mut(at) {
            Some(slot) if slot.0 == minute => {
                slot.1 = slot.1.saturating_add(input);
                slot.2 = slot.2.saturating_add(output);
            }
            _ => self.minutes.insert(at, (minute, input, output)),
        }
    }

    /// (minute since the epoch, input, output) of every minute held, oldest first.
    pub fn minutes(&self) -> impl Iterator<Item = (i64, u64, u64)> + '_ {
        self.minutes.iter().copied()
    }

    /// Tokens of the window ending now.
    pub fn used(&mut self, now_ms: i64) -> Used {
        self.expire(now_ms);
        self.minutes
            .iter()
            .fold(Used::default(), |u, (_, i, o)| Used {
                input: u.input.saturating_add(*i),
                output: u.output.saturating_add(*o),
            })
    }

    /// For a request that does not fit now: whole seconds until `count(used) + extra <= limit`
    /// holds as minutes leave the window (≥ 1); `None` when it never will (the request alone is
    /// over the limit).
    pub fn wait_s(
        &mut self,
        now_ms: i64,
        limit: u64,
        extra: u64,
        count: impl Fn(Used) -> u64,
    ) -> Option<u32> {
        if extra > limit {
            return None;
        }
        let mut left = self.used(now_ms);
        for (minute, input, output) in &self.minutes {
            left.input = left.input.saturating_sub(*input);
            left.output = left.output.saturating_sub(*output);
            if count(left).saturating_add(extra) <= limit {
                let leaves_ms = (minute + WINDOW_MINUTES) * 60_000;
                let wait_ms = leaves_ms.saturating_sub(now_ms).max(1);
                return Some(u32::try_from(wait_ms.div_euclid(1000) + 1).unwrap_or(u32::MAX));
            }
        }
        Some(u32::try_from(WINDOW_MINUTES * 60).unwrap_or(3600))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let mut b = TokenBucket::new(10, T0);
        for _ in 0..10 {
            assert_eq!(b.wait_s(T0), None);
            b.take(T0);
        }
        assert_eq!(b.wait_s(T0), Some(1));
        // 100 ms later one request's worth is back.
        assert_eq!(b.wait_s(T0 + 99), Some(1));
        assert_eq!(b.wait_s(T0 + 100), None);
        b.take(T0 + 100);
        assert_eq!(b.wait_s(T0 + 100), Some(1));
        // Never more than the burst.
        let mut b = TokenBucket::new(2, T0);
        assert_eq!(b.wait_s(T0 + 3_600_000), None);
        b.take(T0 + 3_600_000);
        b.take(T0 + 3_600_000);
        assert_eq!(b.wait_s(T0 + 3_600_000), Some(1));
    }

    #[test]
    fn slow_bucket_says_how_long() {
        let mut b = TokenBucket::new(1, T0);
        b.take(T0);
        assert_eq!(b.wait_s(T0), Some(1));
        assert_eq!(b.wait_s(T0 + 500), Some(1));
        assert_eq!(b.wait_s(T0 + 1000), None);
    }

    #[test]
    fn window_counts_the_last_hour_only() {
        let mut w = HourWindow::default();
        w.add(T0, 100, 10, T0);
        w.add(T0 + 30 * 60_000, 200, 20, T0 + 30 * 60_000);
        // Same minute merges; out-of-order starts land in their minute.
        w.add(T0 + 30 * 60_000 + 5, 1, 1, T0 + 30 * 60_000 + 10);
        w.add(T0 + 10 * 60_000, 5, 5, T0 + 30 * 60_000 + 10);
        let now = T0 + 30 * 60_000 + 10;
        assert_eq!(
            w.used(now),
            Used {
                input: 306,
                output: 36
            }
        );
        // An hour after T0's minute, its tokens are gone.
        let later = (T0.div_euclid(60_000) + 60) * 60_000;
        assert_eq!(
            w.used(later),
            Used {
                input: 206,
                output: 26
            }
        );
        // Starts older than the window add nothing.
        w.add(later - 2 * 3_600_000, 1_000, 1_000, later);
        assert_eq!(w.used(later).total(), 232);
    }

    #[test]
    fn window_wait_is_until_enough_minutes_leave() {
        let mut w = HourWindow::default();
        let start = T0.div_euclid(60_000) * 60_000;
        w.add(start, 600, 0, start);
        w.add(start + 10 * 60_000, 300, 0, start + 10 * 60_000);
        let now = start + 20 * 60_000;
        let total = |u: Used| u.total();
        // Needs the first minute gone: 40 minutes from now.
        assert_eq!(w.wait_s(now, 1000, 200, total), Some(2401));
        // Needs both gone: 50 minutes.
        assert_eq!(w.wait_s(now, 1000, 800, total), Some(3001));
        // More than the limit alone: never.
        assert_eq!(w.wait_s(now, 1000, 1001, total), None);
    }
}
