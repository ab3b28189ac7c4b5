//! How long to wait between attempts.

use std::time::Duration;

use rand::Rng;

/// Retry settings: how many retries, and the exponential backoff with full jitter between
/// them (a random wait between zero and `base_delay × 2^retry`, capped at `max_delay`), so
/// that clients failing together do not retry together.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 4: five attempts in all).
    pub max_retries: u32,
    /// The backoff's first step (default 100 ms).
    pub base_delay: Duration,
    /// The longest wait between attempts, `Retry-After` included (default 5 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    #[must_use]
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The wait before retry number `retry` (0 for the first retry): the server's
    /// `Retry-After` if it sent one, else the jittered backoff; never above `max_delay`.
    #[must_use]
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_drawn_from(&mut rand::rng(), retry, retry_after)
    }

    /// [`delay`](Self::delay), drawing the jitter from `rng`: a seeded one gives the same
    /// waits on every run, which is what the tests of the distribution need.
    fn delay_drawn_from(
        &self,
        rng: &mut impl Rng,
        retry: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_delay);
        }
        // Full jitter: uniform in [0, ceiling).
        self.backoff_ceiling(retry).mul_f64(rng.random::<f64>())
    }

    /// The longest backoff before retry number `retry`: `base_delay × 2^retry`, capped at
    /// `max_delay` (and saturating rather than overflowing for absurd retry counts).
    fn backoff_ceiling(&self, retry: u32) -> Duration {
        self.base_delay
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// Draws per retry number: enough that each tenth of the range expects 400 of them.
    const DRAWS: usize = 4000;

    /// `DRAWS` backoffs before retry number `retry`, from a generator seeded with `seed`.
    fn draws(policy: &RetryPolicy, retry: u32, seed: u64) -> Vec<Duration> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..DRAWS)
            .map(|_| policy.delay_drawn_from(&mut rng, retry, None))
            .collect()
    }

    fn mean(delays: &[Duration]) -> Duration {
        delays.iter().sum::<Duration>() / u32::try_from(delays.len()).expect("few draws")
    }

    /// `base × 2^retry` capped at `max`, computed apart from the policy.
    fn expected_ceiling(retry: u32) -> Duration {
        (Duration::from_millis(100) * 2u32.pow(retry)).min(Duration::from_secs(5))
    }

    #[test]
    fn backoff_is_uniform_between_zero_and_the_capped_exponential_ceiling() {
        let policy = RetryPolicy::default();
        for retry in 0..10 {
            let ceiling = expected_ceiling(retry);
            let delays = draws(&policy, retry, u64::from(retry));
            assert!(
                delays.iter().all(|delay| *delay <= ceiling),
                "retry {retry}: every wait is within [0, {ceiling:?}]"
            );
            // Each tenth of the range gets about a tenth of the draws (400 expected; the
            // bounds are six standard deviations wide, and the seed makes the run repeatable).
            let mut tenths = [0usize; 10];
            for delay in &delays {
                let tenth = (delay.as_secs_f64() / ceiling.as_secs_f64() * 10.0) as usize;
                tenths[tenth.min(9)] += 1;
            }
            for (tenth, count) in tenths.iter().enumerate() {
                assert!(
                    (280..=520).contains(count),
                    "retry {retry}: {count} of {DRAWS} waits in tenth {tenth}, not uniform: \
                     {tenths:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_doubles_with_each_retry_until_the_cap() {
        let policy = RetryPolicy::default();
        let means: Vec<Duration> = (0..10)
            .map(|retry| mean(&draws(&policy, retry, 100 + u64::from(retry))))
            .collect();
        for (retry, mean) in (0..).zip(&means) {
            // The mean of a uniform draw over [0, ceiling] is half the ceiling; 5% is over ten
            // standard errors.
            let half = expected_ceiling(retry) / 2;
            let error = mean.abs_diff(half);
            assert!(
                error < half / 20,
                "retry {retry}: mean wait {mean:?}, expected about {half:?}"
            );
        }
        // 100 ms, 200 ms, ... 3.2 s, then the 5 s cap from the seventh retry on.
        assert!(means.windows(2).take(6).all(|pair| pair[1] > pair[0]));
        assert_eq!(policy.backoff_ceiling(6), Duration::from_secs(5));
        assert_eq!(policy.backoff_ceiling(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn the_default_generator_jitters() {
        let policy = RetryPolicy::default();
        let delays: Vec<Duration> = (0..100).map(|_| policy.delay(0, None)).collect();
        assert!(
            delays
                .iter()
                .all(|delay| *delay <= Duration::from_millis(100))
        );
        let first = delays[0];
        assert!(
            delays.iter().any(|delay| *delay != first),
            "a hundred waits, all {first:?}: not jittered"
        );
    }

    #[test]
    fn retry_after_replaces_the_backoff_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        for retry in [0, 3, 9] {
            assert_eq!(
                policy.delay_drawn_from(&mut rng, retry, Some(Duration::from_secs(2))),
                Duration::from_secs(2),
                "the server's wait, whatever the retry number"
            );
            assert_eq!(
                policy.delay_drawn_from(&mut rng, retry, Some(Duration::ZERO)),
                Duration::ZERO
            );
            assert_eq!(
                policy.delay_drawn_from(&mut rng, retry, Some(Duration::from_secs(60))),
                Duration::from_secs(5),
                "never above max_delay"
            );
        }
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }
}
