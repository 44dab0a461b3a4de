//! epigrid's [`Store`] on embedded SQLite, the default backend.
//!
//! * Registrations (durability "process", the default) are acknowledged from the intake log
//!   ([`intake`]): copied into a memory-mapped file, which outlives the process, and committed
//!   to the database in one transaction every [`FOLD_EVERY`] by the background thread, before
//!   every read and before every other write ([`Writer::fold`]). A request never waits for a
//!   transaction, and the database sees thousands of registrations per commit.
//! * One connection writes. Every other write is a closure queued for it; whoever finds the
//!   writer idle takes the lead and runs what is queued (up to [`MAX_BATCH`]) as one
//!   transaction, commits, and only then answers each caller (group commit). Registrations
//!   take this path too under durability "power" (every commit fsynced) and in a process that
//!   does not own the intake (another process serves the database).
//! * No writer thread to hand each write to and wake: the first write queued at an idle
//!   writer spawns a task that leads, yielding once before each batch so the requests
//!   already runnable can join it. Batches of registrations (microseconds each, no fsync)
//!   run right there on the async worker; any other write, every batch under durability
//!   "power", and every checkpoint run on a blocking thread, so an async worker never waits
//!   for the disk.
//! * Reads run on a small pool of read-only connections (WAL lets them proceed while the
//!   writer writes) on tokio's blocking threads.

mod convert;
mod intake;
mod migrate;
mod queries;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use epigrid_core::model::NewRegistration;
use epigrid_core::store::{StoreError, StoreResult};
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{oneshot, Semaphore};

/// Most writes one transaction takes before committing.
pub const MAX_BATCH: usize = 512;
const READERS: usize = 8;
/// How often the background thread commits what the intake log holds (see [`intake`]) and
/// copies the WAL back into the database.
pub(crate) const FOLD_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

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
    writer: Arc<Writer>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_slots: Arc<Semaphore>,
    /// Sites known to exist (see [`SqliteStore::require_site`]).
    known_sites: Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// Tells the checkpointer thread to finish.
    stop: Arc<AtomicBool>,
    /// The checkpointer thread, joined when the store is dropped: it checkpoints the WAL one
    /// last time and closes its connection, so a dropped store leaves its files settled.
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // what was acknowledged is committed, and the intake files go with it
        self.writer.fold();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.checkpointer.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The only writing connection, the memory that belongs to it, and the queue of writes
/// waiting for it.
struct Writer {
    queue: Mutex<Queue>,
    conn: Mutex<WriterConn>,
    /// Durability "power": every commit is fsynced, so no batch runs on an async worker.
    power: bool,
    /// Frames in the WAL when the background checkpointer last looked.
    wal_frames: AtomicU64,
    /// The background checkpointer copied back every frame it saw. Commits made during its
    /// pass are still only in the WAL, so before the next batch the writer copies those too
    /// and starts the WAL over ([`Writer::checkpoint`], on a blocking thread): otherwise,
    /// under sustained writes, the WAL would never start over and would grow to
    /// [`WAL_LIMIT`].
    restart_due: AtomicBool,
    /// Where registrations are acknowledged from (durability "process", and only in the
    /// process that owns it): see [`intake`].
    intake: Option<intake::Intake>,
}

struct Queue {
    jobs: Vec<Job>,
    /// A leader has taken the writer: it (or the task it hands the lead to) runs what is
    /// queued until the queue is empty, and only then clears this.
    busy: bool,
}

struct WriterConn {
    conn: Connection,
    memory: queries::WriterMemory,
}

/// Marks the file as epigrid's (`EPGD`); written again to start the WAL over.
const APPLICATION_ID: i64 = 1_162_889_028;

fn mark(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "application_id", APPLICATION_ID)
}

/// A WAL of this many frames (pages: 2 GiB of 16 KiB pages, 512 MiB of a database made
/// before with 4 KiB pages) is checkpointed by the writer itself,
/// between two batches, so that the next write starts it over (see [`Writer::checkpoint`]).
/// A backstop: the WAL normally starts over after every background pass (every 200 ms, a
/// few thousand frames under sustained load, see [`Writer::restart_due`]); it grows this long
/// only while a reader keeps an old snapshot open and so holds every pass back.
const WAL_LIMIT: u64 = 131072;

