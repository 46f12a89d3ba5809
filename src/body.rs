//! Body helpers: a capped peek at the start of a streaming body.
//!
//! Login rules may need the first bytes of a response body (or a login form's request
//! body) before the response head can be sent. [`peek`] reads frames until it holds
//! `cap` bytes or the body ends, and hands back a body that replays those frames and
//! then streams the rest, so nothing is lost and nothing beyond the cap is buffered.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, StreamBody};

use crate::{Body, BoxError};

pub async fn peek(
    mut body: Body,
    cap: usize,
    deadline: Duration,
) -> Result<(Bytes, Body), BoxError> {
    let mut seen = BytesMut::new();
    let mut frames = Vec::new();
    while seen.len() < cap {
        match tokio::time::timeout(deadline, body.frame()).await {
            Err(_) => return Err("body stalled while being inspected".into()),
            Ok(None) => break,
            Ok(Some(frame)) => {
                let frame = frame?;
                if let Some(data) = frame.data_ref() {
                    seen.extend_from_slice(data);
                }
                frames.push(frame);
            }
        }
    }
    seen.truncate(cap);
    let replay = futures_util::stream::iter(frames.into_iter().map(Ok));
    let body = BodyExt::boxed(StreamBody::new(replay.chain(BodyStream::new(body))));
    Ok((seen.freeze(), body))
}

/// A body that ends with an error as soon as `stop` resolves (a login or logout on the
/// session it was opened on), holding `guard` as long as it streams.
pub fn until<G: Send + Sync + Unpin + 'static>(
    body: Body,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    guard: G,
) -> Body {
    Until {
        inner: body,
        stop: Box::pin(stop),
        _guard: guard,
    }
    .boxed()
}

struct Until<G> {
    inner: Body,
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Until<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.stop.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(
                "the session this stream was opened on changed".into(),
            )));
        }
        std::pin::Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::full_body;

    #[tokio::test]
    async fn peek_replays_everything() {
        let body = full_body("hello world, this is the body");
        let (head, body) = peek(body, 5, Duration::from_secs(1)).await.unwrap();
        assert_eq!(head, "hello");
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all, "hello world, this is the body");
    }
}
