//! The intake log: how a registration is acknowledged on SQLite without waiting for a
//! transaction (durability "process", the default).
//!
//! A registration is copied, as one framed record, into a file next to the database that is
//! mapped into memory (`MAP_SHARED`), under a mutex that also hands out its sequence number,
//! and is then acknowledged: the record is in the operating system's page cache, which
//! outlives the process (`kill -9`), as a commit in WAL mode with `synchronous=NORMAL` does.
//! No system call per registration: with a `write` each, `write` to ext4 took ~8% of the
//! tokio workers' time in a profile under load. The records wait in memory too
//! and are committed to the database in one transaction (`Writer::fold` in `lib.rs`) every
//! [`crate::FOLD_EVERY`], before every read and before every other write, so nobody reads or
//! changes the database without seeing every registration already acknowledged. A store that
//! opens the database first commits what a killed process left in its intake files.
//!
//! Each fold moves appends to another file (`<database>-intake-<generation>`, made
//! [`FILE_BYTES`] long, sparse, and mapped off the requests' path). Once the fold's transaction
//! has committed, the file it emptied is zeroed and kept mapped for the fold after (two files
//! take turns: an append writes to pages already mapped, where each new page of a new file
//! took a page fault on the request's path), and any other file it emptied is deleted. (A file
//! that fills up before the next fold is followed by another at once.) A file holds no raw ID or phone number: records are the
//! sealed registrations the database stores. One process at a time owns the intake (an
//! exclusive lock on `<database>-intake.lock`); another process that opens the same database
//! (a command-line tool while `epigrid serve` runs) writes registrations through the
//! database's own transactions instead.
//!
//! Record: body length (u32), sequence number (i64), check (u64: the body's CRC-32 mixed with
//! the sequence number), body ([`encode`]); all little-endian. (Files written before the CRC
//! have FNV-1a in its place, and are read as well: FNV-1a went a byte at a time, about 0.6 µs
//! of the request's time for a registration, where the CRC is a few tens of nanoseconds. A
//! binary from before the CRC reads a CRC record as cut short: after a kill, restart with this
//! version or a later one, or the records it left are dropped.) A record torn by a kill (never
//! acknowledged) passes a 32-bit check with odds of about one in two billion. The file's unused rest is
//! zeros: a zero length ends it. A record cut short or not matching its check also ends the
//! file (a copy the process did not finish, so never acknowledged).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use chrono::NaiveDate;
use epigrid_core::model::{
    Channel, CompanionInput, Direction, NewRegistration, PersonInput, RegistrationFields, SiteKind,
};
use epigrid_core::validate::{DocType, Sex};
use memmap2::MmapMut;
use uuid::Uuid;

use crate::convert::{micros, time};
use crate::{lock, open_private};

/// The format of a record's body; a body of another version is not read.
const VERSION: u8 = 1;
const HEADER: usize = 4 + 8 + 8;
/// No record comes near this; a length beyond it is a torn or foreign file.
const MAX_BODY: usize = 1 << 20;
/// How long an intake file is made (sparse: a page takes room once a record is copied into
/// it): many folds' worth of registrations at 50,000 a second.
pub(crate) const FILE_BYTES: usize = 64 << 20;

pub(crate) struct Intake {
    db: PathBuf,
    /// Held (locked) for as long as this store owns the intake.
    _lock: File,
    state: Mutex<State>,
    /// The generation the next new file gets.
    next_generation: AtomicU64,
    /// Registrations appended and not yet committed: a read or write waits for a fold first
    /// while this is not zero.
    unfolded: AtomicUsize,
    /// A file whose records are all committed, zeroed and still mapped: the next fold's
    /// [`Intake::take`] appends to it rather than to a new file.
    spare: Mutex<Option<Log>>,
}

/// One mapped intake file.
pub(crate) struct Log {
    map: MmapMut,
    /// Bytes used.
    len: usize,
    generation: u64,
}