/// Clears [`Queue::busy`] if the leading task is dropped before it empties the queue (its
/// runtime shut down), so the next write takes the lead instead of waiting forever.
struct Lead {
    writer: Arc<Writer>,
    armed: bool,
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.writer.queue).busy = false;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// The next batch, or `None` (and the lead given up) when nothing is queued.
    fn take(&self) -> Option<Vec<Job>> {
        let mut q = lock(&self.queue);
        if q.jobs.is_empty() {
            q.busy = false;
            return None;
        }
        if q.jobs.len() <= MAX_BATCH {
            return Some(std::mem::take(&mut q.jobs));
        }
        Some(q.jobs.drain(..MAX_BATCH).collect())
    }

    /// Whether `batch` may run on an async worker thread: registrations only (each a few
    /// microseconds) and no fsync. Anything else runs on a blocking thread.
    fn inline(&self, batch: &[Job]) -> bool {
        !self.power && batch.iter().all(|j| j.registration)
    }

    /// Runs `batch` on this thread as one transaction and answers its callers. True when the
    /// WAL has grown past [`WAL_LIMIT`] and wants [`Writer::checkpoint`].
    fn run(&self, batch: Vec<Job>) -> bool {
        let mut w = lock(&self.conn);
        let w = &mut *w;
        queries::swap_memory(&mut w.memory);
        queries::forget_if_changed_elsewhere(&w.conn);
        // every registration acknowledged before this write is in the database first
        self.fold_records(&w.conn);
        commit_batch(&w.conn, batch);
        queries::swap_memory(&mut w.memory);
        self.wal_frames.load(Ordering::Relaxed) >= WAL_LIMIT
    }

    /// Commits what the intake log holds, on this thread (which may block). True when the
    /// WAL has grown past [`WAL_LIMIT`] and wants [`Writer::checkpoint`].
    fn fold(&self) -> bool {
        if self.intake.as_ref().is_some_and(|i| i.unfolded() > 0) {
            let mut w = lock(&self.conn);
            let w = &mut *w;
            queries::swap_memory(&mut w.memory);
            queries::forget_if_changed_elsewhere(&w.conn);
            self.fold_records(&w.conn);
            queries::swap_memory(&mut w.memory);
        }
        self.wal_frames.load(Ordering::Relaxed) >= WAL_LIMIT
    }

    /// [`Writer::fold`] on the locked writing connection, its memory lent to this thread.
    fn fold_records(&self, conn: &Connection) {
        let Some(intake) = &self.intake else { return };
        let Some(taken) = intake.take() else { return };
        // Foreign keys are not looked up row by row here: a registration's site was found
        // before it was acknowledged (`SqliteStore::require_site`; sites are never deleted),
        // and its people and companions are found or made in the same transaction.
        let _ = exec(conn, "PRAGMA foreign_keys = OFF");
        let n = taken.records.len();
        // A panic inside a record's commit is caught there (`fold_taken`); this is the last
        // resort for one in the intake's own bookkeeping. The writing connection stays usable
        // (its transaction rolled back), and the records are still in their intake files,
        // which are left on disk for the next process that opens the database to commit.
        let folded = unwound(conn, || {
            fold_taken(conn, intake, taken);
            Ok(())
        });
        if folded.is_err() {
            intake.done(n, Vec::new(), None);
            tracing::error!(
                registrations = n,
                "committing the intake log panicked: they wait in their files for the next start"
            );
        }
        let _ = exec(conn, "PRAGMA foreign_keys = ON");
    }

    /// Copies the WAL into the database on the writing connection while no write can start
    /// (the caller leads) and starts the WAL over from its beginning: the background
    /// checkpointer alone never catches up while writes keep coming. Runs when the WAL has
    /// grown past [`WAL_LIMIT`], and after each background pass that copied what it saw
    /// (then only the commits made during that pass are left to copy). SQLite's own
    /// automatic checkpoint is off: it would run (and fsync) inside a commit, which here may
    /// be on an async worker. Called on a blocking thread.
    fn checkpoint(&self) {
        let w = lock(&self.conn);
        self.wal_frames.store(0, Ordering::Relaxed);
        // (busy, frames in the WAL, frames checkpointed)
        let done = w.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok(r.get::<_, i64>(0)? == 0 && r.get::<_, i64>(1)? == r.get::<_, i64>(2)?)
        });
        match done {
            // The first commit into a WAL that starts over writes and fsyncs its header: done
            // here, with a one-page write (the file's application id), not in the next batch
            // of registrations on an async worker.
            Ok(true) => {
                if let Err(e) = mark(&w.conn) {
                    tracing::warn!(error = %e, "wal restart failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "wal checkpoint failed"),
        }
    }

    /// Runs batches until the queue is empty. Before each batch it yields once, so that the
    /// requests already runnable get to queue their writes first: under load a batch is every
    /// write that arrived during one round of the scheduler, committed together.
    async fn lead(mut lead: Lead) {
        loop {
            tokio::task::yield_now().await;
            let Some(batch) = lead.writer.take() else {
                lead.armed = false;
                return;
            };
            let w = lead.writer.clone();
            let restart = w.restart_due.swap(false, Ordering::Relaxed);
            let done = if !restart && w.inline(&batch) {
                if w.run(batch) {
                    tokio::task::spawn_blocking(move || w.checkpoint()).await
                } else {
                    Ok(())
                }
            } else {
                tokio::task::spawn_blocking(move || {
                    if restart {
                        w.checkpoint();
                    }
                    if w.run(batch) {
                        w.checkpoint();
                    }
                })
                .await
            };
            if done.is_err() {
                tracing::error!("a write batch panicked");
            }
        }
    }
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

/// Opens `path` for reading and writing, creating it readable by its owner only (`new`: it
/// must not exist yet). The database is made so (SQLite gives its WAL and shared memory files
/// the database file's mode), and so are the intake's files: names, masked numbers and sealed
/// data are no one else's business on a shared machine. An existing file is left as its
/// owner set it.
pub(crate) fn open_private(path: &Path, new: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    if new {
        options.create_new(true);
    } else {
        options.create(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The page size of a new database, in bytes.
const PAGE_SIZE: i64 = 16 * 1024;

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
        // A new database is made with 16 KiB pages (an existing one keeps its own: this does
        // nothing once it has tables). Every fold's commit writes each page it changed to the
        // WAL, and the checkpoint copies it on, a system call or two per page: with 4 KiB pages
        // under registrations, that was ~20% of the fold thread's time in a profile, and ~13%
        // with 16 KiB (the fold's share of the server's time 18% → 16%). Set before WAL mode,
        // which fixes the page size.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The checkpointer thread copies frames in the background, and the writer
        // checkpoints between batches when the WAL has grown (Writer::checkpoint); never
        // inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    // name search compares names folded to lower case in any alphabet (`person::fold_name`);
    // SQLite's own lower() folds only ASCII
    conn.create_scalar_function(
        "epigrid_fold",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            Ok(ctx
                .get::<Option<String>>(0)?
                .map(|s| epigrid_core::person::fold_name(&s)))
        },
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path, durability: Durability) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(path, durability, true)
    }

    /// [`SqliteStore::open`], with or without the background checkpointer (tests of the
    /// writer's own checkpoints go without, so that nothing else checkpoints meanwhile).
    fn open_with(
        path: &Path,
        durability: Durability,
        background_checkpoints: bool,
    ) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        open_private(path, false).map_err(backend)?;
        let mut conn = open(path, false, durability).map_err(backend)?;
        migrate::run(&mut conn)?;
        let id: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(backend)?;
        if id != APPLICATION_ID {
            mark(&conn).map_err(backend)?;
        }
        // Opened under either durability: what a killed process acknowledged is recovered
        // whatever this one's durability is.
        let (intake, left) = match intake::Intake::open(path).map_err(backend)? {
            Some((intake, left)) => (Some(intake), left),
            None => (None, Vec::new()),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            queue: Mutex::new(Queue {
                jobs: Vec::new(),
                busy: false,
            }),
            conn: Mutex::new(WriterConn {
                conn,
                memory: Default::default(),
            }),
            power: durability == Durability::Power,
            wal_frames: AtomicU64::new(0),
            restart_due: AtomicBool::new(false),
            intake,
        };
        if let Some(intake) = &writer.intake {
            // What a killed process acknowledged and did not commit is committed now, before
            // anything else reads or writes; then sequence numbers go on from the last.
            intake.raise_floor(last_seq(&lock(&writer.conn).conn)?);
            if !left.is_empty() {
                tracing::info!(
                    registrations = left.len(),
                    "committing what the intake log held"
                );
                intake.give_back(left, Vec::new());
                writer.fold();
                if intake.unfolded() > 0 {
                    return Err(StoreError::Backend(
                        "the intake log could not be committed to the database".into(),
                    ));
                }
            }
        }
        if durability == Durability::Power {
            // every commit fsynced: registrations go through the writer's transactions, and
            // the intake (all of it committed) goes, its files with it
            writer.intake = None;
        }
        let writer = Arc::new(writer);
        let checkpointer = if background_checkpoints {
            let checkpoints = open(path, false, durability).map_err(backend)?;
            let (stop, w) = (stop.clone(), writer.clone());
            let t = std::thread::Builder::new()
                .name("sqlite-checkpoint".into())
                .spawn(move || checkpointer(checkpoints, stop, w))
                .map_err(backend)?;
            Some(t)
        } else {
            None
        };
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            readers: Arc::new(Mutex::new(Vec::new())),
            read_slots: Arc::new(Semaphore::new(READERS)),
            known_sites: Mutex::new(Default::default()),
            stop,
            checkpointer,
        })
    }

    /// Leaves the store as a killed process would: nothing folded or removed, the intake's
    /// lock released (for a test that opens the database again in the same process).
    #[cfg(test)]
    fn abandon(self) {
        if let Some(i) = &self.writer.intake {
            i.release();
        }
        std::mem::forget(self);
    }

    pub fn open_url(url: &str, durability: Durability) -> StoreResult<SqliteStore> {
        let path = path_from_url(url)
            .ok_or_else(|| StoreError::Invalid(format!("not an sqlite:// URL: {url}")))?;
        SqliteStore::open(&path, durability)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the writer's next batch (one transaction) and returns its result once the
    /// transaction has committed.
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
        // the leading task needs a runtime: without one, refuse before taking the lead
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Backend("a write outside an async runtime".into()))?;
        let leads = {
            let mut q = lock(&self.writer.queue);
            q.jobs.push(job);
            !std::mem::replace(&mut q.busy, true)
        };
        if leads {
            runtime.spawn(Writer::lead(Lead {
                writer: self.writer.clone(),
                armed: true,
            }));
        }
        let out = rx
            .await
            .map_err(|_| StoreError::Backend("the store dropped a write".into()))??;
        out.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| StoreError::Backend("writer returned the wrong type".into()))
    }

    /// Commits what the intake log holds (on a blocking thread), so that a read sees every
    /// registration acknowledged before it began.
    async fn settle(&self) -> StoreResult<()> {
        if let Some(intake) = self.intake().filter(|i| i.unfolded() > 0) {
            let upto = intake.last_acknowledged();
            let w = self.writer.clone();
            // only the fold: a long WAL is the background thread's to checkpoint, not a
            // read's to wait for
            tokio::task::spawn_blocking(move || {
                w.fold();
            })
            .await
            .map_err(backend)?;
            // a fold the database failed (another process holding it longer than the busy
            // timeout, say) leaves them waiting: the read would miss them, and is refused
            if intake.waits_at_or_below(upto) {
                return Err(StoreError::Unavailable(
                    "acknowledged registrations could not be committed yet".into(),
                ));
            }
        }
        Ok(())
    }

    /// The intake log registrations are acknowledged from, when this store owns it.
    pub(crate) fn intake(&self) -> Option<&intake::Intake> {
        self.writer.intake.as_ref()
    }

    /// Refuses a registration for a site that does not exist, as the database's foreign key
    /// would (sites are never deleted, so one found once is remembered).
    pub(crate) async fn require_site(&self, site: uuid::Uuid) -> StoreResult<()> {
        if self.intake().is_none() || lock(&self.known_sites).contains(&site) {
            return Ok(());
        }
        let found: bool = self
            .read(move |c| {
                c.prepare_cached("SELECT EXISTS (SELECT 1 FROM sites WHERE id = ?1)")
                    .map_err(map_err)?
                    .query_row([site.to_string()], |r| r.get(0))
                    .map_err(map_err)
            })
            .await?;
        if !found {
            return Err(StoreError::Invalid(
                "FOREIGN KEY constraint failed: no such site".into(),
            ));
        }
        lock(&self.known_sites).insert(site);
        Ok(())
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.settle().await?;
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

/// Every [`FOLD_EVERY`], on its own thread: commits what the intake log holds (on the
/// writing connection), then copies committed WAL frames into the database file on its own
/// connection, so the fsyncs of checkpointing never stall the writer's commits (a PASSIVE
/// checkpoint does not block writers). The WAL restarts from its beginning once everything in
/// it is checkpointed.
fn checkpointer(conn: Connection, stop: Arc<AtomicBool>, writer: Arc<Writer>) {
    while !stop.load(Ordering::Relaxed) {
        // woken early by the store's drop
        std::thread::park_timeout(FOLD_EVERY);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let long = writer.fold();
        // (busy, frames in the WAL, frames checkpointed)
        let row = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match row {
            Ok((busy, frames, done)) => {
                writer
                    .wal_frames
                    .store(frames.max(0) as u64, Ordering::Relaxed);
                if busy == 0 && frames > 0 && frames == done {
                    writer.restart_due.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!(error = %e, "wal checkpoint failed"),
        }
        // With the intake, registrations are written here, not by batches on async workers:
        // this thread starts the WAL over itself (the writer does it before its next batch
        // otherwise, see `Writer::restart_due`).
        if writer.intake.is_some() && (long || writer.restart_due.swap(false, Ordering::Relaxed)) {
            writer.checkpoint();
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// Runs one job, catching a panic as an error. Any job but a registration may change people:
/// the writer's cache of them is dropped after it (and after any failed batch: `run_batch`).
fn run_job(conn: &Connection, job: &Job) -> Reply {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(conn)))
        .unwrap_or_else(|_| Err(StoreError::Backend("a write panicked".into())));
    if !job.registration {
        queries::forget_known();
    }
    r
}

/// Runs `jobs` in one transaction; the first job's error (and nothing committed) if any job
/// or the commit fails.
fn run_batch(conn: &Connection, jobs: &[Job]) -> Result<Vec<Box<dyn Any + Send>>, StoreError> {
    in_batch(conn, || jobs.iter().map(|job| run_job(conn, job)).collect())
}

/// Runs `body` in one transaction whose batch effects (`queries::end_batch`) are written at
/// its end. On any error all of it is rolled back, and with it the writer's memory of people
/// and plates, which may have learnt from what is gone.
fn in_batch<T>(conn: &Connection, body: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    exec(conn, "BEGIN IMMEDIATE").map_err(backend)?;
    queries::begin_batch();
    let done = body().and_then(|out| {
        queries::end_batch(conn)
            .and_then(|()| exec(conn, "COMMIT").map_err(map_err))
            .inspect_err(|e| tracing::error!(error = %e, "sqlite commit failed"))?;
        Ok(out)
    });
    if done.is_err() {
        let _ = exec(conn, "ROLLBACK");
        queries::forget_known();
    }
    done
}

/// Commits the records a fold took: in one transaction, or (when that fails) one at a time.
/// Those left when the database itself fails go back to the intake for the next fold.
fn fold_taken(conn: &Connection, intake: &intake::Intake, taken: intake::Taken) {
    let n = taken.records.len();
    let all = taken.records.iter().map(|(seq, reg)| (*seq, &**reg));
    if unwound(conn, || insert_all(conn, all)).is_ok() {
        intake.done(n, taken.files, taken.log);
        return;
    }
    // One of them, or the database, failed: one at a time, each its own transaction.
    let mut records = taken.records.into_iter();
    let mut done = 0;
    while let Some((seq, reg)) = records.next() {
        match unwound(conn, || fold_one(conn, intake, seq, &reg)) {
            Ok(()) => {}
            Err(None) => {
                // a bug this record runs into: kept aside as one the database refuses, so
                // that neither this process nor the next one stops at it, and the rest go in
                tracing::error!(registration = %reg.id,
                    "committing an acknowledged registration panicked: kept in the intake's rejected file");
                intake.reject(seq, &reg);
            }
            Err(Some(e)) => {
                tracing::error!(error = %e, "registrations wait in the intake log: the database failed");
                let mut back = vec![(seq, reg)];
                back.extend(records);
                intake.give_back(back, taken.files);
                intake.done(done, Vec::new(), None);
                return;
            }
        }
        done += 1;
    }
    intake.done(done, taken.files, taken.log);
}

/// Runs `f`, turning a panic into `Err(None)` after rolling back what it left open on `conn`
/// (and the writer's memory of people and plates, which may hold what is rolled back).
fn unwound(
    conn: &Connection,
    f: impl FnOnce() -> StoreResult<()>,
) -> Result<(), Option<StoreError>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Some),
        Err(_) => {
            if !conn.is_autocommit() {
                let _ = exec(conn, "ROLLBACK");
            }
            queries::forget_known();
            Err(None)
        }
    }
}

/// The highest sequence number stored.
fn last_seq(conn: &Connection) -> StoreResult<i64> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM registrations", [], |r| {
        r.get(0)
    })
    .map_err(backend)
}

