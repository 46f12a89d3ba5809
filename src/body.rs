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
