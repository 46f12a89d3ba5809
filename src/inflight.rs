//! Requests in flight per session, so that nothing admitted with a pre-login vault
//! reaches the app after the login.
//!
//! Every request that presents a session ID is *admitted* on that ID before its session is
//! looked up, and stays admitted until the app's response head arrives. A login on the ID
//! *closes* it: new requests on it get 409 at once, and the login waits until every
//! request admitted before it has been answered; requests still unanswered after
//! `drain` are cancelled (their upstream request is dropped, the client gets 409), so an
//! attacker holding a request open with a planted ID cannot delay a login for long or
//! have that request processed after it. The state for an ID exists only while requests
//! on it are in flight: memory stays bounded by the number of open requests.
//!
//! This is per replica. Across replicas the login claim in the store does the same job
//! (see `rotate::Sessions::claim_login`), within the store cache's staleness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::session::{KeyMap, SessionKey};

#[derive(Default)]
pub struct InFlight {
    gates: KeyMap<Arc<Gate>>,
}

/// A gate exists per ID with requests in flight, so one is made for nearly every request:
/// flags and `Notify` (which allocates nothing) rather than channels.
struct Gate {
    state: Mutex<GateState>,
    /// Wakes a closing login when the count drops.
    drained: Notify,
    /// Set to cancel every admitted request.
    cancel: AtomicBool,
    /// Set at once by a login or logout: ends every stream (WebSocket tunnel, response
    /// still streaming) opened on the ID before it.
    ended: AtomicBool,
    /// Wakes whoever waits for `cancel` or `ended`.
    flagged: Notify,
}

impl Gate {
    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        self.flagged.notify_waiters();
    }

    /// Resolves once `flag` is set.
    async fn raised(&self, flag: &AtomicBool) {
        loop {
            // Made before the check: `notify_waiters` wakes a `Notified` made before
            // it even if not yet polled, so a flag set between the check and the await
            // is not missed.
            let notified = self.flagged.notified();
            if flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Default)]
struct GateState {
    /// Requests not yet answered by the app.
    admitted: usize,
    /// Answered, but their response (or tunnel) still streams.
    streams: usize,
    closed: bool,
}

/// A request on a session was refused: a login on it is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// One admitted request. Dropping it (the response head arrived, or the request failed)
/// releases it.
pub struct Ticket {
    key: SessionKey,
    gate: Arc<Gate>,
    owner: Arc<InFlight>,
    streaming: bool,
}

impl Ticket {
    /// Resolves when a login on this session cancels the request.
    pub async fn cancelled(&mut self) {
        self.gate.raised(&self.gate.cancel).await;
    }

    /// The app has answered, but its answer streams on (no length, or a protocol switch):
    /// a login no longer waits for it, and ends it at once.
    pub fn into_stream(mut self) -> Ticket {
        let closing = {
            let mut st = lock(&self.gate.state);
            st.admitted = st.admitted.saturating_sub(1);
            st.streams += 1;
            st.closed
        };
        self.streaming = true;
        if closing {
            self.gate.drained.notify_waiters();
        }
        self
    }

    /// Resolves when a login or logout on this session ends its streams.
    pub fn ended(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let gate = self.gate.clone();
        async move { gate.raised(&gate.ended).await }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let (now_empty, closing) = {
            let mut st = lock(&self.gate.state);
            if self.streaming {
                st.streams = st.streams.saturating_sub(1);
            } else {
                st.admitted = st.admitted.saturating_sub(1);
            }
            (st.admitted == 0 && st.streams == 0, st.closed)
        };
        // Only a closing login waits for the count (it closed the gate before waiting,
        // under the same lock).
        if closing {
            self.gate.drained.notify_waiters();
        }
        if now_empty {
            self.owner.forget_if_idle(&self.key, &self.gate);
        }
    }
}

/// A poisoned lock only means a panic elsewhere while counting; the counts stay usable.
fn lock(m: &Mutex<GateState>) -> std::sync::MutexGuard<'_, GateState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A closed session: the login holds it until dropped, then the ID may be admitted again
/// (its requests then find the rotated-away ID in the store).
pub struct Closing {
    key: SessionKey,
    gate: Arc<Gate>,
    owner: Arc<InFlight>,
    /// Requests cancelled because they were not answered in time.
    pub cancelled: usize,
}

impl Drop for Closing {
    fn drop(&mut self) {
        // Requests admitted from now on get a fresh gate; tickets of this one (the
        // login's own among them) keep it, closed, until they let go.
        self.owner
            .gates
            .remove_if(&self.key, |_, g| Arc::ptr_eq(g, &self.gate));
    }
}