/// Inserts registrations from the intake log with their sequence numbers, in one
/// transaction: all of them, or (on an error) none.
fn insert_all<'a>(
    conn: &Connection,
    records: impl Iterator<Item = (i64, &'a NewRegistration)>,
) -> StoreResult<()> {
    in_batch(conn, || {
        queries::insert_regs(conn, records.map(|(seq, reg)| (Some(seq), reg)))
    })
}

/// Commits one record of the intake log on its own. One the database refuses (rather than
/// fails on) was stored already (by an earlier process that was killed after its commit),
/// lost its sequence number to another process (it takes a new one), or is kept aside
/// ([`intake::Intake::reject`]) and reported; only the database failing is an error.
fn fold_one(
    conn: &Connection,
    intake: &intake::Intake,
    seq: i64,
    reg: &NewRegistration,
) -> StoreResult<()> {
    let mut refused = match insert_all(conn, std::iter::once((seq, reg))) {
        Ok(()) => return Ok(()),
        Err(e @ StoreError::Backend(_)) => return Err(e),
        Err(e) => e,
    };
    let stored: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM registrations WHERE id = ?1)",
            [reg.id.to_string()],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if stored {
        return Ok(());
    }
    let last = last_seq(conn)?;
    if last >= seq {
        intake.raise_floor(last);
        match insert_all(conn, std::iter::once((intake.reserve(1), reg))) {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::Backend(_)) => return Err(e),
            Err(e) => refused = e,
        }
    }
    tracing::error!(error = %refused, registration = %reg.id,
        "the database refused an acknowledged registration: kept in the intake's rejected file");
    intake.reject(seq, reg);
    Ok(())
}

