//! Containment of a session that panics anyway. A panic is a bug, never
//! the client's due: the session driver catches it here, logs it as a
//! bug with the queue ID, answers `421 4.3.0` and ends the session, while
//! the daemon and every other session go on. What the session had in
//! flight is never half-written: a message gets `250` only after its
//! queue file or journal record is complete (each is written whole, or
//! removed, by its own writer), so the client that gets the 421 sends it
//! again.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `work` to completion; a panic inside it becomes `Err` with the
/// panic's message. The caller must treat whatever `work` borrowed as
/// possibly inconsistent (it may only answer and close).
pub async fn catch_panic<F: Future>(work: F) -> Result<F::Output, String> {
    CatchPanic {
        inner: Box::pin(work),
    }
    .await
    .map_err(|payload| message(payload.as_ref()))
}

/// The text a panic was raised with.
fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Polls the inner future inside `catch_unwind`.
struct CatchPanic<F: Future> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The future is not polled again after a panic: the caller gets
        // the error instead, so nothing observes its broken state through
        // it (AssertUnwindSafe's promise).
        let inner = self.inner.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::catch_panic;

    #[tokio::test]
    async fn a_panic_after_an_await_is_caught_with_its_message() {
        let mut state = 1;
        let out = catch_panic(async {
            state = 2;
            tokio::task::yield_now().await;
            let index = state + 40;
            let v: Vec<u8> = Vec::new();
            // An out-of-bounds index, as a slicing bug would make.
            v[index]
        })
        .await;
        let err = out.unwrap_err();
        assert!(err.contains("index out of bounds"), "{err}");
        // What the work borrowed is usable again (to answer and close).
        assert_eq!(state, 2);
        let formatted = catch_panic(async { panic!("bug {}", 7) }).await;
        assert_eq!(formatted.unwrap_err(), "bug 7");
    }

    #[tokio::test]
    async fn work_that_does_not_panic_passes_through() {
        let out = catch_panic(async {
            tokio::task::yield_now().await;
            42
        })
        .await;
        assert_eq!(out, Ok(42));
    }
}
