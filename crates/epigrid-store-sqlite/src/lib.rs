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
/// `Fn`, not `FnOnce`: a job may run twice — once in an optimistic batch that is rolled back
/// because a neighbour failed, then again on its own.
type WriteFn = Box<dyn Fn(&Connection) -> Reply + Send>;

struct Job {
    run: WriteFn,
    reply: oneshot::Sender<Reply>,
    /// A registration insert: it keeps the writer's cache of known people (any other write
    /// may change people, so the cache is dropped after it).
    registration: bool,
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
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

fn open(path: &Path, read_only: bool, durability: Durability) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
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
        // The checkpointer thread copies frames in the background; this connection's own
        // automatic checkpoint then finds little left to do and lets the WAL start over, so
        // the WAL file stays bounded (a background PASSIVE checkpoint alone never resets it
        // while writes keep coming).
        conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
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
        let checkpoints = open(path, false, durability).map_err(backend)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                writer_loop(conn, rx, durability == Durability::Power);
                stop2.store(true, std::sync::atomic::Ordering::Relaxed);
            })
            .map_err(backend)?;
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpointer(checkpoints, stop))
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
        F: Fn(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.write_job(f, false).await
    }

    /// [`SqliteStore::write`] for a registration insert (see [`Job::registration`]).
    pub(crate) async fn write_registration<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.write_job(f, true).await
    }

    async fn write_job<T, F>(&self, f: F, registration: bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            run: Box::new(move |c| f(c).map(|v| Box::new(v) as Box<dyn Any + Send>)),
            reply,
            registration,
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

/// Copies committed WAL frames into the database file every 200 ms on its own connection, so
/// the fsyncs of checkpointing never stall the writer's commits (a PASSIVE checkpoint does not
/// block writers). The WAL restarts from its beginning once everything in it is checkpointed.
fn checkpointer(conn: Connection, stop: Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "wal checkpoint failed");
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// Runs one job, catching a panic as an error. Any job but a registration may change people:
/// the writer's cache of them is dropped after it.
fn run_job(conn: &Connection, job: &Job) -> Reply {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(conn)))
        .unwrap_or_else(|_| Err(StoreError::Backend("a write panicked".into())));
    if !job.registration || r.is_err() {
        queries::forget_known();
    }
    r
}

/// Runs `jobs` in one transaction; the first job's error (and nothing committed) if any job
/// or the commit fails.
fn run_batch(conn: &Connection, jobs: &[Job]) -> Result<Vec<Box<dyn Any + Send>>, StoreError> {
    exec(conn, "BEGIN IMMEDIATE").map_err(backend)?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut rollups: std::collections::BTreeMap<_, i64> = Default::default();
    for job in jobs {
        let r = run_job(conn, job);
        let increments = queries::take_job_rollups();
        match r {
            Ok(v) => {
                out.push(v);
                for (k, n) in increments {
                    *rollups.entry(k).or_default() += n;
                }
            }
            Err(e) => {
                let _ = exec(conn, "ROLLBACK");
                // what the batch wrote is gone: so is what the cache learnt from it
                queries::forget_known();
                return Err(e);
            }
        }
    }
    let committed =
        queries::flush_rollups(conn, &rollups).and_then(|()| exec(conn, "COMMIT").map_err(map_err));
    if let Err(e) = committed {
        let _ = exec(conn, "ROLLBACK");
        queries::forget_known();
        tracing::error!(error = %e, "sqlite commit failed");
        return Err(e);
    }
    Ok(out)
}

/// How long a busy writer waits for more work before committing a smaller batch.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_micros(500);

fn drain(rx: &mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
}

/// The writer: takes what is queued, runs it as one transaction (group commit) and answers
/// every caller after the commit. If anything in the batch fails, the batch is rolled back and
/// each job runs again in a transaction of its own, so one bad write fails alone and a
/// refused write changes nothing. (No per-job savepoints on the fast path: a savepoint makes
/// SQLite copy every page a job touches into a statement journal.)
/// `linger`: with an fsync per commit (durability "power"), a busy writer waits a moment for
/// more work, so one fsync covers many registrations. Without fsyncs that wait only adds
/// latency: the batch is whatever arrived during the last commit.
fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, linger: bool) {
    let mut last_batch = 0usize;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        drain(&rx, &mut batch);
        // Under load, wait a moment for more work: one commit (and fsync) for many
        // registrations. An idle server (last batch of one) does not wait.
        if linger && last_batch >= 4 && batch.len() < last_batch {
            let until = std::time::Instant::now() + BATCH_WAIT;
            while batch.len() < MAX_BATCH {
                match rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
                    Ok(j) => {
                        batch.push(j);
                        drain(&rx, &mut batch);
                    }
                    Err(_) => break,
                }
            }
        }
        last_batch = batch.len();
        match run_batch(&conn, &batch) {
            Ok(results) => {
                for (job, r) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
            Err(_) => {
                for job in batch {
                    let r = run_batch(&conn, std::slice::from_ref(&job)).and_then(|mut v| {
                        v.pop()
                            .ok_or_else(|| StoreError::Backend("no result".into()))
                    });
                    let _ = job.reply.send(r);
                }
            }
        }
    }
}
