//! Bodies: the types every response body is boxed into, the client's request body on
//! its way upstream (counted, limited, timed), and response bodies that report when
//! they end. Below the pool, the access phase and the proxy, which all pass them on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

/// Errors inside a proxied body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the dataplane sends.
pub(crate) type RespBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn full(text: &'static str) -> RespBody {
    http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// RFC 9110 section 7.6.1. `Trailer` is not among them: it declares the trailer fields
/// of the message, which pass end to end (and hyper sends HTTP/1 trailers only when it
/// declares them).
pub(crate) const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// How far the client's request body got: sent whole, or failed on the client's side.
#[derive(Clone)]
pub(crate) struct BodyProgress(Arc<ProgressState>);

struct ProgressState {
    sent: tokio::sync::watch::Sender<bool>,
    failed: std::sync::atomic::AtomicBool,
    stalled: std::sync::atomic::AtomicBool,
    too_large: std::sync::atomic::AtomicBool,
}

impl BodyProgress {
    pub(crate) fn new(sent: bool) -> Self {
        BodyProgress(Arc::new(ProgressState {
            sent: tokio::sync::watch::Sender::new(sent),
            failed: std::sync::atomic::AtomicBool::new(false),
            stalled: std::sync::atomic::AtomicBool::new(false),
            too_large: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The body grew past the farm's limit.
    pub(crate) fn fail_too_large(&self) {
        self.0.too_large.store(true, Ordering::Relaxed);
        self.fail(false);
    }

    pub(crate) fn too_large(&self) -> bool {
        self.0.too_large.load(Ordering::Relaxed)
    }

    pub(crate) fn finish(&self) {
        self.0.sent.send_replace(true);
    }

    pub(crate) fn fail(&self, stalled: bool) {
        self.0.failed.store(true, Ordering::Relaxed);
        self.0.stalled.store(stalled, Ordering::Relaxed);
        self.finish();
    }

    pub(crate) fn is_sent(&self) -> bool {
        *self.0.sent.borrow()
    }

    pub(crate) fn client_failed(&self) -> bool {
        self.0.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn stalled(&self) -> bool {
        self.0.stalled.load(Ordering::Relaxed)
    }

    /// Resolves once the body is sent whole (or failed).
    pub(crate) async fn sent(&self) {
        let mut rx = self.0.sent.subscribe();
        let _ = rx.wait_for(|sent| *sent).await;
    }
}

pin_project_lite::pin_project! {
    /// The client's request body: counts the bytes that pass for the access log, tells
    /// [`BodyProgress`] when it is sent or failed, and cuts a body that stalls longer than
    /// the farm's idle timeout.
    pub(crate) struct Counted {
        #[pin]
        pub(crate) inner: Incoming,
        pub(crate) count: Arc<std::sync::atomic::AtomicU64>,
        pub(crate) progress: BodyProgress,
        pub(crate) idle: Option<Pin<Box<tokio::time::Sleep>>>,
        pub(crate) idle_timeout: Duration,
        // The farm's body limit in bytes (`u64::MAX` for none).
        pub(crate) limit: u64,
    }
}

/// The client's request body grew past the farm's limit.
#[derive(Debug, thiserror::Error)]
#[error("failed to forward the request body: larger than the farm's limit")]
struct BodyTooLarge;

/// The client's request body stalled longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("failed to read the request body: idle timeout")]
struct BodyStalled;

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let before = this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                    if before.saturating_add(d.len() as u64) > *this.limit {
                        this.progress.fail_too_large();
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                if let Some(idle) = this.idle.as_mut() {
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + *this.idle_timeout);
                }
                if this.inner.is_end_stream() {
                    this.progress.finish();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.progress.fail(false);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.progress.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(idle) = this.idle.as_mut()
                    && idle.as_mut().poll(cx).is_ready()
                {
                    this.progress.fail(true);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a response body does when it ends: `complete` is false when it broke off.
pub(crate) trait EndHook {
    fn ended(&mut self, complete: bool);
}

/// A response body that tells its hook when it ends: its last frame is read (before it
/// is written), it fails, or it is dropped having been empty from the start (a body
/// that is never polled).
pub(crate) struct OnEnd<H: EndHook> {
    pub(crate) inner: RespBody,
    pub(crate) hook: H,
}

impl<H: EndHook + Unpin> Body for OnEnd<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Err(_))) => this.hook.ended(false),
            Poll::Ready(None) => this.hook.ended(true),
            _ if this.inner.is_end_stream() => this.hook.ended(true),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<H: EndHook> Drop for OnEnd<H> {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.hook.ended(true);
        }
    }
}
