//! Response bodies: the body type the layer returns, and reading an inner service's body up
//! to the storage limit and a deadline without ever withholding any of it from the client.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use idem_core::BoxError;

/// The body type of every response the layer returns.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response body read up to a limit.
pub(crate) enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The body went past the limit, carried trailers, or failed mid-way: what was read so
    /// far, and the rest, still to be sent to the client.
    Partial(ResponseBody),
}

/// Reads `body` until its end or until more than `limit` bytes arrived. A body with trailers
/// (gRPC's status) is handed on whole, trailers included, and not stored: a replay without
/// them would tell another story.
///
/// Reading stops at `deadline` too: a body that streams for longer than that (server-sent
/// events, a stalled upstream) is handed on to the client as it comes, and the key is
/// completed without it (the lease is renewed meanwhile, so it never lapses while we read).
pub(crate) async fn buffer_body<B>(
    body: B,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Buffered
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Boxed so that, past the limit, the rest of the body can be handed on to the client.
    let mut body = Box::pin(body);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            return Buffered::Partial(prefixed(chunks, Ok(body)));
        };
        match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    size += data.len();
                    chunks.push(data);
                    if size > limit {
                        return Buffered::Partial(prefixed(chunks, Ok(body)));
                    }
                }
                // A response with trailers (gRPC's `grpc-status`) cannot be stored: a record
                // keeps a status, headers and a body. It goes on to the client whole, and
                // is kept as not stored, as a body over the limit is.
                Err(trailers) => {
                    let mut frames: Vec<Frame<Bytes>> =
                        chunks.into_iter().map(Frame::data).collect();
                    frames.push(trailers);
                    return Buffered::Partial(framed(frames, Ok(body)));
                }
            },
            Some(Err(error)) => {
                return Buffered::Partial(prefixed::<B>(chunks, Err(error.into())));
            }
        }
    }
    let mut whole = BytesMut::with_capacity(size);
    for chunk in chunks {
        whole.extend_from_slice(&chunk);
    }
    Buffered::Complete(whole.freeze())
}

/// A body that yields `chunks`, then whatever `rest` yields (or the error that cut it).
fn prefixed<B>(chunks: Vec<Bytes>, rest: Result<std::pin::Pin<Box<B>>, BoxError>) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    framed(chunks.into_iter().map(Frame::data).collect(), rest)
}

/// A body that yields `frames`, then whatever `rest` yields (or the error that cut it).
fn framed<B>(
    frames: Vec<Frame<Bytes>>,
    rest: Result<std::pin::Pin<Box<B>>, BoxError>,
) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let head = futures_util::stream::iter(frames.into_iter().map(Ok));
    match rest {
        Ok(rest) => {
            let rest = BodyStream::new(rest).map(|frame| frame.map_err(Into::into));
            StreamBody::new(head.chain(rest)).boxed_unsync()
        }
        Err(error) => {
            StreamBody::new(head.chain(futures_util::stream::iter([Err(error)]))).boxed_unsync()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + std::time::Duration::from_secs(60)
    }

    #[tokio::test]
    async fn a_body_with_trailers_is_handed_on_with_them_and_not_stored() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"message"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let Buffered::Partial(mut rest) = buffer_body(body, 1024, far()).await else {
            panic!("a body with trailers cannot be stored");
        };
        let data = rest.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, Bytes::from_static(b"message"));
        let trailers = rest
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(
            trailers["grpc-status"], "14",
            "the client gets the trailers"
        );
        assert!(rest.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_still_streaming_at_the_deadline_is_handed_on_whole() {
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"first;"))))
            .await
            .unwrap();
        let body = StreamBody::new(tokio_stream_from(receiver));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let Buffered::Partial(rest) = buffer_body(body, 1024, deadline).await else {
            panic!("the body was still streaming at the deadline");
        };
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"second"))))
            .await
            .unwrap();
        drop(sender);
        assert_eq!(rest.collect().await.unwrap().to_bytes(), "first;second");
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }

    #[tokio::test]
    async fn body_within_limit_is_complete() {
        match buffer_body(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            5,
            far(),
        )
        .await
        {
            Buffered::Complete(bytes) => assert_eq!(bytes, "hello"),
            Buffered::Partial(_) => panic!("5 bytes fit a 5-byte limit"),
        }
    }

    #[tokio::test]
    async fn body_over_limit_still_reaches_the_client_whole() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..10)
            .map(|n| Ok(Frame::data(Bytes::from(format!("chunk{n};")))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        match buffer_body(body, 20, far()).await {
            Buffered::Partial(rest) => {
                let all = rest.collect().await.unwrap().to_bytes();
                let expected: String = (0..10).map(|n| format!("chunk{n};")).collect();
                assert_eq!(all, expected.as_bytes());
            }
            Buffered::Complete(_) => panic!("70 bytes exceed a 20-byte limit"),
        }
    }
}