struct State {
    log: Log,
    /// The last sequence number handed out.
    last_seq: i64,
    pending: Records,
    /// Earlier files that may still hold a record not committed.
    older: Vec<u64>,
}

/// Registrations with their sequence numbers, oldest first. Boxed: a registration is several
/// hundred bytes, and the pending list grows under the intake's lock (unboxed, its doublings
/// copied megabytes there while every other append waited).
pub(crate) type Records = Vec<(i64, Box<NewRegistration>)>;

/// Records taken for a fold, and the files they came from (removed once they are committed,
/// except `log`, which is kept for reuse).
pub(crate) struct Taken {
    pub records: Records,
    pub files: Vec<u64>,
    /// The file appends went to until the fold took it.
    pub log: Option<Log>,
}

fn file_name(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    db.with_file_name(name)
}

fn generation_file(db: &Path, generation: u64) -> PathBuf {
    file_name(db, &format!("-intake-{generation:020}"))
}

/// A new intake file, mapped ([`FILE_BYTES`] long: room for any record, which is at most
/// [`MAX_BODY`]).
fn new_log(db: &Path, generation: u64) -> std::io::Result<Log> {
    let file = open_private(&generation_file(db, generation), true)?;
    file.set_len(FILE_BYTES as u64)?;
    // SAFETY: the file is this process's own (made just now, mode 0600, next to a database
    // whose intake this process holds locked); nothing else truncates it while it is mapped.
    let map = unsafe { memmap2::MmapOptions::new().map_mut(&file)? };
    Ok(Log {
        map,
        len: 0,
        generation,
    })
}

/// `reg`'s record in `frame` (emptied first), with room for its header, which
/// [`seal_frame`] fills in.
fn frame(reg: &NewRegistration, frame: &mut Vec<u8>) {
    frame.clear();
    frame.resize(HEADER, 0);
    encode(reg, frame);
}

/// `reg`'s whole record as sequence number `seq`.
pub(crate) fn framed(reg: &NewRegistration, seq: i64) -> Vec<u8> {
    framed_by(reg, seq, sum)
}

/// `reg`'s whole record as the intake wrote it before the CRC (checked with FNV-1a).
#[cfg(test)]
pub(crate) fn framed_before_crc(reg: &NewRegistration, seq: i64) -> Vec<u8> {
    framed_by(reg, seq, fnv1a)
}

fn framed_by(reg: &NewRegistration, seq: i64, sum: fn(&[u8]) -> u64) -> Vec<u8> {
    // room for a registration with every field filled (one allocation, no growing)
    let mut frame = Vec::with_capacity(1024);
    self::frame(reg, &mut frame);
    let body_sum = sum(&frame[HEADER..]);
    seal_frame(&mut frame, body_sum, seq);
    frame
}

/// Fills in `frame`'s header for sequence number `seq` (`sum`: the body's [`sum`]).
fn seal_frame(frame: &mut [u8], sum: u64, seq: i64) {
    let body_len = (frame.len() - HEADER) as u32;
    frame[..4].copy_from_slice(&body_len.to_le_bytes());
    frame[4..12].copy_from_slice(&seq.to_le_bytes());
    frame[12..20].copy_from_slice(&check(sum, seq).to_le_bytes());
}

