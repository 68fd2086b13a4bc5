//! The fleet summary, recomputed at most once a second and shared by every request: counting
//! online devices scans the fleet, which at a million devices takes far longer than a request
//! may. While one request refreshes, the others get the previous summary.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use otaledger_projections::fleet::{self, Summary};
use sqlx::PgPool;

#[derive(Debug)]
pub struct SummaryCache {
    max_age: Duration,
    value: RwLock<Option<(Instant, Arc<Summary>)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl SummaryCache {
    #[must_use]
    pub fn new(max_age: Duration) -> Self {
        SummaryCache {
            max_age,
            value: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<(Instant, Arc<Summary>)> {
        self.value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fresh(&self) -> Option<Arc<Summary>> {
        self.current()
            .filter(|(at, _)| at.elapsed() < self.max_age)
            .map(|(_, v)| v)
    }

    pub async fn get(
        &self,
        pool: &PgPool,
        offline_after: Duration,
    ) -> otaledger_projections::Result<Arc<Summary>> {
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let _guard = match self.refresh.try_lock() {
            Ok(g) => g,
            Err(_) => {
                if let Some((_, stale)) = self.current() {
                    return Ok(stale);
                }
                self.refresh.lock().await
            }
        };
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let summary = Arc::new(fleet::summary(pool, offline_after).await?);
        *self.value.write().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), summary.clone()));
        Ok(summary)
    }
}
