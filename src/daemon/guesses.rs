//! Wrong provisioning passwords slow down the one who guesses, not the daemon.
//!
//! Each local uid has its own count of wrong passwords in a row and the earliest time its
//! next attempt may start. A uid with no wrong password pending may have a few attempts in
//! flight at once ([`PARALLEL_ATTEMPTS`]: a factory provisions several nodes through the
//! main node as one uid); once it has given a wrong one, its attempts run one at a time,
//! each after its delay on a timer: no lock of the node and no thread is held while it
//! waits, so other uids (GetCert, a right password) are served as usual, and an attempt
//! whose client has gone away is dropped with the connection before it starts.

use crate::error::{ErrorKind, Result};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The delay after the first wrong password; it doubles with each further one.
pub const WRONG_PASSWORD_BASE_DELAY: Duration = Duration::from_millis(250);
/// The longest delay after a wrong password.
pub const WRONG_PASSWORD_MAX_DELAY: Duration = Duration::from_secs(30);
/// Uids whose counts are kept at once; past it, those with no wait left are forgotten.
const MAX_TRACKED: usize = 4096;
/// Attempts one uid may have in flight at once while it has no wrong password pending.
pub const PARALLEL_ATTEMPTS: usize = 4;

/// The delay before answering the `n`th wrong password in a row (n ≥ 1).
pub fn wrong_password_delay(n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    WRONG_PASSWORD_BASE_DELAY
        .saturating_mul(factor)
        .min(WRONG_PASSWORD_MAX_DELAY)
}

#[derive(Default)]
struct Attempts {
    wrong_in_a_row: u32,
    next: Option<Instant>,
}

/// One uid's attempts: their count, and the places for attempts in flight.
struct Slot {
    attempts: smol::lock::Mutex<Attempts>,
    places: smol::lock::Semaphore,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            attempts: Default::default(),
            places: smol::lock::Semaphore::new(PARALLEL_ATTEMPTS),
        }
    }
}

#[derive(Default)]
pub struct Guesses {
    by_uid: Mutex<BTreeMap<u32, Arc<Slot>>>,
}

impl Guesses {
    fn slot(&self, uid: u32) -> Arc<Slot> {
        let mut map = crate::sys::lock(&self.by_uid);
        if map.len() >= MAX_TRACKED && !map.contains_key(&uid) {
            let now = Instant::now();
            map.retain(|_, a| {
                Arc::strong_count(a) > 1 || a.attempts.try_lock().is_some_and(|a| a.next.is_some_and(|t| t > now))
            });
        }
        map.entry(uid).or_default().clone()
    }

    /// Run `attempt`, a request that carries a password, as `uid`: after that uid's earlier
    /// attempts and their delays; a wrong password (an `unauthorized` answer) is answered
    /// after the next delay, a right one clears the count.
    pub async fn attempt<T>(&self, uid: u32, attempt: impl Future<Output = Result<T>>) -> Result<T> {
        let slot = self.slot(uid);
        let _place = slot.places.acquire().await;
        let mut a = slot.attempts.lock().await;
        if a.wrong_in_a_row == 0 {
            // Nothing wrong pending: run beside the uid's other attempts, and take the count
            // again for the answer.
            drop(a);
            let r = attempt.await;
            a = slot.attempts.lock().await;
            return self.record(uid, &mut a, r).await;
        }
        if let Some(wait) = a.next.and_then(|t| t.checked_duration_since(Instant::now())) {
            smol::Timer::after(wait).await;
        }
        let r = attempt.await;
        self.record(uid, &mut a, r).await
    }

    /// Count an attempt's answer; a wrong password is answered after its delay.
    async fn record<T>(&self, uid: u32, a: &mut Attempts, r: Result<T>) -> Result<T> {
        match &r {
            Err(e) if e.kind == ErrorKind::Unauthorized => {
                a.wrong_in_a_row = a.wrong_in_a_row.saturating_add(1);
                let delay = wrong_password_delay(a.wrong_in_a_row);
                a.next = Some(Instant::now() + delay);
                crate::log_warn!(
                    "wrong provisioning password from uid {uid} (attempt {} in a row); answering after {} ms",
                    a.wrong_in_a_row,
                    delay.as_millis()
                );
                smol::Timer::after(delay).await;
            }
            // Only a password that verified (the request done) ends a run of wrong ones:
            // any other refusal may come before the password is looked at (a CreateKey for
            // a type that does not exist), and interleaving such requests must not keep
            // every guess at the first delay.
            Ok(_) => {
                a.wrong_in_a_row = 0;
                a.next = None;
            }
            Err(_) => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn wrong_password_delay_grows_and_is_bounded() {
        assert_eq!(wrong_password_delay(1), WRONG_PASSWORD_BASE_DELAY);
        assert_eq!(wrong_password_delay(2), WRONG_PASSWORD_BASE_DELAY * 2);
        assert!(wrong_password_delay(3) > wrong_password_delay(2));
        assert_eq!(wrong_password_delay(100), WRONG_PASSWORD_MAX_DELAY);
    }

    #[test]
    fn a_uid_with_nothing_wrong_pending_has_its_attempts_run_side_by_side() {
        let g = Guesses::default();
        smol::block_on(async {
            let slow = || async {
                smol::Timer::after(Duration::from_millis(300)).await;
                Ok::<_, Error>(())
            };
            let t = Instant::now();
            let (a, b) = smol::future::zip(g.attempt(1, slow()), g.attempt(1, slow())).await;
            assert!(a.is_ok() && b.is_ok());
            assert!(t.elapsed() < Duration::from_millis(550), "{:?}", t.elapsed());
        });
    }

    #[test]
    fn one_uid_waits_out_its_delays_and_another_does_not() {
        let g = Guesses::default();
        smol::block_on(async {
            let wrong = || async { Err::<(), _>(Error::unauthorized("wrong password")) };
            let t = Instant::now();
            assert!(g.attempt(1, wrong()).await.is_err());
            assert!(g.attempt(1, wrong()).await.is_err());
            // 250 ms after the first, 500 after the second.
            assert!(t.elapsed() >= Duration::from_millis(750), "{:?}", t.elapsed());
            let t = Instant::now();
            g.attempt(2, async { Ok(()) }).await.unwrap();
            assert!(t.elapsed() < WRONG_PASSWORD_BASE_DELAY);
        });
    }
}