impl Intake {
    /// Takes the intake of the database at `db`, with what earlier processes left in it (to
    /// be committed before anything else); `None` when another process owns it.
    pub fn open(db: &Path) -> std::io::Result<Option<(Intake, Records)>> {
        let lock_file = open_private(&file_name(db, "-intake.lock"), false)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let prefix = file_name(db, "-intake-")
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dir = match db.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let mut generations = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            // only names as `generation_file` writes them (twenty digits): another file that
            // happens to start the same is not the intake's
            if let Some(g) = name
                .strip_prefix(&prefix)
                .filter(|g| g.len() == 20)
                .and_then(|g| g.parse::<u64>().ok())
            {
                generations.push(g);
            }
        }
        generations.sort_unstable();
        let mut left = Vec::new();
        for &g in &generations {
            let bytes = read_used(File::open(generation_file(db, g))?)?;
            let (records, whole) = read_records(&bytes);
            if !whole {
                tracing::warn!(
                    generation = g,
                    "an intake file ends in a record cut short; read up to it"
                );
            }
            left.extend(records);
        }
        left.sort_by_key(|(seq, _)| *seq);
        let generation = generations.last().map_or(1, |g| g + 1);
        let log = new_log(db, generation)?;
        let last_seq = left.last().map_or(0, |(s, _)| *s);
        Ok(Some((
            Intake {
                db: db.to_path_buf(),
                _lock: lock_file,
                state: Mutex::new(State {
                    log,
                    last_seq,
                    pending: Vec::new(),
                    older: generations,
                }),
                next_generation: AtomicU64::new(generation + 1),
                unfolded: AtomicUsize::new(left.len()),
                spare: Mutex::new(None),
            },
            left,
        )))
    }

    /// Appends `reg` and returns its sequence number: once this returns, the registration
    /// survives the process being killed.
    pub fn append(&self, reg: NewRegistration) -> std::io::Result<i64> {
        thread_local! {
            // the record is made here, out of the lock, in a buffer this thread keeps
            static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        FRAME.with(|f| {
            let mut f = f.borrow_mut();
            frame(&reg, &mut f);
            self.append_framed(&mut f, Box::new(reg))
        })
    }

    /// [`Intake::append`] of `reg` encoded in `frame` (its header left to fill in).
    fn append_framed(&self, frame: &mut [u8], reg: Box<NewRegistration>) -> std::io::Result<i64> {
        if frame.len() - HEADER > MAX_BODY {
            return Err(std::io::Error::other(
                "registration too large for the intake",
            ));
        }
        let sum = sum(&frame[HEADER..]);
        let mut s = lock(&self.state);
        if s.log.len + frame.len() > s.log.map.len() {
            // full before the next fold took it over: another file, at once
            let g = self.next_generation.fetch_add(1, Ordering::Relaxed);
            let full = std::mem::replace(&mut s.log, new_log(&self.db, g)?);
            s.older.push(full.generation);
        }
        let seq = s.last_seq + 1;
        seal_frame(frame, sum, seq);
        let at = s.log.len;
        s.log.map[at..at + frame.len()].copy_from_slice(frame);
        s.log.len += frame.len();
        s.last_seq = seq;
        s.pending.push((seq, reg));
        self.unfolded.fetch_add(1, Ordering::SeqCst);
        Ok(seq)
    }

    /// Lets another store take the intake (a test's stand-in for the process dying).
    #[cfg(test)]
    pub fn release(&self) {
        let _ = self._lock.unlock();
    }

    /// The sequence number of the last registration acknowledged.
    pub fn last_acknowledged(&self) -> i64 {
        lock(&self.state).last_seq
    }

    /// Whether a registration numbered `seq` or lower waits for a fold (the oldest wait first:
    /// what a failed fold gives back goes before what came since).
    pub fn waits_at_or_below(&self, seq: i64) -> bool {
        lock(&self.state)
            .pending
            .first()
            .is_some_and(|(s, _)| *s <= seq)
    }

    /// Registrations acknowledged and not yet committed.
    pub fn unfolded(&self) -> usize {
        self.unfolded.load(Ordering::SeqCst)
    }

    /// Hands out `n` sequence numbers for registrations written straight to the database
    /// (bulk loads): the first of them.
    pub fn reserve(&self, n: usize) -> i64 {
        let mut s = lock(&self.state);
        let first = s.last_seq + 1;
        s.last_seq += n as i64;
        first
    }

    /// No sequence number at or below `seq` is handed out from now on.
    pub fn raise_floor(&self, seq: i64) {
        let mut s = lock(&self.state);
        s.last_seq = s.last_seq.max(seq);
    }

    /// Queues records (and the files they are in) for the next fold, before anything
    /// appended since: what an earlier process left, or what a fold could not commit.
    pub fn give_back(&self, mut records: Records, files: Vec<u64>) {
        let mut s = lock(&self.state);
        records.append(&mut s.pending);
        s.pending = records;
        s.older.extend(files);
    }

    /// Takes what is pending for a fold and starts a new file for what comes next (made and
    /// mapped before the lock is taken: appends do not wait for the file system), with a
    /// pending list already as long as this fold's (appends do not wait for it to grow).
    pub fn take(&self) -> Option<Taken> {
        let pending = lock(&self.state).pending.len();
        if pending == 0 {
            return None;
        }
        let next = match lock(&self.spare).take() {
            Some(log) => Ok(log),
            None => new_log(
                &self.db,
                self.next_generation.fetch_add(1, Ordering::Relaxed),
            ),
        };
        let room = Vec::with_capacity(pending + pending / 2);
        let mut s = lock(&self.state);
        let records = std::mem::replace(&mut s.pending, room);
        let mut files = std::mem::take(&mut s.older);
        let done = match next {
            Ok(log) => {
                let done = std::mem::replace(&mut s.log, log);
                files.push(done.generation);
                Some(done)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start a new intake file");
                None
            }
        };
        drop(s);
        Some(Taken {
            records,
            files,
            log: done,
        })
    }

    /// A fold committed `n` records, and every record in `files`: they are removed, but for
    /// `log` (one of them), which is emptied for the next fold to append to. Rewriting a page
    /// already mapped takes no page fault, where each new page of a new file took one on
    /// an append (about 1 µs a registration under load, a few percent of the whole request).
    pub fn done(&self, n: usize, files: Vec<u64>, log: Option<Log>) {
        self.unfolded.fetch_sub(n, Ordering::SeqCst);
        let kept = log.map(|mut log| {
            // The first record's length first: killed during the rest, the file reads as
            // empty, and never as the records just committed.
            if log.len >= 4 {
                log.map[..4].fill(0);
                std::sync::atomic::compiler_fence(Ordering::SeqCst);
                log.map[4..log.len].fill(0);
            }
            log.len = 0;
            log
        });
        let keep = kept.as_ref().map(|l| l.generation);
        self.remove(files.into_iter().filter(|g| Some(*g) != keep));
        if let Some(log) = kept {
            // (folds take turns on the writing connection, so there is no spare here; one
            // that was would be empty, and its file goes rather than stay behind untracked)
            if let Some(earlier) = lock(&self.spare).replace(log) {
                self.remove([earlier.generation]);
            }
        }
    }

    fn remove(&self, generations: impl IntoIterator<Item = u64>) {
        for g in generations {
            match std::fs::remove_file(generation_file(&self.db, g)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(error = %e, generation = g, "intake file not removed"),
            }
        }
    }

    /// Keeps a record the database refused (its site gone, say) in
    /// `<database>-intake-rejected`, so that an acknowledged registration is never dropped
    /// silently.
    pub fn reject(&self, seq: i64, reg: &NewRegistration) {
        use std::io::{Seek, Write};
        let written =
            open_private(&file_name(&self.db, "-intake-rejected"), false).and_then(|mut f| {
                f.seek(std::io::SeekFrom::End(0))?;
                f.write_all(&framed(reg, seq))
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "a refused registration could not be kept");
        }
    }
}

