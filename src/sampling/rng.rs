//! A replayable ChaCha20 random stream whose position can be saved and resumed (sampling.md,
//! "Selection").

use rand::{Rng, SeedableRng, TryRngCore};
use rand_chacha::ChaCha20Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The saved position of a sampling stream: enough to resume it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RngState {
    /// Seed given to `ChaCha20Rng::seed_from_u64`.
    pub seed: u64,
    /// ChaCha20 word position (32-bit words consumed so far; one uniform draw uses two).
    pub pos: u64,
}

/// A seeded ChaCha20 stream of uniform draws in [0, 1).
#[derive(Debug, Clone)]
pub struct StreamRng {
    rng: ChaCha20Rng,
    seed: u64,
    /// Mirostat's running `mu`, carried with the stream (the branch's adaptive state).
    pub mirostat_mu: Option<f64>,
}

impl StreamRng {
    /// Opens the stream at `state`: `ChaCha20Rng::seed_from_u64(seed)`, then `set_word_pos(pos)`.
    pub fn new(state: RngState) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(state.seed);
        rng.set_word_pos(u128::from(state.pos));
        Self {
            rng,
            seed: state.seed,
            mirostat_mu: None,
        }
    }

    /// Exactly one uniform draw in [0, 1) (rand's `random::<f64>()`); advances the position.
    pub fn next_uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// The current position, to be saved and passed to [`StreamRng::new`] later.
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.seed,
            pos: u64::try_from(self.rng.get_word_pos()).unwrap_or(u64::MAX),
        }
    }

    /// A fresh seed from the operating system (falls back to the thread RNG, itself seeded by
    /// the OS, if the OS source fails).
    pub fn os_seed() -> u64 {
        rand::rngs::OsRng
            .try_next_u64()
            .unwrap_or_else(|_| rand::random::<u64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_reproduces_draws() {
        let mut a = StreamRng::new(RngState { seed: 42, pos: 0 });
        let first: Vec<f64> = (0..5).map(|_| a.next_uniform()).collect();
        let saved = a.state();
        assert_eq!(saved, RngState { seed: 42, pos: 10 });
        let rest: Vec<f64> = (0..7).map(|_| a.next_uniform()).collect();

        let mut b = StreamRng::new(saved);
        let resumed: Vec<f64> = (0..7).map(|_| b.next_uniform()).collect();
        assert_eq!(rest, resumed);
        assert_eq!(a.state(), b.state());

        let mut c = StreamRng::new(RngState { seed: 42, pos: 0 });
        let again: Vec<f64> = (0..12).map(|_| c.next_uniform()).collect();
        assert_eq!(&again[..5], &first[..]);
        assert_eq!(&again[5..], &rest[..]);
        assert!(again.iter().all(|u| (0.0..1.0).contains(u)));
    }

    #[test]
    fn resume_at_odd_position_and_across_blocks() {
        for pos in [1u64, 15, 16, 17, 31, 63, 1001] {
            let mut a = StreamRng::new(RngState { seed: 7, pos });
            let _ = a.next_uniform();
            let s = a.state();
            let x: Vec<f64> = (0..20).map(|_| a.next_uniform()).collect();
            let mut b = StreamRng::new(s);
            let y: Vec<f64> = (0..20).map(|_| b.next_uniform()).collect();
            assert_eq!(x, y, "pos {pos}");
        }
    }

    #[test]
    fn different_seeds_differ_and_os_seed_works() {
        let mut a = StreamRng::new(RngState { seed: 1, pos: 0 });
        let mut b = StreamRng::new(RngState { seed: 2, pos: 0 });
        assert_ne!(a.next_uniform(), b.next_uniform());
        // Two OS seeds are equal with probability 2^-64.
        assert_ne!(StreamRng::os_seed(), StreamRng::os_seed());
    }
}
