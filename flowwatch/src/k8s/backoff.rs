//! The pause before a failed watch is restarted: exponential with jitter, as kube-runtime's
//! `default_backoff` (backon's exponential backoff `with_jitter`): the base doubles from `min`
//! to `max`, and each pause is the base plus a random share of it, uniform in `[base, 2 * base)`.
//! Without the jitter every agent of a cluster, having lost the API server at the same moment,
//! would retry (and relist) at the same moments too. Pure: the randomness is a seeded
//! generator, so tests can replay it.

use std::time::Duration;

pub struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
    rng: u64,
}

impl Backoff {
    /// `seed` should differ between agents and watches (see [`Backoff::seed`]).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            base: min,
            // xorshift must not start at 0.
            rng: seed | 1,
        }
    }

    /// A seed from the process, the watch and the clock.
    pub fn seed(salt: u64) -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The next pause, then the base doubles (up to `max`).
    pub fn next_pause(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        base + base.mul_f64(self.uniform())
    }

    /// After a success: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.base = self.min;
    }

    /// Uniform in [0, 1) (xorshift64*).
    fn uniform(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn pauses_double_within_their_jitter_band_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(MIN, MAX, 42);
        let bases = [250, 500, 1000, 2000, 4000, 5000, 5000];
        for base in bases {
            let base = Duration::from_millis(base);
            let p = b.next_pause();
            assert!(
                p >= base && p < base * 2,
                "{p:?} not in [{base:?}, {:?})",
                base * 2
            );
        }
        b.reset();
        let p = b.next_pause();
        assert!(p >= MIN && p < MIN * 2, "{p:?}");
    }

    #[test]
    fn agents_failing_together_do_not_retry_together() {
        // 100 agents lose the API server at once: their first retries spread over the band.
        let firsts: Vec<Duration> = (0..100u64)
            .map(|agent| Backoff::new(MIN, MAX, Backoff::seed(agent)).next_pause())
            .collect();
        let lo = firsts.iter().min().unwrap();
        let hi = firsts.iter().max().unwrap();
        assert!(*lo >= MIN && *hi < MIN * 2);
        assert!(
            (*hi).checked_sub(*lo).unwrap() > MIN / 2,
            "spread {lo:?}..{hi:?}"
        );
        // Each 50 ms fifth of the 250 ms band expects 20 of them: none holds twice that (five
        // standard deviations), as one would if the draws clustered.
        let mut slots = [0usize; 5];
        for d in &firsts {
            slots[((d.as_millis() - 250) / 50) as usize] += 1;
        }
        assert!(slots.iter().all(|n| *n < 40), "{slots:?}");
        // And the same seed replays the same pauses.
        let a: Vec<_> = {
            let mut b = Backoff::new(MIN, MAX, 7);
            (0..5).map(|_| b.next_pause()).collect()
        };
        let mut b = Backoff::new(MIN, MAX, 7);
        assert_eq!(a, (0..5).map(|_| b.next_pause()).collect::<Vec<_>>());
    }

    #[test]
    fn the_uniform_draws_cover_the_unit_interval() {
        let mut b = Backoff::new(MIN, MAX, 1);
        let draws: Vec<f64> = (0..10_000).map(|_| b.uniform()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        let deciles = draws.iter().fold([0usize; 10], |mut d, x| {
            d[(x * 10.0) as usize] += 1;
            d
        });
        assert!(
            deciles.iter().all(|n| (850..1150).contains(n)),
            "{deciles:?}"
        );
    }
}