impl Drop for Intake {
    /// A store closed with everything committed leaves no intake file behind.
    fn drop(&mut self) {
        if self.unfolded() > 0 {
            return;
        }
        let s = lock(&self.state);
        let spare = lock(&self.spare).as_ref().map(|l| l.generation);
        self.remove(
            s.older
                .iter()
                .copied()
                .chain([s.log.generation])
                .chain(spare),
        );
    }
}

/// A record body's sum, as its check holds it.
fn sum(body: &[u8]) -> u64 {
    u64::from(crc32fast::hash(body))
}

/// The sum of files written before [`sum`].
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn check(sum: u64, seq: i64) -> u64 {
    sum ^ (seq as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// An intake file's bytes up to and including its first mebibyte of nothing but zeros (or
/// the whole file): records start at its beginning and its unused rest is zeros, so nothing
/// is left unread but that rest (a file is [`FILE_BYTES`] long however little it holds). No
/// record reaches across a zero mebibyte: its body starts with [`VERSION`] and is at most
/// [`MAX_BODY`] long.
pub(crate) fn read_used(mut file: impl Read) -> std::io::Result<Vec<u8>> {
    const CHUNK: usize = 1 << 20;
    const _: () = assert!(MAX_BODY <= CHUNK);
    let mut bytes = Vec::new();
    loop {
        let start = bytes.len();
        let read = file.by_ref().take(CHUNK as u64).read_to_end(&mut bytes)?;
        if read < CHUNK || bytes[start..].iter().all(|b| *b == 0) {
            return Ok(bytes);
        }
    }
}

/// The records in `bytes`, and whether they end where the file ends.
pub(crate) fn read_records(bytes: &[u8]) -> (Records, bool) {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return (out, rest.iter().all(|b| *b == 0));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
        let seq = i64::from_le_bytes(rest[4..12].try_into().unwrap_or_default());
        let held = u64::from_le_bytes(rest[12..20].try_into().unwrap_or_default());
        if len == 0 {
            // the file's unused rest (a record is never empty)
            return (out, true);
        }
        if len > MAX_BODY || rest.len() < HEADER + len {
            return (out, false);
        }
        let body = &rest[HEADER..HEADER + len];
        if check(sum(body), seq) != held && check(fnv1a(body), seq) != held {
            return (out, false);
        }
        match decode(body) {
            Some(reg) => out.push((seq, Box::new(reg))),
            None => return (out, false),
        }
        rest = &rest[HEADER + len..];
    }
    (out, true)
}

// ---- the body: every field of a registration, in order ----

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn uuid(&mut self, v: Uuid) {
        self.0.extend_from_slice(v.as_bytes());
    }
    fn date(&mut self, v: NaiveDate) {
        use chrono::Datelike;
        self.i64(i64::from(v.num_days_from_ce()));
    }
    fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
        }
    }
    fn opt_str(&mut self, v: &Option<String>) {
        self.opt(v.as_deref(), |e, s| e.str(s));
    }
    fn opt_bytes(&mut self, v: &Option<Vec<u8>>) {
        self.opt(v.as_deref(), |e, b| e.bytes(b));
    }
    fn person(&mut self, p: &PersonInput) {
        self.uuid(p.id);
        self.opt(p.doc_type, |e, d| e.str(d.as_str()));
        self.opt_bytes(&p.doc_index);
        self.opt_bytes(&p.doc_cipher);
        self.opt_str(&p.doc_masked);
        self.str(&p.name);
        self.opt_bytes(&p.phone_index);
        self.opt_bytes(&p.phone_cipher);
        self.opt_str(&p.phone_masked);
        self.opt(p.birth_date, Self::date);
        self.opt_bytes(&p.birth_index);
        self.opt(p.sex, |e, s| e.str(s.as_str()));
        self.u8(u8::from(p.provisional));
    }
}

