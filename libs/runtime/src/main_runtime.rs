//! Work on the process's main runtime. actix-web serves each worker thread with its own
//! single-threaded runtime, and a socket belongs to the runtime that opened it; graceful
//! shutdown ends idle workers' runtimes first, and with them every connection they opened.
//! Backing-service I/O (database queries, the console's calls to the gateway) therefore runs
//! on the main runtime, which outlives the HTTP server ([`crate::database::Database`]).

use std::future::Future;

/// Runs `work` on `runtime` and waits for it, even if the caller stops waiting (the work is
/// never cut off midway). `None` when that runtime is shutting down; a panic in `work` is
/// resumed here.
pub async fn run_on<T, F>(runtime: &tokio::runtime::Handle, work: F) -> Option<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    match runtime.spawn(work).await {
        Ok(value) => Some(value),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => None,
    }
}
