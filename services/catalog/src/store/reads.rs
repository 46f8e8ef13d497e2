//! Single-product reads, coalesced: while a query runs, the ids asked for meanwhile wait and go
//! together in the next one (`WHERE id = ANY($1)`), each id once. Under load one PostgreSQL
//! round trip answers many requests; alone, a read goes at once and waits for nobody. A read
//! waits only for a query that starts after it was asked, so it never sees an older product
//! than a query of its own would have.

use std::{collections::HashMap, sync::Arc};

use futures_util::{StreamExt, stream::FuturesUnordered};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::Product;

/// Ids read by one query at most.
const BATCH: usize = 256;
/// Reads waiting for a query at most; past that, callers wait to be queued.
const QUEUE: usize = 4096;

type Answer = Result<Option<Product>, Arc<sqlx::Error>>;

struct Read {
    id: Uuid,
    answer: oneshot::Sender<Answer>,
}

/// The reader's queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reads {
    queue: mpsc::Sender<Read>,
}

impl std::fmt::Debug for Read {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Read")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Reads {
    /// Starts the reader on the current runtime, with at most `in_flight` queries at once.
    /// `pool`'s connections must live as long as every caller may wait: a pool of its own
    /// opened on the same runtime (an HTTP worker's), or one on the main runtime. It stops when
    /// every clone of the returned handle is gone.
    pub fn start(pool: PgPool, in_flight: usize) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, requests, in_flight.max(1)));
        Self { queue }
    }

    /// The product `id`, `None` if there is none.
    pub async fn get(&self, id: Uuid) -> Answer {
        let (answer, answered) = oneshot::channel();
        if self.queue.send(Read { id, answer }).await.is_err() {
            return Err(Arc::new(sqlx::Error::PoolClosed)); // the reader's runtime is stopping
        }
        answered
            .await
            .unwrap_or_else(|_| Err(Arc::new(sqlx::Error::PoolClosed)))
    }
}

async fn run(pool: PgPool, mut requests: mpsc::Receiver<Read>, in_flight: usize) {
    let mut waiting = Vec::with_capacity(BATCH);
    let mut running = FuturesUnordered::new();
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            taken = requests.recv_many(&mut waiting, BATCH), if open && running.len() < in_flight => {
                if taken == 0 {
                    open = false;
                } else {
                    running.push(answer(&pool, std::mem::take(&mut waiting)));
                }
            }
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

/// One query for every id of `reads`; each read gets its product (or `None`), or the error.
async fn answer(pool: &PgPool, reads: Vec<Read>) {
    let mut ids: Vec<Uuid> = reads.iter().map(|read| read.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let found = sqlx::query_as::<_, Product>("SELECT * FROM products WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(pool)
        .await;
    match found {
        Ok(products) => {
            let by_id: HashMap<Uuid, Product> = products.into_iter().map(|p| (p.id, p)).collect();
            for read in reads {
                let _ = read.answer.send(Ok(by_id.get(&read.id).cloned()));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for read in reads {
                let _ = read.answer.send(Err(Arc::clone(&error)));
            }
        }
    }
}
