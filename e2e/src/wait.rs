//! Waiting on a condition with a deadline: the suite never sleeps blindly.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `check` every `interval` until it returns `Ok(Some(value))` or `timeout`
/// passes. An `Err` from `check` is remembered (the last one is in the timeout error)
/// and retried, since the API is allowed to be briefly unavailable.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let interval = Duration::from_millis(500);
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(interval).await;
    }
}
