//! Exponential backoff with decorrelated jitter, for every retry loop of the process.
//!
//! Why jitter: one process runs several roots, and a ZooKeeper or Redis outage hits them all at
//! the same instant. Without jitter their retries stay in lockstep (100 ms, 200 ms, 400 ms, ...)
//! and land on the recovering server together, every time. With "decorrelated jitter" (from
//! AWS's "Exponential Backoff And Jitter") each delay is drawn uniformly from
//! `[base, 3 × previous delay]` and capped, so the delays still grow about exponentially but
//! the retries of different loops spread out after the first one and never fall back into step.
//!
//! Unlike "full jitter" (uniform in `[0, base × 2^n]`), a delay is never below `base`: a loop
//! never spins against a server that refuses connections at once.

use std::time::Duration;

/// The delays of one retry loop: [`Backoff::next_delay`] after each failure, [`Backoff::reset`] after
/// a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// The delay the next call to [`Backoff::next_delay`] returns (drawn in advance so that
    /// [`Backoff::peek`] can log it before sleeping).
    upcoming: Duration,
    rng: fastrand::Rng,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    /// From 100 ms to 10 s, seeded from the process's random source.
    pub fn new() -> Backoff {
        Backoff::between(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// From `base` to `cap` (a `cap` below `base` is raised to `base`). A zero `base` is
    /// raised to 1 ms: a delay of zero would make the loop spin.
    pub fn between(base: Duration, cap: Duration) -> Backoff {
        Backoff::seeded(base, cap, fastrand::Rng::new())
    }

    /// Like [`Backoff::between`], with a fixed seed: the same seed gives the same delays.
    #[cfg(test)]
    pub fn with_seed(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff::seeded(base, cap, fastrand::Rng::with_seed(seed))
    }

    fn seeded(base: Duration, cap: Duration, rng: fastrand::Rng) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        let cap = cap.max(base);
        let mut backoff = Backoff { base, cap, upcoming: base, rng };
        backoff.upcoming = backoff.draw(base);
        backoff
    }

    /// The delay the next [`Backoff::next_delay`] returns, without advancing.
    #[cfg(test)]
    pub fn peek(&self) -> Duration {
        self.upcoming
    }

    /// The delay to wait before the next retry; each call may return a longer one.
    pub fn next_delay(&mut self) -> Duration {
        let now = self.upcoming;
        self.upcoming = self.draw(now);
        now
    }

    /// Back to the shortest delays, after a success.
    pub fn reset(&mut self) {
        self.upcoming = self.draw(self.base);
    }

    /// Uniform in `[base, 3 × previous]`, capped. Nanoseconds fit a u64 for 584 years, and the
    /// cap bounds `previous`, so the saturating arithmetic below never saturates in practice.
    fn draw(&mut self, previous: Duration) -> Duration {
        let low = u64::try_from(self.base.as_nanos()).unwrap_or(u64::MAX);
        let cap = u64::try_from(self.cap.as_nanos()).unwrap_or(u64::MAX);
        let high = u64::try_from(previous.as_nanos()).unwrap_or(u64::MAX).saturating_mul(3).min(cap).max(low);
        Duration::from_nanos(self.rng.u64(low..=high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(10);

    #[test]
    fn every_delay_lies_between_base_and_cap() {
        for seed in 0..200 {
            let mut backoff = Backoff::with_seed(BASE, CAP, seed);
            for _ in 0..50 {
                let d = backoff.next_delay();
                assert!((BASE..=CAP).contains(&d), "seed {seed}: {d:?}");
            }
        }
    }

    #[test]
    fn the_first_delay_is_short_and_delays_grow_to_the_cap() {
        for seed in 0..200 {
            let mut backoff = Backoff::with_seed(BASE, CAP, seed);
            let first = backoff.next_delay();
            assert!(first <= 3 * BASE, "seed {seed}: first delay {first:?}");
            // A delay at most triples, so the cap needs at least log3(100) ≈ 4.2 steps; with
            // jitter it takes more, but it gets there.
            let longest = (0..200).map(|_| backoff.next_delay()).max().unwrap_or_default();
            assert!(longest >= CAP / 2, "seed {seed}: longest of 200 delays {longest:?}");
        }
    }

    #[test]
    fn peek_tells_what_next_returns() {
        let mut backoff = Backoff::with_seed(BASE, CAP, 7);
        for _ in 0..20 {
            let peeked = backoff.peek();
            assert_eq!(backoff.next_delay(), peeked);
        }
    }

    #[test]
    fn reset_starts_over_from_the_base() {
        let mut backoff = Backoff::with_seed(BASE, CAP, 3);
        for _ in 0..30 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= 3 * BASE);
    }

    /// The point of the jitter: loops that start failing together do not retry together.
    #[test]
    fn loops_failing_together_do_not_retry_in_lockstep() {
        let mut a = Backoff::with_seed(BASE, CAP, 1);
        let mut b = Backoff::with_seed(BASE, CAP, 2);
        let (mut at_a, mut at_b) = (Duration::ZERO, Duration::ZERO);
        let mut same = 0;
        for _ in 0..10 {
            at_a += a.next_delay();
            at_b += b.next_delay();
            if at_a.abs_diff(at_b) < Duration::from_millis(1) {
                same += 1;
            }
        }
        assert!(same < 10, "ten retries at the same instants");
        // Two unseeded ones differ too (seeded from the process's random source).
        let (mut c, mut d) = (Backoff::new(), Backoff::new());
        let firsts: Vec<_> = (0..5).map(|_| (c.next_delay(), d.next_delay())).collect();
        assert!(firsts.iter().any(|(x, y)| x != y), "{firsts:?}");
    }

    #[test]
    fn degenerate_bounds_never_give_a_zero_or_inverted_range() {
        let mut zero = Backoff::with_seed(Duration::ZERO, Duration::ZERO, 5);
        assert_eq!(zero.next_delay(), Duration::from_millis(1));
        let mut inverted = Backoff::with_seed(Duration::from_secs(2), Duration::from_secs(1), 5);
        assert_eq!(inverted.next_delay(), Duration::from_secs(2));
        let mut huge = Backoff::with_seed(Duration::from_secs(1), Duration::MAX, 5);
        for _ in 0..100 {
            assert!(huge.next_delay() >= Duration::from_secs(1));
        }
    }
}
