//! epigrid's [`Store`] on PostgreSQL, for server deployments where several `epigrid serve`
//! processes share one database.
//!
//! Registrations go through a per-process batcher: whatever is queued is written in one
//! transaction with multi-row statements (persons, registrations, companions, rollups), so a
//! burst costs a few round trips and one WAL flush instead of one each. Rows are written in a
//! fixed order (persons by id, rollups by key) so batches from several processes cannot
//! deadlock. If a batch fails, each registration is retried alone so one bad row cannot fail
//! its neighbours.

mod migrate;
mod queries;
mod write;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use epigrid_core::model::NewRegistration;
use epigrid_core::store::{StoreError, StoreResult};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

/// Most registrations one batch transaction takes.
pub const MAX_BATCH: usize = 256;

type Pending = (NewRegistration, oneshot::Sender<StoreResult<i64>>);

pub struct PgStore {
    pool: Pool,
    batcher: mpsc::Sender<Pending>,
}

pub(crate) fn map_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(db.constraint().unwrap_or("unique").to_string());
        }
        // a NUL in text (22021), a date or time beyond PostgreSQL's range (22008)
        if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *code == SqlState::DATETIME_FIELD_OVERFLOW
        {
            return StoreError::Unstorable(code.code().to_string());
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION
            || *code == SqlState::CHECK_VIOLATION
            || *code == SqlState::NOT_NULL_VIOLATION
        {
            return StoreError::Invalid(db.message().to_string());
        }
        return StoreError::Backend(format!("{}: {}", code.code(), db.message()));
    }
    StoreError::Backend(e.to_string())
}

pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Backend(format!("connection pool: {}", with_causes(&e)))
}

/// An error with the errors under it: `db error: FATAL: database "x" does not exist`, not
/// only `db error`.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl PgStore {
    /// Connects to `postgres://...`, brings the schema up to date (under an advisory lock, so
    /// several processes starting together migrate once) and starts the batcher.
    pub async fn connect(url: &str) -> StoreResult<PgStore> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL URL: {e}")))?;
        let mgr = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(16)
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        {
            let mut client = pool.get().await.map_err(pool_err)?;
            migrate::run(&mut client).await?;
        }
        let (tx, rx) = mpsc::channel::<Pending>(4096);
        tokio::spawn(write::batcher(pool.clone(), rx));
        Ok(PgStore { pool, batcher: tx })
    }

    pub(crate) async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }
}