impl InFlight {
    /// Admits a request on `key`, unless a login on it is in progress.
    pub fn admit(self: &Arc<Self>, key: SessionKey) -> Result<Ticket, Closed> {
        let gate = self
            .gates
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Gate {
                    state: Mutex::new(GateState::default()),
                    drained: Notify::new(),
                    cancel: AtomicBool::new(false),
                    ended: AtomicBool::new(false),
                    flagged: Notify::new(),
                })
            })
            .clone();
        {
            let mut st = lock(&gate.state);
            if st.closed {
                return Err(Closed);
            }
            st.admitted += 1;
        }
        Ok(Ticket {
            key,
            gate,
            owner: self.clone(),
            streaming: false,
        })
    }

    /// A logout on `key`: every stream opened on it ends now.
    pub fn end_streams(&self, key: &SessionKey) {
        if let Some(g) = self.gates.get(key) {
            g.raise(&g.ended);
        }
    }

    /// Closes `key` for a login whose own request holds `own`: refuses new requests,
    /// waits up to `drain` for the others to be answered, then cancels the rest and waits
    /// for them to let go. Fails if another login already closed it.
    pub async fn close(self: &Arc<Self>, own: &Ticket, drain: Duration) -> Result<Closing, Closed> {
        let gate = own.gate.clone();
        {
            let mut st = lock(&gate.state);
            if st.closed {
                return Err(Closed);
            }
            st.closed = true;
        }
        gate.raise(&gate.ended);
        let mut closing = Closing {
            key: own.key,
            gate: gate.clone(),
            owner: self.clone(),
            cancelled: 0,
        };
        let others = || lock(&gate.state).admitted.saturating_sub(1);
        let wait = async {
            loop {
                let notified = gate.drained.notified();
                if others() == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(drain, wait).await.is_err() {
            // Requests waiting for the app are dropped at once; one still reading its
            // body finds its session claimed when it is done (`still_current`). The flag
            // stays set: every ticket of this gate predates the login.
            closing.cancelled = others();
            gate.raise(&gate.cancel);
        }
        Ok(closing)
    }

    fn forget_if_idle(&self, key: &SessionKey, gate: &Arc<Gate>) {
        self.gates.remove_if(key, |_, g| {
            let st = lock(&g.state);
            Arc::ptr_eq(g, gate) && st.admitted == 0 && st.streams == 0 && !st.closed
        });
    }

    /// Sessions with requests in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.gates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SessionKey {
        SessionKey([b; 32])
    }

    #[tokio::test]
    async fn login_waits_for_requests_admitted_before_it() {
        let f = Arc::new(InFlight::default());
        let login = f.admit(key(1)).unwrap();
        let other = f.admit(key(1)).unwrap();
        let f2 = f.clone();
        let closing = tokio::spawn(async move {
            let c = f2
                .close(&login, Duration::from_secs(5))
                .await
                .map(|c| c.cancelled);
            (c, login)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !closing.is_finished(),
            "the login must wait for the other request"
        );
        assert_eq!(
            f.admit(key(1)).err(),
            Some(Closed),
            "new requests are refused"
        );
        assert!(f.admit(key(2)).is_ok(), "other sessions are not affected");
        drop(other);
        let (cancelled, login) = closing.await.unwrap();
        assert_eq!(cancelled, Ok(0));
        drop(login);
        assert!(f.admit(key(1)).is_ok(), "open again after the login");
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_requests_are_cancelled_after_the_drain() {
        let f = Arc::new(InFlight::default());
        let login = f.admit(key(1)).unwrap();
        let mut slow = f.admit(key(1)).unwrap();
        let held = tokio::spawn(async move {
            slow.cancelled().await;
            // Dropping the ticket is what the cancelled request does.
        });
        let closing = f.close(&login, Duration::from_secs(2)).await.unwrap();
        assert_eq!(closing.cancelled, 1);
        held.await.unwrap();
        assert!(
            f.admit(key(1)).is_err(),
            "still closed while the login runs"
        );
        drop(closing);
        drop(login);
        assert!(f.is_empty(), "no state left for idle sessions");
        let mut fresh = f.admit(key(1)).unwrap();
        let not_cancelled = tokio::time::timeout(Duration::from_secs(1), fresh.cancelled()).await;
        assert!(
            not_cancelled.is_err(),
            "a request after the login is not cancelled"
        );
    }

    #[tokio::test]
    async fn a_login_ends_streams_at_once_without_waiting_for_them() {
        let f = Arc::new(InFlight::default());
        let stream = f.admit(key(1)).unwrap().into_stream();
        let ended = stream.ended();
        let login = f.admit(key(1)).unwrap();
        let closing = tokio::time::timeout(
            Duration::from_secs(1),
            f.close(&login, Duration::from_secs(30)),
        )
        .await
        .expect("a stream must not hold up the login")
        .unwrap();
        tokio::time::timeout(Duration::from_secs(1), ended)
            .await
            .expect("the stream is told to end");
        drop((closing, login, stream));
        assert!(f.is_empty());
        // A logout ends streams too.
        let stream = f.admit(key(2)).unwrap().into_stream();
        let ended = stream.ended();
        f.end_streams(&key(2));
        tokio::time::timeout(Duration::from_secs(1), ended)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn two_logins_cannot_both_close() {
        let f = Arc::new(InFlight::default());
        let a = f.admit(key(1)).unwrap();
        let _closing = f.close(&a, Duration::from_secs(1)).await.unwrap();
        // A second ticket cannot even be admitted; a ticket from before cannot close.
        assert!(f.admit(key(1)).is_err());
    }
}
