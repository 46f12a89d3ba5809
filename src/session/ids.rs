//! Minting session IDs.
//!
//! Production uses [`ChaChaIds`]: a ChaCha20 CSPRNG (rand_chacha) seeded from the OS and
//! reseeded from the OS after every 64 KiB of output or hour, whichever comes first, so
//! that a leaked generator state exposes little. Minting happens only when a session is
//! created or rotated, never per request, so one mutex is no contention point. Unit
//! tests may plug in a deterministic [`IdSource`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::SysRng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{SessionId, ID_BYTES};

pub trait IdSource: Send + Sync + 'static {
    fn mint(&self) -> SessionId;
}

const RESEED_BYTES: usize = 64 * 1024;
const RESEED_AFTER: Duration = Duration::from_secs(3600);

pub struct ChaChaIds {
    state: Mutex<State>,
}

struct State {
    rng: ChaCha20Rng,
    since_seed: usize,
    seeded_at: Instant,
    /// How many times the generator was reseeded (tests).
    reseeds: u64,
    /// `RESEED_AFTER`, shorter in tests.
    reseed_after: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct EntropyError(String);

impl ChaChaIds {
    pub fn new() -> Result<ChaChaIds, EntropyError> {
        Ok(ChaChaIds {
            state: Mutex::new(State {
                rng: seed()?,
                since_seed: 0,
                seeded_at: Instant::now(),
                reseeds: 0,
                reseed_after: RESEED_AFTER,
            }),
        })
    }
}

fn seed() -> Result<ChaCha20Rng, EntropyError> {
    ChaCha20Rng::try_from_rng(&mut SysRng).map_err(|e| EntropyError(e.to_string()))
}

impl IdSource for ChaChaIds {
    fn mint(&self) -> SessionId {
        // A poisoned lock only means another thread panicked mid-mint; the generator
        // state is still a valid CSPRNG state.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.since_seed >= RESEED_BYTES || s.seeded_at.elapsed() >= s.reseed_after {
            match seed() {
                Ok(rng) => {
                    s.rng = rng;
                    s.since_seed = 0;
                    s.seeded_at = Instant::now();
                    s.reseeds = s.reseeds.wrapping_add(1);
                }
                // Keep the current (still secure) stream; try again next time.
                Err(e) => tracing::error!(error = %e, "reseeding the session ID generator failed"),
            }
        }
        let mut bytes = [0u8; ID_BYTES];
        s.rng.fill_bytes(&mut bytes);
        s.since_seed += ID_BYTES;
        SessionId::from_bytes(bytes)
    }
}

/// IDs 1, 2, 3, ... (each byte of the ID is the counter's low byte, the first eight
/// bytes its value): reproducible unit tests of the session lifecycle.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct SequentialIds(std::sync::atomic::AtomicU64);

#[cfg(test)]
impl IdSource for SequentialIds {
    fn mint(&self) -> SessionId {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut bytes = [n as u8; ID_BYTES];
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        SessionId::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn state(ids: &ChaChaIds) -> std::sync::MutexGuard<'_, State> {
        ids.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ID the old stream would have produced next.
    fn next_of(rng: &ChaCha20Rng) -> [u8; ID_BYTES] {
        let mut rng = rng.clone();
        let mut b = [0u8; ID_BYTES];
        rng.fill_bytes(&mut b);
        b
    }

    #[test]
    fn reseeds_after_its_byte_budget_with_a_fresh_stream() {
        let ids = ChaChaIds::new().unwrap();
        let per_seed = RESEED_BYTES / ID_BYTES;
        let mut seen: HashSet<String> = (0..per_seed).map(|_| ids.mint().cookie_value()).collect();
        assert_eq!(state(&ids).reseeds, 0, "reseeded before its budget");
        let old_next = next_of(&state(&ids).rng);
        let id = ids.mint();
        assert_eq!(
            state(&ids).reseeds,
            1,
            "no reseed after {RESEED_BYTES} bytes"
        );
        assert_ne!(
            id.cookie_value(),
            SessionId::from_bytes(old_next).cookie_value(),
            "the old stream went on"
        );
        seen.insert(id.cookie_value());
        assert_eq!(seen.len(), per_seed + 1);
    }

    #[test]
    fn reseeds_after_its_time_budget() {
        let ids = ChaChaIds::new().unwrap();
        ids.mint();
        assert_eq!(state(&ids).reseeds, 0);
        state(&ids).reseed_after = Duration::ZERO;
        let old_next = next_of(&state(&ids).rng);
        let id = ids.mint();
        assert_eq!(state(&ids).reseeds, 1);
        assert_ne!(
            id.cookie_value(),
            SessionId::from_bytes(old_next).cookie_value()
        );
    }
}
