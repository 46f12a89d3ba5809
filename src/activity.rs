//! The head deadline of a client connection (`server.header_read_timeout`): a connection
//! with no request in progress, whether waiting for its first head, trickling one in
//! (slowloris) or idle between keep-alive requests, is closed once that long has passed.
//!
//! hyper has this deadline built in, but arms a timer for every request head: a boxed
//! sleep, a clock read and a timer-wheel insert and removal per request, about 5% of a
//! proxied request's instructions. Here one timer per connection ticks at an eighth of
//! the deadline, and each request only bumps two counters: a request is in progress from
//! its complete head until its response body is dropped (sent, or abandoned). A
//! connection is closed between 1 and 1.25 times `header_read_timeout` after its last
//! request ended (or after it was accepted), never sooner.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::{Body, BoxError};

/// A connection's requests: started (head complete) and not yet ended.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    open: AtomicUsize,
}

impl Activity {
    /// A request's head is complete: it is in progress until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InProgress {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        InProgress(self.clone())
    }

    /// Returns once the connection has had no request in progress for `limit` (and at
    /// most two ticks more): the caller then closes it.
    pub async fn idle_for(&self, limit: Duration) {
        let tick = (limit / 8).max(Duration::from_millis(10));
        let mut seen = self.started.load(Ordering::Relaxed);
        let mut idle = Duration::ZERO;
        loop {
            tokio::time::sleep(tick).await;
            let started = self.started.load(Ordering::Relaxed);
            if self.open.load(Ordering::Relaxed) > 0 || started != seen {
                seen = started;
                idle = Duration::ZERO;
                continue;
            }
            // Counted from the last tick that saw activity, which may be up to a tick
            // after the last request ended, and the first idle tick up to a tick after
            // that: strictly more than `limit` is never less than `limit` since the end.
            idle = idle.saturating_add(tick);
            if idle > limit {
                return;
            }
        }
    }
}

/// One request in progress; dropped with its response body.
#[derive(Debug)]
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in progress until it is dropped.
pub struct Tracked {
    inner: Body,
    _request: InProgress,
}

impl Tracked {
    pub fn new(inner: Body, request: InProgress) -> Tracked {
        Tracked {
            inner,
            _request: request,
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(8);

    /// How long `idle_for(LIMIT)` takes while `alongside` runs (paused time).
    async fn closed_after(
        activity: &Activity,
        alongside: impl std::future::Future<Output = ()>,
    ) -> Duration {
        let started = tokio::time::Instant::now();
        let ((), ()) = tokio::join!(activity.idle_for(LIMIT), alongside);
        started.elapsed()
    }

    fn assert_within(waited: Duration, from_ms: u64, to_ms: u64) {
        assert!(
            waited >= Duration::from_millis(from_ms) && waited <= Duration::from_millis(to_ms),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_within_a_quarter_of_the_limit_after() {
        let activity = Arc::new(Activity::default());
        let waited = closed_after(&activity, async {}).await;
        assert_within(waited, 8_000, 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_holds_the_connection_open_and_its_end_restarts_the_wait() {
        let activity = Arc::new(Activity::default());
        let request = activity.begin();
        let ends = async {
            // A response streaming for three deadlines (ending on a tick: either order).
            tokio::time::sleep(Duration::from_secs(24)).await;
            drop(request);
        };
        assert_within(closed_after(&activity, ends).await, 32_000, 34_000);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_end_within_the_limit_keep_the_connection() {
        let activity = Arc::new(Activity::default());
        let requests = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(5_500)).await;
                drop(activity.begin());
            }
        };
        // The last request ended at 27.5 s: closed 8 to 10 s after it.
        assert_within(closed_after(&activity, requests).await, 35_500, 37_500);
    }
}