/// Runs `batch` as one transaction (group commit) and answers every caller after the commit.
/// If anything in the batch fails, the batch is rolled back and each job runs again in a
/// transaction of its own, so one bad write fails alone and a refused write changes nothing.
/// (No per-job savepoints on the fast path: a savepoint makes SQLite copy every page a job
/// touches into a statement journal.)
fn commit_batch(conn: &Connection, mut batch: Vec<Job>) {
    match run_batch(conn, &batch) {
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
                let r = run_batch(conn, std::slice::from_ref(&job)).and_then(|mut v| {
                    v.pop()
                        .ok_or_else(|| StoreError::Backend("no result".into()))
                });
                let _ = job.reply.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "epigrid-sqlite-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir.join("t.db")
    }

    /// Frames in the WAL, as a passive checkpoint on the writing connection reports them.
    fn wal_frames(store: &SqliteStore) -> i64 {
        lock(&store.writer.conn)
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .expect("wal_checkpoint")
    }

    /// The one number `sql` reads.
    async fn read_i64(store: &SqliteStore, sql: &'static str) -> i64 {
        store
            .read(move |c| c.query_row(sql, [], |r| r.get(0)).map_err(map_err))
            .await
            .expect(sql)
    }

    async fn create_filler(store: &SqliteStore) {
        store
            .write(|c| {
                c.execute_batch("CREATE TABLE filler (x BLOB)")
                    .map_err(map_err)
            })
            .await
            .expect("create");
    }

    /// `rows` writes of one page each, one after the other.
    async fn fill(store: &SqliteStore, rows: usize) {
        for _ in 0..rows {
            let n = store
                .write(|c| {
                    c.execute("INSERT INTO filler (x) VALUES (randomblob(3000))", [])
                        .map_err(map_err)
                })
                .await
                .expect("insert");
            assert_eq!(n, 1);
        }
    }

    // A single-threaded runtime: the leading task and the blocking pool must still make
    // progress (the server runs on several threads; tools and tests may not).
    #[tokio::test]
    async fn the_writer_checkpoints_and_starts_the_wal_over_once_it_is_long() {
        let path = scratch("wal");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        create_filler(&store).await;
        fill(&store, 200).await;

        // The background checkpointer reports a long WAL: the next batch is followed by a
        // checkpoint on the writing connection, and the WAL starts over right then (not at
        // the next batch of registrations).
        store.writer.wal_frames.store(WAL_LIMIT, Ordering::Relaxed);
        fill(&store, 1).await;
        // That write was answered before its checkpoint ran; the next write queues behind the
        // checkpoint, so once it is answered the WAL has started over (it holds that write).
        fill(&store, 1).await;
        let after = wal_frames(&store);
        assert!(after < 10, "the WAL started over: {after} frames");
        let rows = read_i64(&store, "SELECT count(*) FROM filler").await;
        assert_eq!(rows, 202, "nothing written was lost by the checkpoint");
        let id = read_i64(&store, "PRAGMA application_id").await;
        assert_eq!(id, 1_162_889_028, "the file is marked as epigrid's");
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_wal_starts_over_after_a_background_pass_that_writes_outran() {
        let path = scratch("restart");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        create_filler(&store).await;
        fill(&store, 200).await;
        // A background pass copies back every frame it sees, while commits keep coming.
        let other = open(&path, false, Durability::Process).expect("second connection");
        let (frames, copied): (i64, i64) = other
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .expect("background pass");
        assert_eq!(frames, copied, "the pass copied what it saw");
        fill(&store, 20).await;
        store.writer.restart_due.store(true, Ordering::Relaxed);
        // The next batch first copies what was committed during the pass, so the WAL starts
        // over and holds only what came after.
        fill(&store, 1).await;
        let after = wal_frames(&store);
        assert!(after < 10, "the WAL started over: {after} frames");
        let rows = read_i64(&store, "SELECT count(*) FROM filler").await;
        assert_eq!(rows, 221, "nothing written was lost by the restart");
        drop(other);
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test]
    async fn a_failed_write_fails_alone_and_the_writer_goes_on() {
        let path = scratch("fail");
        let store = SqliteStore::open(&path, Durability::Process).expect("open");
        create_filler(&store).await;
        fill(&store, 1).await;
        let good = store.write(|c| {
            c.execute("INSERT INTO filler (x) VALUES (1)", [])
                .map_err(map_err)
        });
        let bad = store.write(|c| {
            c.execute("INSERT INTO no_such_table (x) VALUES (1)", [])
                .map_err(map_err)
        });
        let (good, bad) = tokio::join!(good, bad);
        assert_eq!(good.expect("the good write"), 1);
        assert!(bad.is_err(), "the bad write is refused");
        // the writer is free again: a later write goes through
        fill(&store, 3).await;
        let rows = read_i64(&store, "SELECT count(*) FROM filler").await;
        assert_eq!(rows, 5);
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    fn intake_registration(site: uuid::Uuid, n: u8) -> NewRegistration {
        use epigrid_core::model::{
            Channel, CompanionInput, Direction, PersonInput, RegistrationFields, SiteKind,
        };
        let person = |id: u8, name: &str| PersonInput {
            id: uuid::Uuid::from_bytes([id; 16]),
            doc_type: Some(epigrid_core::validate::DocType::CnId),
            doc_index: Some(vec![id; 32]),
            doc_cipher: Some(vec![id ^ 0x55; 61]),
            doc_masked: Some("1508**********0019".into()),
            name: name.into(),
            phone_index: Some(vec![id ^ 1; 32]),
            phone_cipher: Some(vec![7; 50]),
            phone_masked: Some("139****5678".into()),
            birth_date: chrono::NaiveDate::from_ymd_opt(1985, 1, 1),
            birth_index: Some(vec![3; 32]),
            sex: Some(epigrid_core::validate::Sex::Female),
            provisional: false,
        };
        NewRegistration {
            id: uuid::Uuid::now_v7(),
            site_id: site,
            area_path: "/150800/".into(),
            at: convert::time(1_790_000_000_000_000 + i64::from(n)),
            kind: SiteKind::Checkpoint,
            channel: Channel::SelfService,
            by_user: Some(uuid::Uuid::from_bytes([9; 16])),
            verification_code: "K7Q2".into(),
            person: person(n, "李四"),
            companion_list: vec![
                CompanionInput {
                    name: Some("王五".into()),
                    person: Some(person(n.wrapping_add(100), "王五")),
                },
                CompanionInput {
                    name: None,
                    person: None,
                },
            ],
            fields: RegistrationFields {
                temperature: Some(366),
                symptoms: 5,
                high_risk_travel: Some(true),
                plate: Some("蒙L12345".into()),
                companions: 2,
                origin_code: Some("420100".into()),
                destination: Some("150802".into()),
                direction: Some(Direction::In),
                visitor: Some(false),
                unit_code: Some("150802001001001001".into()),
                visit_reason: Some("送货".into()),
                arrival_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 1),
                residence_code: Some("150802001001".into()),
                address: Some("胜利路 1 号".into()),
                employer: Some("某公司".into()),
                stay_days: Some(30),
                purpose: Some("work".into()),
            },
            day: chrono::NaiveDate::from_ymd_opt(2026, 9, 21).expect("day"),
        }
    }

    #[test]
    fn intake_records_read_back_as_written_and_a_cut_record_ends_the_file() {
        let regs: Vec<NewRegistration> = (1..=3)
            .map(|n| intake_registration(uuid::Uuid::now_v7(), n))
            .collect();
        let mut file = Vec::new();
        for (i, r) in regs.iter().enumerate() {
            file.extend_from_slice(&intake::framed(r, 10 + i as i64));
        }
        let whole = file.len();
        // the unused rest of a mapped file is zeros
        file.resize(whole + 4096, 0);
        let (read, clean) = intake::read_records(&file);
        assert!(clean);
        assert_eq!(read.len(), 3);
        for (i, (seq, r)) in read.iter().enumerate() {
            assert_eq!(*seq, 10 + i as i64);
            assert_eq!(**r, regs[i], "every field as written");
        }
        // a copy the process did not finish: the records before it, and a warning
        let (read, clean) = intake::read_records(&file[..whole - 7]);
        assert!(!clean);
        assert_eq!(read.len(), 2);
        // a changed byte fails its record's check
        let mut bad = file.clone();
        bad[whole - 40] ^= 0xff;
        let (read, clean) = intake::read_records(&bad);
        assert!(!clean);
        assert_eq!(read.len(), 2);
        // a file whose zeroing (for reuse) was cut short after its first length: empty
        let mut zeroing = file.clone();
        zeroing[..4].fill(0);
        assert_eq!(intake::read_records(&zeroing), (Vec::new(), true));
    }

    #[test]
    fn an_intake_file_is_read_up_to_its_unused_rest() {
        // records past the first mebibyte (one of them across its end), then 64 MiB of zeros
        let reg = intake_registration(uuid::Uuid::now_v7(), 1);
        let mut file = Vec::new();
        let mut seq = 0;
        while file.len() < (1 << 20) + 4096 {
            seq += 1;
            file.extend_from_slice(&intake::framed(&reg, seq));
        }
        let used = file.len();
        file.resize(intake::FILE_BYTES, 0);
        let read = intake::read_used(&file[..]).expect("read");
        // the mebibyte the records end in, and the zero one after it
        assert!(
            read.len() <= used + (2 << 20),
            "{} of {}",
            read.len(),
            file.len()
        );
        let (records, clean) = intake::read_records(&read);
        assert!(clean);
        assert_eq!(records.len() as i64, seq, "every record");
        // a file shorter than a mebibyte, read whole
        assert_eq!(intake::read_used(&file[..100]).expect("read").len(), 100);
    }

    #[test]
    fn intake_files_written_before_the_crc_still_read_back() {
        let regs: Vec<NewRegistration> = (1..=2)
            .map(|n| intake_registration(uuid::Uuid::now_v7(), n))
            .collect();
        // a killed process of the earlier binary left this file
        let mut file = intake::framed_before_crc(&regs[0], 7);
        file.extend_from_slice(&intake::framed_before_crc(&regs[1], 8));
        let (read, clean) = intake::read_records(&file);
        assert!(clean);
        assert_eq!(read.len(), 2);
        assert_eq!(*read[0].1, regs[0]);
        assert_eq!(*read[1].1, regs[1]);
        // the old check does not let a changed record through either
        let mut bad = intake::framed_before_crc(&regs[0], 7);
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(intake::read_records(&bad).0.len(), 0);
    }

    async fn seed_site(store: &SqliteStore) -> uuid::Uuid {
        let site = uuid::Uuid::now_v7();
        store
            .write(move |c| {
                c.execute_batch(
                    "INSERT INTO areas (code, name, level, parent_code, path) \
                     VALUES ('150800', '巴彦淖尔市', 1, NULL, '/150800/')",
                )
                .map_err(map_err)?;
                c.execute(
                    "INSERT INTO sites (id, token, kind, name, area_code, area_path, default_stay_min, created_at) \
                     VALUES (?1, 'tok', 'checkpoint', '检查站', '150800', '/150800/', 10, 0)",
                    [site.to_string()],
                )
                .map_err(map_err)
            })
            .await
            .expect("site");
        site
    }

    /// Registrations `ns` at `site`, acknowledged: their sequence numbers.
    async fn acknowledge(
        store: &SqliteStore,
        site: uuid::Uuid,
        ns: std::ops::RangeInclusive<u8>,
    ) -> Vec<i64> {
        use epigrid_core::store::Store;
        let mut acked = Vec::new();
        for n in ns {
            let reg = intake_registration(site, n);
            acked.push(store.insert_registration(reg).await.expect("acknowledged"));
        }
        acked
    }

    async fn seqs(store: &SqliteStore) -> Vec<i64> {
        store
            .read(|c| {
                let mut s = c
                    .prepare("SELECT seq FROM registrations ORDER BY seq")
                    .map_err(map_err)?;
                let rows = s.query_map([], |r| r.get(0)).map_err(map_err)?;
                rows.collect::<rusqlite::Result<Vec<i64>>>()
                    .map_err(map_err)
            })
            .await
            .expect("seqs")
    }

    async fn rollups(store: &SqliteStore) -> i64 {
        read_i64(store, "SELECT SUM(value) FROM rollups").await
    }

    fn intake_files(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("t.db-intake-"))
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_registration_whose_commit_panics_is_kept_aside_and_the_rest_are_stored() {
        use epigrid_core::store::Store;
        let path = scratch("panic");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        let site = seed_site(&store).await;
        let bad = intake_registration(site, 2);
        let bad_id = bad.id;
        queries::tests::PANIC_ON.lock().unwrap().push(bad_id);
        let a = acknowledge(&store, site, 1..=1).await[0];
        let b = store.insert_registration(bad).await.expect("acknowledged");
        let c = acknowledge(&store, site, 3..=3).await[0];
        assert_eq!((a + 1, b + 1), (b, c));
        // the read right after sees the others (it waited for none of them)
        assert_eq!(seqs(&store).await, vec![a, c]);
        assert_eq!(store.intake().expect("intake").unfolded(), 0);
        let dir = path.parent().expect("dir");
        let rejected = std::fs::read(dir.join("t.db-intake-rejected")).expect("kept aside");
        let (kept, clean) = intake::read_records(&rejected);
        assert!(clean);
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].0, kept[0].1.id), (b, bad_id));
        // the writer goes on, and so does the next process
        let d = acknowledge(&store, site, 4..=4).await[0];
        assert_eq!(seqs(&store).await, vec![a, c, d]);
        drop(store);
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("reopen");
        assert_eq!(seqs(&store).await, vec![a, c, d]);
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_is_refused_while_what_was_acknowledged_before_it_cannot_be_committed() {
        let path = scratch("blocked");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        let site = seed_site(&store).await;
        let a = acknowledge(&store, site, 1..=1).await[0];
        assert_eq!(seqs(&store).await, vec![a]);
        // another process holds the database's write lock longer than the writer waits
        lock(&store.writer.conn)
            .conn
            .busy_timeout(std::time::Duration::from_millis(20))
            .expect("timeout");
        let other = Connection::open(&path).expect("other");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let b = acknowledge(&store, site, 2..=2).await[0];
        let read = store
            .read(|c| {
                c.query_row("SELECT count(*) FROM registrations", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(map_err)
            })
            .await;
        assert!(
            matches!(read, Err(StoreError::Unavailable(_))),
            "not a count without the one acknowledged: {read:?}"
        );
        // given back, not lost: committed once the lock is let go
        other.execute_batch("ROLLBACK").expect("unlock");
        assert_eq!(seqs(&store).await, vec![a, b]);
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_person_another_process_pins_is_not_moved_by_what_the_writer_remembered() {
        use epigrid_core::store::Store;
        let path = scratch("elsewhere");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        let site = seed_site(&store).await;
        let other_site = uuid::Uuid::now_v7();
        store
            .write(move |c| {
                c.execute_batch(
                    "INSERT INTO areas (code, name, level, parent_code, path) \
                     VALUES ('150802', '临河区', 2, '150800', '/150800/150802/')",
                )
                .map_err(map_err)?;
                c.execute(
                    "INSERT INTO sites (id, token, kind, name, area_code, area_path, default_stay_min, created_at) \
                     VALUES (?1, 'tok2', 'checkpoint', '临河站', '150802', '/150800/150802/', 10, 0)",
                    [other_site.to_string()],
                )
                .map_err(map_err)
            })
            .await
            .expect("second site");
        let first = intake_registration(site, 1);
        let person = first.person.id.to_string();
        store.insert_registration(first).await.expect("first");
        async fn area(store: &SqliteStore, p: String) -> String {
            store
                .read(move |c| {
                    c.query_row("SELECT area_path FROM persons WHERE id = ?1", [p], |r| {
                        r.get::<_, String>(0)
                    })
                    .map_err(map_err)
                })
                .await
                .expect("person")
        }
        assert_eq!(area(&store, person.clone()).await, "/150800/");
        // a command in another process gives them a home area: they are pinned
        let other = Connection::open(&path).expect("other");
        other
            .execute(
                "UPDATE persons SET home_area_code = '150800' WHERE id = ?1",
                [&person],
            )
            .expect("pin");
        drop(other);
        let mut later = intake_registration(other_site, 1);
        later.area_path = "/150800/150802/".into();
        store.insert_registration(later).await.expect("later");
        assert_eq!(
            area(&store, person.clone()).await,
            "/150800/",
            "a pinned person stays"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_database_has_large_pages_and_an_old_one_keeps_its_own() {
        let page_size = |store: &SqliteStore| {
            let path = store.path.clone();
            Connection::open(path)
                .and_then(|c| c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0)))
                .expect("page size")
        };
        let path = scratch("pages-new");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        assert_eq!(page_size(&store), PAGE_SIZE);
        drop(store);
        // a database made before, with SQLite's default pages and WAL mode
        let old = scratch("pages-old");
        let c = Connection::open(&old).expect("old");
        c.execute_batch(
            "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE before (a);",
        )
        .expect("made");
        drop(c);
        let store = SqliteStore::open_with(&old, Durability::Process, false).expect("reopen");
        assert_eq!(page_size(&store), 4096);
        seed_site(&store).await;
        drop(store);
        for p in [path, old] {
            let _ = std::fs::remove_dir_all(p.parent().expect("dir"));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_intake_file_is_reused_after_its_fold_and_holds_only_what_came_since() {
        use epigrid_core::store::Store;
        let path = scratch("intake-reuse");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        let site = seed_site(&store).await;
        let mut acked = Vec::new();
        let mut files = Vec::new();
        // three folds: the first makes a second file, the next two go back and forth
        for round in 0..3 {
            for n in 1..=3 {
                let reg = intake_registration(site, 10 * round + n);
                acked.push(store.insert_registration(reg).await.expect("acknowledged"));
            }
            // a read folds first
            assert_eq!(seqs(&store).await, acked);
            files.push(intake_files(&path));
        }
        assert_eq!(files[0].len(), 2, "{files:?}");
        assert_eq!(files[1], files[0], "no new file once one is spare");
        assert_eq!(files[2], files[0]);
        // appended to a file that held three committed records: only the new one reads back
        let last = store
            .insert_registration(intake_registration(site, 99))
            .await
            .expect("acknowledged");
        let dir = path.parent().expect("dir");
        let held: Vec<_> = files[0]
            .iter()
            .map(|f| intake::read_records(&std::fs::read(dir.join(f)).expect("read")))
            .collect();
        assert!(held.iter().all(|(_, clean)| *clean));
        let records: Vec<i64> = held
            .iter()
            .flat_map(|(r, _)| r.iter().map(|(s, _)| *s))
            .collect();
        assert_eq!(records, vec![last]);
        acked.push(last);
        store.abandon();
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("reopen");
        assert_eq!(seqs(&store).await, acked);
        drop(store);
        assert!(
            intake_files(&path).is_empty(),
            "the spare goes with the store"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn what_the_intake_held_when_the_process_died_is_stored_once_at_the_next_open() {
        use epigrid_core::store::Store;
        let path = scratch("intake");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        let site = seed_site(&store).await;
        // a site that does not exist is refused before anything is acknowledged
        let ghost = intake_registration(uuid::Uuid::now_v7(), 4);
        assert!(matches!(
            store.insert_registration(ghost).await,
            Err(StoreError::Invalid(_))
        ));
        let acked = acknowledge(&store, site, 1..=3).await;
        // killed before any fold: the records are only in the intake file
        assert_eq!(store.intake().expect("intake").unfolded(), 3);
        let held = intake_files(&path);
        assert_eq!(held.len(), 1, "{held:?}");
        let dir = path.parent().expect("dir");
        let kept = std::fs::read(dir.join(&held[0])).expect("intake file");
        store.abandon();

        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("reopen");
        assert_eq!(
            seqs(&store).await,
            acked,
            "every acknowledged one, with its number"
        );
        let left = intake_files(&path);
        assert!(
            !left.contains(&held[0]),
            "the emptied file is gone: {left:?}"
        );
        let counted = rollups(&store).await;
        assert!(counted > 0);
        // the next registration goes on from the last number
        let next = store
            .insert_registration(intake_registration(site, 5))
            .await
            .expect("next");
        assert_eq!(next, acked[2] + 1);
        assert_eq!(seqs(&store).await.len(), 4);
        let four = rollups(&store).await;
        assert_eq!(four, counted + counted / 3);
        let counted = four;
        drop(store);
        assert!(
            intake_files(&path).is_empty(),
            "a dropped store leaves no intake file"
        );

        // killed after its commit but before its file was removed: stored once, counted once
        std::fs::write(dir.join(&held[0]), kept).expect("put back");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("again");
        assert_eq!(seqs(&store).await.len(), 4);
        assert_eq!(rollups(&store).await, counted, "no rollup counted twice");
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rows_through_one_statement_keep_their_own_values() {
        use epigrid_core::area::Scope;
        use epigrid_core::model::RegistrationFields;
        use epigrid_core::store::Store;
        let path = scratch("rebind");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        let site = seed_site(&store).await;
        // every field filled; then none (what the row before bound must not stay); then
        // filled again with another plate and no user
        let full = intake_registration(site, 1);
        let mut empty = intake_registration(site, 1);
        empty.fields = RegistrationFields::default();
        empty.companion_list.clear();
        let mut other = intake_registration(site, 2);
        other.fields.plate = Some("蒙L99999".into());
        other.by_user = None;
        let regs = vec![full, empty, other, intake_registration(site, 1)];
        store
            .insert_registrations(regs.clone())
            .await
            .expect("stored");
        for reg in &regs {
            let stored = store
                .registration(reg.id, &Scope::all())
                .await
                .expect("read")
                .expect("there");
            assert_eq!(stored.fields, reg.fields);
            assert_eq!(stored.by_user, reg.by_user);
            assert_eq!(stored.verification_code, reg.verification_code);
        }
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_file_named_almost_like_an_intake_file_is_left_alone() {
        let path = scratch("lookalike");
        let dir = path.parent().expect("dir").to_path_buf();
        std::fs::write(dir.join("t.db-intake-5"), b"not a record").expect("write");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("opens");
        drop(store);
        assert_eq!(
            std::fs::read(dir.join("t.db-intake-5")).expect("still there"),
            b"not a record"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn what_the_intake_held_is_stored_when_the_next_open_is_under_durability_power() {
        use epigrid_core::store::Store;
        let path = scratch("intake-power");
        let store = SqliteStore::open_with(&path, Durability::Process, false).expect("open");
        let site = seed_site(&store).await;
        let acked = acknowledge(&store, site, 1..=3).await;
        assert_eq!(intake_files(&path).len(), 1);
        store.abandon();

        let store = SqliteStore::open_with(&path, Durability::Power, false).expect("reopen");
        assert!(store.intake().is_none(), "power: no intake kept");
        assert_eq!(
            seqs(&store).await,
            acked,
            "every acknowledged one, with its number"
        );
        assert!(intake_files(&path).is_empty(), "{:?}", intake_files(&path));
        let next = store
            .insert_registration(intake_registration(site, 4))
            .await
            .expect("next");
        assert_eq!(next, acked[2] + 1);
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
