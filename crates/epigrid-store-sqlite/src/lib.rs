//! epigrid's [`Store`] on embedded SQLite, the default backend.
//!
//! * One writer thread owns the only writing connection. Every write is a closure sent to it;
//!   the writer takes whatever is queued (up to [`MAX_BATCH`]), runs each closure in its own
//!   savepoint inside one transaction, commits, and only then answers each caller. Under load
//!   this is group commit: one WAL append for many registrations, which is what lets an
//!   acknowledged registration survive `kill -9` without one fsync-bound transaction each.
//! * Reads run on a small pool of read-only connections (WAL lets them proceed while the
//!   writer writes) on tokio's blocking threads.

mod convert;
mod migrate;
mod queries;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use epigrid_core::store::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{oneshot, Semaphore};


/// Most writes one transaction takes before committing.
pub const MAX_BATCH: usize = 512;
const READERS: usize = 8;

type Reply = Result<Box<dyn Any + Send>, StoreError>;
type WriteFn = Box<dyn FnOnce(&Connection) -> Reply + Send>;

struct Job {
    run: WriteFn,
    reply: oneshot::Sender<Reply>,
}

/// How hard SQLite works to keep a commit across failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit survives the process being killed; the last
    /// commits may be lost if the machine loses power.
    Process,
    /// `synchronous=FULL`: every commit is fsynced before it is acknowledged.
    Power,
}

pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_slots: Arc<Semaphore>,
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Maps SQLite errors to store errors, keeping constraint violations distinguishable.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            let m = msg.clone().unwrap_or_default();
            return if m.contains("UNIQUE") || m.contains("PRIMARY KEY") {
                StoreError::Conflict(m)
            } else {
                StoreError::Invalid(m)
            };
        }
    }
    backend(e)
}

/// Parses `sqlite://PATH` (or a bare path) into a file path.
pub fn path_from_url(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

fn open(path: &Path, read_only: bool, durability: Durability) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let sync = match durability {
        Durability::Process => "NORMAL",
        Durability::Power => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = {sync}; PRAGMA cache_size = -65536; \
         PRAGMA temp_store = MEMORY;"
    ))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path, durability: Durability) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let mut conn = open(path, false, durability).map_err(backend)?;
        migrate::run(&mut conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(backend)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            read_slots: Arc::new(Semaphore::new(READERS)),
        })
    }

    pub fn open_url(url: &str, durability: Durability) -> StoreResult<SqliteStore> {
        let path = path_from_url(url)
            .ok_or_else(|| StoreError::Invalid(format!("not an sqlite:// URL: {url}")))?;
        SqliteStore::open(&path, durability)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer thread inside the current batch's transaction (in its own
    /// savepoint) and returns its result once the transaction has committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            run: Box::new(move |c| f(c).map(|v| Box::new(v) as Box<dyn Any + Send>)),
            reply,
        };
        self.writer
            .send(job)
            .map_err(|_| StoreError::Backend("the writer thread has stopped".into()))?;
        let out = rx
            .await
            .map_err(|_| StoreError::Backend("the writer thread dropped a write".into()))??;
        out.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| StoreError::Backend("writer returned the wrong type".into()))
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let _permit = self.read_slots.acquire().await.map_err(backend)?;
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => open(&path, true, Durability::Process).map_err(backend)?,
            };
            let out = f(&conn);
            readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            out
        })
        .await
        .map_err(backend)?
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = exec(&conn, "BEGIN IMMEDIATE") {
            let msg = e.to_string();
            for job in batch {
                let _ = job.reply.send(Err(StoreError::Backend(msg.clone())));
            }
            continue;
        }
        let mut done = Vec::with_capacity(batch.len());
        for job in batch {
            let result = match exec(&conn, "SAVEPOINT job") {
                Err(e) => Err(backend(e)),
                Ok(()) => {
                    let run = job.run;
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&conn)))
                        .unwrap_or_else(|_| Err(StoreError::Backend("a write panicked".into())));
                    if r.is_err() {
                        let _ = exec(&conn, "ROLLBACK TO job");
                    }
                    let _ = exec(&conn, "RELEASE job");
                    r
                }
            };
            done.push((job.reply, result));
        }
        match exec(&conn, "COMMIT") {
            Ok(()) => {
                for (reply, r) in done {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                let _ = exec(&conn, "ROLLBACK");
                let msg = e.to_string();
                tracing::error!(error = %msg, "sqlite commit failed");
                for (reply, _) in done {
                    let _ = reply.send(Err(StoreError::Backend(msg.clone())));
                }
            }
        }
    }
}
