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
        // the server going away under us: shutting down, terminated, too many connections,
        // a database that does not accept connections now
        if [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
        ]
        .contains(code)
        {
            return StoreError::Unavailable(format!("{}: {}", code.code(), db.message()));
        }
        return StoreError::Backend(format!("{}: {}", code.code(), db.message()));
    }
    // no database error: the connection closed or could not be made
    if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return StoreError::Unavailable(with_causes(&e));
    }
    StoreError::Backend(e.to_string())
}

/// A connection that could not be had: none came free in time, or a new one could not be made
/// (refused, the database not accepting connections, the login refused) — the database is out
/// of reach for now.
pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    let text = format!("connection pool: {}", with_causes(&e));
    match e {
        PoolError::Timeout(_) | PoolError::Backend(_) => StoreError::Unavailable(text),
        _ => StoreError::Backend(text),
    }
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