/// Appends `reg`'s body to `out`.
pub(crate) fn encode(reg: &NewRegistration, out: &mut Vec<u8>) {
    let mut e = Enc(out);
    e.u8(VERSION);
    e.uuid(reg.id);
    e.uuid(reg.site_id);
    e.str(&reg.area_path);
    e.i64(micros(reg.at));
    e.str(reg.kind.as_str());
    e.str(reg.channel.as_str());
    e.opt(reg.by_user, Enc::uuid);
    e.str(&reg.verification_code);
    e.person(&reg.person);
    e.i64(reg.companion_list.len() as i64);
    for c in &reg.companion_list {
        e.opt_str(&c.name);
        e.opt(c.person.as_ref(), Enc::person);
    }
    let f = &reg.fields;
    e.opt(f.temperature, |e, t| e.i64(i64::from(t)));
    e.u8(f.symptoms);
    e.opt(f.high_risk_travel, |e, b| e.u8(u8::from(b)));
    e.opt_str(&f.plate);
    e.i64(i64::from(f.companions));
    e.opt_str(&f.origin_code);
    e.opt_str(&f.destination);
    e.opt(f.direction, |e, d| e.str(d.as_str()));
    e.opt(f.visitor, |e, b| e.u8(u8::from(b)));
    e.opt_str(&f.unit_code);
    e.opt_str(&f.visit_reason);
    e.opt(f.arrival_date, Enc::date);
    e.opt_str(&f.residence_code);
    e.opt_str(&f.address);
    e.opt_str(&f.employer);
    e.opt(f.stay_days, |e, d| e.i64(i64::from(d)));
    e.opt_str(&f.purpose);
    e.date(reg.day);
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
    fn uuid(&mut self) -> Option<Uuid> {
        Uuid::from_slice(self.take(16)?).ok()
    }
    fn date(&mut self) -> Option<NaiveDate> {
        NaiveDate::from_num_days_from_ce_opt(i32::try_from(self.i64()?).ok()?)
    }
    /// `Some(None)` for an absent value, `None` for a malformed one.
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => f(self).map(Some),
            _ => None,
        }
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        self.opt(Self::str)
    }
    fn opt_bytes(&mut self) -> Option<Option<Vec<u8>>> {
        self.opt(Self::bytes)
    }
    fn person(&mut self) -> Option<PersonInput> {
        Some(PersonInput {
            id: self.uuid()?,
            doc_type: self.opt(|d| DocType::parse(&d.str()?))?,
            doc_index: self.opt_bytes()?,
            doc_cipher: self.opt_bytes()?,
            doc_masked: self.opt_str()?,
            name: self.str()?,
            phone_index: self.opt_bytes()?,
            phone_cipher: self.opt_bytes()?,
            phone_masked: self.opt_str()?,
            birth_date: self.opt(Self::date)?,
            birth_index: self.opt_bytes()?,
            sex: self.opt(|d| Sex::parse(&d.str()?))?,
            provisional: self.bool()?,
        })
    }
}

