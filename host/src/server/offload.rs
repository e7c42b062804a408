//! Work that grows with a message's size runs on tokio's blocking threads:
//! the async workers are few (one per core), and a scan or copy of one
//! client's 10 MB message must never delay another client's banner.

/// Content up to this size is handled in place: a scan of it costs less
/// than handing it to another thread (well under a millisecond, whatever
/// the content), which keeps the common small message cheap.
pub const IN_PLACE: usize = 64 * 1024;

/// Runs `work` on `content`: in place when it holds at most [`IN_PLACE`]
/// bytes, else on a blocking thread. `work` takes the content and gives it
/// back (edited or not) with its result; an error means it panicked.
pub async fn by_size<T: Send + 'static>(
    content: Vec<u8>,
    work: impl FnOnce(Vec<u8>) -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if content.len() <= IN_PLACE {
        return Ok(work(content));
    }
    tokio::task::spawn_blocking(move || work(content)).await
}