/// A body [`encode`] wrote; `None` for anything else.
pub(crate) fn decode(body: &[u8]) -> Option<NewRegistration> {
    let mut d = Dec(body);
    if d.u8()? != VERSION {
        return None;
    }
    let id = d.uuid()?;
    let site_id = d.uuid()?;
    let area_path = d.str()?;
    let at = time(d.i64()?);
    let kind = SiteKind::parse(&d.str()?)?;
    let channel = Channel::parse(&d.str()?)?;
    let by_user = d.opt(Dec::uuid)?;
    let verification_code = d.str()?;
    let person = d.person()?;
    let n = usize::try_from(d.i64()?).ok()?;
    let mut companion_list = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        companion_list.push(CompanionInput {
            name: d.opt_str()?,
            person: d.opt(Dec::person)?,
        });
    }
    let fields = RegistrationFields {
        temperature: d.opt(|d| i16::try_from(d.i64()?).ok())?,
        symptoms: d.u8()?,
        high_risk_travel: d.opt(Dec::bool)?,
        plate: d.opt_str()?,
        companions: i32::try_from(d.i64()?).ok()?,
        origin_code: d.opt_str()?,
        destination: d.opt_str()?,
        direction: d.opt(|d| Direction::parse(&d.str()?))?,
        visitor: d.opt(Dec::bool)?,
        unit_code: d.opt_str()?,
        visit_reason: d.opt_str()?,
        arrival_date: d.opt(Dec::date)?,
        residence_code: d.opt_str()?,
        address: d.opt_str()?,
        employer: d.opt_str()?,
        stay_days: d.opt(|d| i32::try_from(d.i64()?).ok())?,
        purpose: d.opt_str()?,
    };
    let day = d.date()?;
    if !d.0.is_empty() {
        return None;
    }
    Some(NewRegistration {
        id,
        site_id,
        area_path,
        at,
        kind,
        channel,
        by_user,
        verification_code,
        person,
        companion_list,
        fields,
        day,
    })
}
