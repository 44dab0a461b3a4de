//! The `Store` implementation: SQL for each operation.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::types::ToSql;
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

use epigrid_core::area::{Area, Scope};
use epigrid_core::model::*;
use epigrid_core::store::{
    path_leaf, registration_metrics, Purged, Store, StoreError, StoreResult,
};
use epigrid_core::validate::{DocType, Sex};

use crate::convert::{date, micros, parse_enum, time, DayText, UuidText, U};
use crate::{map_err, SqliteStore};

const AREA_COLS: &str = "code, name, level, parent_code, path";
const SITE_COLS: &str =
    "id, token, kind, name, area_code, area_path, active, default_stay_min, created_at";
const USER_COLS: &str =
    "id, username, password_hash, role, area_code, area_path, active, created_at";
/// A registration as staff see it. Its name and phone are what was typed into it, and its
/// document is that of the person it came in as (`phone_sealed_for`, when that person had been
/// merged into another by then), never another record's.
const REG_SELECT: &str = "SELECT r.id, r.seq, r.site_id, s.name, r.kind, s.area_code, r.area_path, r.at, \
    r.person_id, r.name, p.doc_type, p.doc_masked, r.phone_masked, p.provisional, \
    r.channel, r.by_user, \
    r.verification_code, r.left_at, r.temperature, r.symptoms, r.high_risk_travel, r.plate, r.companions, \
    r.origin_code, r.destination, r.direction, r.visitor, r.unit_code, r.visit_reason, r.arrival_date, \
    r.residence_code, r.address, r.employer, r.stay_days, r.purpose \
    FROM registrations r JOIN sites s ON s.id = r.site_id \
    JOIN persons p ON p.id = COALESCE(r.phone_sealed_for, r.person_id)";

fn area_row(r: &Row<'_>) -> rusqlite::Result<Area> {
    Ok(Area {
        code: r.get(0)?,
        name: r.get(1)?,
        level: r.get(2)?,
        parent_code: r.get(3)?,
        path: r.get(4)?,
    })
}

fn site_row(r: &Row<'_>) -> rusqlite::Result<Site> {
    Ok(Site {
        id: r.get::<_, U>(0)?.0,
        token: r.get(1)?,
        kind: parse_enum(&r.get::<_, String>(2)?, SiteKind::parse)?,
        name: r.get(3)?,
        area_code: r.get(4)?,
        area_path: r.get(5)?,
        active: r.get(6)?,
        default_stay_min: r.get(7)?,
        created_at: time(r.get(8)?),
    })
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get::<_, U>(0)?.0,
        username: r.get(1)?,
        password_hash: r.get(2)?,
        role: parse_enum(&r.get::<_, String>(3)?, Role::parse)?,
        area_code: r.get(4)?,
        area_path: r.get(5)?,
        active: r.get(6)?,
        created_at: time(r.get(7)?),
    })
}

fn reg_row(r: &Row<'_>) -> rusqlite::Result<Registration> {
    let doc_type: Option<String> = r.get(10)?;
    let direction: Option<String> = r.get(25)?;
    Ok(Registration {
        id: r.get::<_, U>(0)?.0,
        seq: r.get(1)?,
        site_id: r.get::<_, U>(2)?.0,
        site_name: r.get(3)?,
        kind: parse_enum(&r.get::<_, String>(4)?, SiteKind::parse)?,
        area_code: r.get(5)?,
        area_path: r.get(6)?,
        at: time(r.get(7)?),
        person_id: r.get::<_, U>(8)?.0,
        name: r.get(9)?,
        id_type: doc_type.as_deref().and_then(DocType::parse),
        doc_masked: r.get(11)?,
        phone_masked: r.get(12)?,
        provisional: r.get(13)?,
        channel: parse_enum(&r.get::<_, String>(14)?, Channel::parse)?,
        by_user: r.get::<_, Option<U>>(15)?.map(|u| u.0),
        verification_code: r.get(16)?,
        left_at: r.get::<_, Option<i64>>(17)?.map(time),
        fields: RegistrationFields {
            temperature: r.get(18)?,
            symptoms: r.get(19)?,
            high_risk_travel: r.get(20)?,
            plate: r.get(21)?,
            companions: r.get(22)?,
            origin_code: r.get(23)?,
            destination: r.get(24)?,
            direction: direction.as_deref().and_then(Direction::parse),
            visitor: r.get(26)?,
            unit_code: r.get(27)?,
            visit_reason: r.get(28)?,
            arrival_date: date(r.get(29)?),
            residence_code: r.get(30)?,
            address: r.get(31)?,
            employer: r.get(32)?,
            stay_days: r.get(33)?,
            purpose: r.get(34)?,
        },
    })
}

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        id: r.get::<_, U>(1)?.0,
        at: time(r.get(2)?),
        user_id: r.get::<_, Option<U>>(3)?.map(|u| u.0),
        username: r.get(4)?,
        action: r.get(5)?,
        subject: r.get(6)?,
        area_path: r.get(7)?,
        ip: r.get(8)?,
        detail: r.get(9)?,
    })
}

/// What the writer knows of a person: (effective id, phone index, area path, last seen,
/// pinned: managed, see [`upsert_person`]).
type Known = (String, Option<Vec<u8>>, String, i64, bool);

/// The writer's memory of people and plates it has written or read, so a returning person
/// costs no query. Only registrations run while it is kept: any other write, and any failed
/// batch, drops it (`lib.rs`), and so does a commit by another process (a CLI command while
/// `serve` runs, [`forget_if_changed_elsewhere`]), so it never outlives a change it did not
/// make itself. It belongs to the writing connection and is
/// lent to the thread running a batch for the batch's duration ([`swap_memory`]).
#[derive(Default)]
pub(crate) struct WriterMemory {
    persons: std::collections::HashMap<String, Known>,
    /// Plate → the people known to have come with it (looked up without a new key).
    plates: std::collections::HashMap<String, std::collections::HashSet<String>>,
    /// How many (plate, person) pairs `plates` holds.
    plate_pairs: usize,
    /// The database's `data_version` when this memory was last checked against it.
    data_version: Option<i64>,
}

/// People, and (plate, person) pairs, remembered before the memory starts over.
const MEMORY_MAX: usize = 200_000;

thread_local! {
    static MEMORY: std::cell::RefCell<WriterMemory> = std::cell::RefCell::new(WriterMemory::default());
}

/// Exchanges this thread's writer memory with `m`: a batch borrows its connection's memory
/// before it runs and gives it back after, on whichever thread it ran.
pub(crate) fn swap_memory(m: &mut WriterMemory) {
    MEMORY.with(|t| std::mem::swap(&mut *t.borrow_mut(), m));
}

/// Drops the writer's memory of people and plates when another connection has committed
/// since it was last checked (another process: a CLI command pinning or correcting someone
/// while `serve` runs); what it remembers may be what was changed. One pragma a batch.
pub(crate) fn forget_if_changed_elsewhere(conn: &Connection) {
    let version = conn
        .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
        .ok();
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if version.is_none() || m.data_version != version {
            *m = WriterMemory {
                data_version: version,
                ..Default::default()
            };
        }
    });
}

/// Why a compare-and-set update of row `id` in `table` changed nothing: the row changed since
/// the caller read it (`Conflict`), or it is gone (`NotFound`).
fn changed_or_gone(c: &Connection, table: &str, id: Uuid) -> StoreError {
    let exists = c
        .prepare_cached(&format!("SELECT 1 FROM {table} WHERE id = ?1"))
        .and_then(|mut s| s.exists([id.to_string()]));
    match exists {
        Ok(true) => StoreError::Conflict(format!("{table}:{id}")),
        Ok(false) => StoreError::NotFound,
        Err(e) => map_err(e),
    }
}

/// Drops the writer's memory of people and plates.
pub(crate) fn forget_known() {
    MEMORY.with(|m| *m.borrow_mut() = WriterMemory::default());
}

fn remember_person(id: &str, known: Known) {
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.persons.len() >= MEMORY_MAX {
            m.persons.clear();
        }
        m.persons.insert(id.to_string(), known);
    });
}

/// What a registration at `at` in `area_path` changes of a person the writer knows: (a new
/// phone, a move to that area). A pinned person keeps their area, and their phone unless they
/// have none.
fn changes(known: &Known, p: &PersonInput, area_path: &str, at: i64) -> (bool, bool) {
    let (_, phone_index, old_path, last_seen, pinned) = known;
    let new_phone = p.phone_index.is_some()
        && p.phone_index != *phone_index
        && (!pinned || phone_index.is_none());
    let moves = at >= *last_seen && !pinned && old_path != area_path;
    (new_phone, moves)
}

/// Finds or creates a person; returns the id registrations should point at (following a merge).
///
/// A returning person whose phone and area are unchanged (the common case at a gate or
/// checkpoint) costs no query when the writer remembers them, and no write of their own: the
/// time they were last seen is written once per batch ([`BatchEffects`]); otherwise the row is
/// inserted or updated. A person's phone and area follow their latest registration only while
/// they are not pinned (`epigrid_core::pinned_person_sql`; a pinned person without a phone
/// still gets one).
fn upsert_person(c: &Connection, p: &PersonInput, area_path: &str, at: i64) -> StoreResult<String> {
    let id = p.id.to_string();
    // The common case first: a returning person the writer remembers, with no phone or area
    // to change. Only the time they were last seen may move; nothing is cloned but their id.
    let remembered = MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        let known = m.persons.get_mut(&id)?;
        if changes(known, p, area_path, at) != (false, false) {
            return Some(Err(known.clone()));
        }
        let later = at > known.3;
        known.3 = known.3.max(at);
        Some(Ok((known.0.clone(), later)))
    });
    let existing: Option<Known> = match remembered {
        Some(Ok((effective, later))) => {
            if later {
                note_seen(&id, at);
            }
            return Ok(effective);
        }
        Some(Err(known)) => Some(known),
        None => c
            .prepare_cached(concat!(
                "SELECT COALESCE(merged_into, id), phone_index, area_path, last_seen_at, ",
                epigrid_core::pinned_person_sql!(),
                " FROM persons WHERE id = ?1"
            ))
            .map_err(map_err)?
            .query_row([&id], |r| {
                // a sighting earlier in this batch, not written yet, counts as seen (the
                // writer's memory has it, but may have been dropped since)
                let seen: i64 = r.get(3)?;
                let seen = pending_seen(&id).map_or(seen, |t| seen.max(t));
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, seen, r.get(4)?))
            })
            .optional()
            .map_err(map_err)?,
    };
    match existing {
        None => {
            c.prepare_cached(
                "INSERT INTO persons (id, doc_type, doc_index, doc_cipher, doc_masked, name, phone_index, \
                 phone_cipher, phone_masked, birth_date, sex, area_path, provisional, created_at, last_seen_at, \
                 birth_index) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?15)",
            )
            .map_err(map_err)?
            .execute(params![
                id,
                p.doc_type.map(|d| d.as_str()),
                p.doc_index,
                p.doc_cipher,
                p.doc_masked,
                p.name,
                p.phone_index,
                p.phone_cipher,
                p.phone_masked,
                p.birth_date.map(DayText::new),
                p.sex.map(Sex::as_str),
                area_path,
                p.provisional,
                at,
                p.birth_index,
            ])
            .map_err(map_err)?;
            insert_grams(c, &id, &p.name)?;
            remember_person(
                &id,
                (
                    id.clone(),
                    p.phone_index.clone(),
                    area_path.to_string(),
                    at,
                    false,
                ),
            );
            Ok(id)
        }
        Some(known) => {
            let (new_phone, moves) = changes(&known, p, area_path, at);
            let (effective, phone_index, old_path, last_seen, pinned) = known;
            if !new_phone && !moves {
                // Read from the database (a remembered one returned above): only "last seen"
                // may change, written once per batch (see `BatchEffects`).
                if at > last_seen {
                    note_seen(&id, at);
                }
                let known = (
                    effective.clone(),
                    phone_index,
                    old_path,
                    last_seen.max(at),
                    pinned,
                );
                remember_person(&id, known);
                return Ok(effective);
            }
            remember_person(
                &id,
                (
                    effective.clone(),
                    // (a new phone, or a move: either takes this registration's phone)
                    p.phone_index.clone(),
                    if moves {
                        area_path.to_string()
                    } else {
                        old_path
                    },
                    last_seen.max(at),
                    pinned,
                ),
            );
            // A move hands the record to another area's staff: it then holds what this
            // registration gave (name, and phone or none), not what other areas were told.
            c.prepare_cached(
                "UPDATE persons SET \
                   phone_index = CASE WHEN ?2 OR ?6 THEN ?3 ELSE phone_index END, \
                   phone_cipher = CASE WHEN ?2 OR ?6 THEN ?4 ELSE phone_cipher END, \
                   phone_masked = CASE WHEN ?2 OR ?6 THEN ?5 ELSE phone_masked END, \
                   area_path = CASE WHEN ?6 THEN ?7 ELSE area_path END, \
                   name = CASE WHEN ?6 THEN ?9 ELSE name END, \
                   last_seen_at = MAX(last_seen_at, ?8) \
                 WHERE id = ?1",
            )
            .map_err(map_err)?
            .execute(params![
                id,
                new_phone,
                p.phone_index,
                p.phone_cipher,
                p.phone_masked,
                moves,
                area_path,
                at,
                p.name
            ])
            .map_err(map_err)?;
            if moves {
                insert_grams(c, &id, &p.name)?;
            }
            Ok(effective)
        }
    }
}

/// Indexes a name for search by part of it (see `person::name_grams`).
fn insert_grams(c: &Connection, person_id: &str, name: &str) -> StoreResult<()> {
    let mut stmt = c
        .prepare_cached("INSERT OR IGNORE INTO person_grams (gram, person_id) VALUES (?1, ?2)")
        .map_err(map_err)?;
    for g in epigrid_core::person::name_grams(name) {
        stmt.execute(params![g, person_id]).map_err(map_err)?;
    }
    Ok(())
}

/// Stores registrations with their sequence numbers (the next free one for `None`) through one
/// prepared statement.
pub(crate) fn insert_regs<'a>(
    c: &Connection,
    regs: impl IntoIterator<Item = (Option<i64>, &'a NewRegistration)>,
) -> StoreResult<()> {
    let mut statement = insert_reg_statement(c)?;
    regs.into_iter()
        .try_for_each(|(seq, reg)| insert_reg_with(c, &mut statement, reg, seq).map(drop))
}

/// The statement [`insert_reg_with`] runs: prepared once for a batch of registrations rather
/// than taken from the statement cache for each (which hashes the whole SQL text to find it,
/// again to put it back, and clears its bindings in between).
pub(crate) fn insert_reg_statement(c: &Connection) -> StoreResult<RegInsert<'_>> {
    let statement = c.prepare_cached(
        "INSERT INTO registrations (id, site_id, person_id, area_path, at, day, kind, channel, by_user, \
         verification_code, temperature, symptoms, high_risk_travel, plate, companions, origin_code, \
         destination, direction, visitor, unit_code, visit_reason, arrival_date, residence_code, address, \
         employer, stay_days, purpose, phone_cipher, phone_masked, phone_sealed_for, name, seq) VALUES (?1, \
         ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, \
         ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32)",
    )
    .map_err(map_err)?;
    Ok(RegInsert {
        statement,
        bound: Vec::new(),
    })
}

/// The parameters of the registration INSERT that differ in every row: id, time,
/// verification code, sequence number.
const REG_CHANGING: &[usize] = &[0, 4, 9, 31];

/// The registration INSERT and the values its parameters hold from the row before. Bindings
/// outlive a step, so only a value that differs from the last row's is bound again: rows from
/// one site share its id, area, day, kind and channel, and most of the kind-specific fields
/// are empty in all of them (rusqlite copies every text it binds; binding the 32 parameters
/// was about 1.3 µs of each registration in a profile).
pub(crate) struct RegInsert<'c> {
    statement: rusqlite::CachedStatement<'c>,
    bound: Vec<Option<rusqlite::types::Value>>,
}

impl RegInsert<'_> {
    /// Binds `params` (those at `changing`, different in every row, without keeping them)
    /// and runs the statement once.
    fn execute(&mut self, params: &[&dyn ToSql], changing: &[usize]) -> rusqlite::Result<usize> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        self.bound.resize(params.len(), None);
        for (i, p) in params.iter().enumerate() {
            if changing.contains(&i) {
                self.statement.raw_bind_parameter(i + 1, p)?;
                continue;
            }
            let out = p.to_sql()?;
            let value = match &out {
                ToSqlOutput::Borrowed(v) => *v,
                ToSqlOutput::Owned(v) => ValueRef::from(v),
                _ => {
                    self.bound[i] = None;
                    self.statement.raw_bind_parameter(i + 1, p)?;
                    continue;
                }
            };
            if self.bound[i].as_ref().map(ValueRef::from) == Some(value) {
                continue;
            }
            // forgotten first: if the bind fails, the old value is not taken for bound
            self.bound[i] = None;
            self.statement.raw_bind_parameter(i + 1, p)?;
            self.bound[i] = Some(Value::from(value));
        }
        self.statement.raw_execute()
    }
}

/// Stores `reg` with sequence number `seq` (the next free one when `None`) through `statement`
/// ([`insert_reg_statement`]); its sequence number.
pub(crate) fn insert_reg_with(
    c: &Connection,
    statement: &mut RegInsert<'_>,
    reg: &NewRegistration,
    seq: Option<i64>,
) -> StoreResult<i64> {
    #[cfg(test)]
    if tests::PANIC_ON.lock().is_ok_and(|p| p.contains(&reg.id)) {
        panic!("a fault injected into a test");
    }
    let at = micros(reg.at);
    let person_id = upsert_person(c, &reg.person, &reg.area_path, at)?;
    // the person the registration came in as (its phone is sealed for them)
    let id_in = UuidText::new(reg.person.id);
    let f = &reg.fields;
    let id = UuidText::new(reg.id);
    let seq: i64 = statement
        .execute(
            params![
                id,
                UuidText::new(reg.site_id),
                person_id,
                reg.area_path,
                at,
                DayText::new(reg.day),
                reg.kind.as_str(),
                reg.channel.as_str(),
                reg.by_user.map(UuidText::new),
                reg.verification_code,
                f.temperature,
                f.symptoms,
                f.high_risk_travel,
                f.plate,
                f.companions,
                f.origin_code,
                f.destination,
                f.direction.map(|d| d.as_str()),
                f.visitor,
                f.unit_code,
                f.visit_reason,
                f.arrival_date.map(DayText::new),
                f.residence_code,
                f.address,
                f.employer,
                f.stay_days,
                f.purpose,
                reg.person.phone_cipher,
                reg.person.phone_masked,
                (person_id.as_bytes() != id_in.as_bytes()).then_some(&id_in),
                reg.person.name,
                seq,
            ],
            REG_CHANGING,
        )
        .map(|_| c.last_insert_rowid())
        .map_err(map_err)?;
    if let Some(plate) = &f.plate {
        let known = MEMORY.with(|m| {
            m.borrow()
                .plates
                .get(plate.as_str())
                .is_some_and(|people| people.contains(person_id.as_str()))
        });
        if !known {
            c.prepare_cached(
                "INSERT OR IGNORE INTO person_plates (plate, person_id, first_at) VALUES (?1, ?2, ?3)",
            )
            .map_err(map_err)?
            .execute(params![plate, person_id, at])
            .map_err(map_err)?;
            MEMORY.with(|m| {
                let mut m = m.borrow_mut();
                if m.plate_pairs >= MEMORY_MAX {
                    m.plates.clear();
                    m.plate_pairs = 0;
                }
                if m.plates
                    .entry(plate.clone())
                    .or_default()
                    .insert(person_id.clone())
                {
                    m.plate_pairs += 1;
                }
            });
        }
    }
    for (i, comp) in reg.companion_list.iter().enumerate() {
        let pid = match &comp.person {
            Some(p) => Some(upsert_person(c, p, &reg.area_path, at)?),
            None => None,
        };
        c.prepare_cached(
            "INSERT INTO registration_companions (registration_id, position, name, person_id) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(map_err)?
        .execute(params![id, i as i64, comp.name, pid])
        .map_err(map_err)?;
    }
    // Rollup increments are summed for the batch and written at its end (`BatchEffects`).
    BATCH.with(|b| {
        let rollups = &mut b.borrow_mut().rollups;
        // the area's counts found without a new key: under load, a batch's registrations
        // come from few areas
        let counts = match rollups.get_mut(reg.area_path.as_str()) {
            Some(counts) => counts,
            None => rollups.entry(reg.area_path.clone()).or_default(),
        };
        for m in registration_metrics(reg.kind, f) {
            *counts.entry((reg.day, m)).or_default() += 1;
        }
    });
    Ok(seq)
}

/// A batch's rollup increments: area path → (day, metric) → count.
type Rollups =
    std::collections::BTreeMap<String, std::collections::BTreeMap<(NaiveDate, &'static str), i64>>;

/// What the jobs of a batch leave to be written once, at the batch's end, rather than once per
/// job: under load many registrations of a batch add to the same rollup rows, and a returning
/// person's only change is when they were last seen. Kept for the batch on the thread that
/// runs it ([`begin_batch`], [`end_batch`]); a failed batch is rolled back whole, so what its
/// jobs left goes with it.
#[derive(Default)]
pub(crate) struct BatchEffects {
    rollups: Rollups,
    /// person id → their latest registration in the batch that is later than the stored
    /// "last seen" (read back by [`upsert_person`] if the writer's memory was dropped meanwhile)
    seen: std::collections::BTreeMap<String, i64>,
}

thread_local! {
    static BATCH: std::cell::RefCell<BatchEffects> = std::cell::RefCell::new(BatchEffects::default());
}

/// Starts a batch's effects afresh (also what a failed batch does with what it left).
pub(crate) fn begin_batch() {
    BATCH.with(|b| *b.borrow_mut() = BatchEffects::default());
}

/// Writes the batch's effects (inside the batch's transaction) and starts afresh.
pub(crate) fn end_batch(c: &Connection) -> StoreResult<()> {
    BATCH
        .with(|b| std::mem::take(&mut *b.borrow_mut()))
        .flush(c)
}

fn note_seen(id: &str, at: i64) {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        match b.seen.get_mut(id) {
            Some(t) => *t = (*t).max(at),
            None => {
                b.seen.insert(id.to_string(), at);
            }
        }
    });
}

/// A time this batch saw the person that is not written yet.
fn pending_seen(id: &str) -> Option<i64> {
    BATCH.with(|b| b.borrow().seen.get(id).copied())
}

impl BatchEffects {
    /// Writes the batch's effects (inside the batch's transaction).
    fn flush(&self, c: &Connection) -> StoreResult<()> {
        let mut up = c
            .prepare_cached(
                "INSERT INTO rollups (area_code, area_path, day, metric, value) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(area_code, day, metric) DO UPDATE SET value = value + excluded.value",
            )
            .map_err(map_err)?;
        for (path, counts) in &self.rollups {
            for ((day, metric), n) in counts {
                up.execute(params![
                    path_leaf(path),
                    path,
                    DayText::new(*day),
                    metric,
                    n
                ])
                .map_err(map_err)?;
            }
        }
        let mut seen = c
            .prepare_cached("UPDATE persons SET last_seen_at = MAX(last_seen_at, ?2) WHERE id = ?1")
            .map_err(map_err)?;
        for (id, at) in &self.seen {
            seen.execute(params![id, at]).map_err(map_err)?;
        }
        Ok(())
    }
}

fn collect<T>(rows: impl Iterator<Item = rusqlite::Result<T>>) -> StoreResult<Vec<T>> {
    rows.collect::<rusqlite::Result<Vec<T>>>().map_err(map_err)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err))
            .await
    }

    async fn key_check(&self) -> StoreResult<Option<Vec<u8>>> {
        self.read(|c| {
            c.query_row(epigrid_core::store::KEY_CHECK_SQL, [], |r| r.get(0))
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn claim_key_check(&self, check: &[u8]) -> StoreResult<Vec<u8>> {
        let check = check.to_vec();
        self.write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('key_check', ?1)",
                [&check],
            )
            .map_err(map_err)?;
            c.query_row(epigrid_core::store::KEY_CHECK_SQL, [], |r| r.get(0))
                .map_err(map_err)
        })
        .await
    }

    async fn is_demo(&self) -> StoreResult<bool> {
        self.read(|c| {
            c.prepare_cached("SELECT 1 FROM meta WHERE name = 'demo'")
                .and_then(|mut s| s.exists([]))
                .map_err(map_err)
        })
        .await
    }

    async fn mark_demo(&self) -> StoreResult<()> {
        self.write(|c| {
            c.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('demo', x'01')",
                [],
            )
            .map(|_| ())
            .map_err(map_err)
        })
        .await
    }

    async fn seal_birth_dates(
        &self,
        index: &(dyn Fn(NaiveDate) -> Vec<u8> + Send + Sync),
    ) -> StoreResult<u64> {
        use chrono::Datelike;
        let mut changed = 0;
        loop {
            // a thousand at a time, each its own short write: the writer is shared
            let rows: Vec<(String, String)> = self
                .read(|c| {
                    let mut stmt = c
                        .prepare_cached(epigrid_core::store::UNSEALED_BIRTHS_SQL)
                        .map_err(map_err)?;
                    let rows = stmt
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(map_err)?;
                    collect(rows)
                })
                .await?;
            if rows.is_empty() {
                return Ok(changed);
            }
            let sealed: Vec<(String, String, Vec<u8>)> = rows
                .into_iter()
                .filter_map(|(id, d)| {
                    let d = NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok()?;
                    let year = NaiveDate::from_ymd_opt(d.year(), 1, 1)?;
                    Some((id, year.to_string(), index(d)))
                })
                .collect();
            if sealed.is_empty() {
                return Ok(changed);
            }
            changed += self
                .write(move |c| {
                    let mut stmt = c
                        .prepare_cached(
                            "UPDATE persons SET birth_date = ?2, birth_index = ?3 \
                             WHERE id = ?1 AND birth_index IS NULL",
                        )
                        .map_err(map_err)?;
                    let mut n = 0;
                    for (id, year, ix) in &sealed {
                        n += stmt.execute(params![id, year, ix]).map_err(map_err)? as u64;
                    }
                    Ok(n)
                })
                .await?;
        }
    }

    async fn sealed_sample(&self) -> StoreResult<Option<(Uuid, Vec<u8>)>> {
        self.read(|c| {
            c.query_row(
                "SELECT id, doc_cipher FROM persons WHERE doc_cipher IS NOT NULL LIMIT 1",
                [],
                |r| Ok((r.get::<_, U>(0)?.0, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn upsert_areas(&self, areas: &[Area]) -> StoreResult<usize> {
        let areas = areas.to_vec();
        self.write(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "INSERT INTO areas (code, name, level, parent_code, path) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT(code) DO UPDATE SET name = excluded.name, level = excluded.level, \
                     parent_code = excluded.parent_code, path = excluded.path \
                     WHERE name IS NOT excluded.name OR level IS NOT excluded.level \
                       OR parent_code IS NOT excluded.parent_code OR path IS NOT excluded.path",
                )
                .map_err(map_err)?;
            let mut changed = 0;
            for a in &areas {
                changed += stmt
                    .execute(params![a.code, a.name, a.level, a.parent_code, a.path])
                    .map_err(map_err)?;
            }
            Ok(changed)
        })
        .await
    }

    async fn area(&self, code: &str) -> StoreResult<Option<Area>> {
        let code = code.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {AREA_COLS} FROM areas WHERE code = ?1"))
                .map_err(map_err)?
                .query_row([code], area_row)
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn area_children(&self, parent: Option<&str>) -> StoreResult<Vec<Area>> {
        let parent = parent.map(str::to_string);
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {AREA_COLS} FROM areas WHERE parent_code IS ?1 ORDER BY code"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map([parent], area_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    async fn areas_in(&self, scope: &Scope, max_level: u8) -> StoreResult<Vec<Area>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {AREA_COLS} FROM areas WHERE path >= ?1 AND path < ?2 AND level <= ?3 ORDER BY path"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map(params![lo, hi, max_level], area_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    async fn area_count(&self) -> StoreResult<i64> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM areas", [], |r| r.get(0))
                .map_err(map_err)
        })
        .await
    }

    async fn insert_site(&self, site: &Site) -> StoreResult<()> {
        let s = site.clone();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO sites ({SITE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))
            .map_err(map_err)?
            .execute(params![
                s.id.to_string(),
                s.token,
                s.kind.as_str(),
                s.name,
                s.area_code,
                s.area_path,
                s.active,
                s.default_stay_min,
                micros(s.created_at)
            ])
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn update_site(&self, before: &Site, after: &Site) -> StoreResult<()> {
        let (b, s) = (before.clone(), after.clone());
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE sites SET name = ?2, token = ?3, active = ?4, default_stay_min = ?5 WHERE id = ?1 \
                     AND name = ?6 AND token = ?7 AND active = ?8 AND default_stay_min = ?9",
                )
                .map_err(map_err)?
                .execute(params![
                    s.id.to_string(),
                    s.name,
                    s.token,
                    s.active,
                    s.default_stay_min,
                    b.name,
                    b.token,
                    b.active,
                    b.default_stay_min
                ])
                .map_err(map_err)?;
            if n == 0 {
                return Err(changed_or_gone(c, "sites", s.id));
            }
            Ok(())
        })
        .await
    }

    async fn site(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Site>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {SITE_COLS} FROM sites WHERE id = ?1 AND area_path >= ?2 AND area_path < ?3"
            ))
            .map_err(map_err)?
            .query_row(params![id.to_string(), lo, hi], site_row)
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn site_by_token(&self, token: &str) -> StoreResult<Option<Site>> {
        let token = token.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {SITE_COLS} FROM sites WHERE token = ?1"))
                .map_err(map_err)?
                .query_row([token], site_row)
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn sites(&self, scope: &Scope) -> StoreResult<Vec<Site>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {SITE_COLS} FROM sites WHERE area_path >= ?1 AND area_path < ?2 ORDER BY area_path, name, id"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map(params![lo, hi], site_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    async fn insert_registration(&self, reg: NewRegistration) -> StoreResult<i64> {
        // What the database would refuse is refused before the registration is acknowledged
        // through the intake log: a site that does not exist.
        self.require_site(reg.site_id).await?;
        if let Some(intake) = self.intake() {
            return intake.append(reg).map_err(crate::backend);
        }
        self.write_registration(move |c| {
            insert_reg_with(c, &mut insert_reg_statement(c)?, &reg, None)
        })
        .await
    }

    async fn insert_registrations(&self, regs: Vec<NewRegistration>) -> StoreResult<()> {
        // numbered from the intake's counter when there is one, so none collides with a
        // registration it has acknowledged and not yet committed
        let first = self.intake().map(|i| i.reserve(regs.len()));
        self.write(move |c| {
            let seqs = (0..).map(|i| first.map(|f| f + i));
            insert_regs(c, seqs.zip(&regs))
        })
        .await
    }

    async fn registration(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Registration>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "{REG_SELECT} WHERE r.id = ?1 AND r.area_path >= ?2 AND r.area_path < ?3"
            ))
            .map_err(map_err)?
            .query_row(params![id.to_string(), lo, hi], reg_row)
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn registrations(
        &self,
        scope: &Scope,
        f: &RegistrationFilter,
    ) -> StoreResult<Vec<Registration>> {
        let (lo, hi) = scope.bounds();
        let f = f.clone();
        self.read(move |c| {
            let mut sql = format!("{REG_SELECT} WHERE r.area_path >= ?1 AND r.area_path < ?2");
            let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(lo), Box::new(hi)];
            let mut add = |cond: &str, v: Box<dyn ToSql>| {
                args.push(v);
                let ph = format!("?{}", args.len());
                if cond.contains('#') {
                    sql.push_str(&format!(" AND {}", cond.replace('#', &ph)));
                } else {
                    sql.push_str(&format!(" AND {cond} {ph}"));
                }
            };
            if let Some(s) = f.site_id {
                // through the (area_path, seq) index: a site's registrations carry its area
                add(
                    "r.site_id = # AND r.area_path = (SELECT area_path FROM sites WHERE id = #)",
                    Box::new(s.to_string()),
                );
            }
            if let Some(k) = f.kind {
                add("r.kind =", Box::new(k.as_str()));
            }
            if let Some(t) = f.from {
                add("r.at >=", Box::new(micros(t)));
            }
            if let Some(t) = f.to {
                add("r.at <", Box::new(micros(t)));
            }
            if let Some(p) = f.person_id {
                // a person's registrations include those of records merged into them
                add(
                    "r.person_id IN (SELECT id FROM persons WHERE id = # OR merged_into = #)",
                    Box::new(p.to_string()),
                );
            }
            if let Some(s) = f.after_seq {
                add("r.seq >", Box::new(s));
            }
            if let Some(s) = f.before_seq {
                add("r.seq <", Box::new(s));
            }
            let order = if f.after_seq.is_some() { "ASC" } else { "DESC" };
            let limit = f.limit.clamp(1, 5000);
            let tail = format!(" ORDER BY r.seq {order} LIMIT {limit}");
            let run = |sql: &str, args: &[Box<dyn ToSql>]| {
                let mut stmt = c.prepare_cached(sql).map_err(map_err)?;
                let refs: Vec<&dyn ToSql> = args.iter().map(|b| b.as_ref()).collect();
                let rows = stmt.query_map(refs.as_slice(), reg_row).map_err(map_err)?;
                collect(rows)
            };
            if epigrid_core::store::lists_newest(&f) {
                // the newest rows first, by rowid (see `lists_newest`)
                let window = epigrid_core::store::newest_window(limit);
                let mut probe_args = std::mem::take(&mut args);
                probe_args.push(Box::new(f.before_seq));
                let probe = format!(
                    "{} AND r.seq >= COALESCE(?{}, (SELECT MAX(seq) + 1 FROM registrations)) - {window}{tail}",
                    sql.replacen("FROM registrations r ", "FROM registrations r NOT INDEXED ", 1),
                    probe_args.len()
                );
                let rows = run(&probe, &probe_args)?;
                if rows.len() >= limit as usize {
                    return Ok(rows);
                }
                probe_args.pop();
                args = probe_args;
            }
            run(&format!("{sql}{tail}"), &args)
        })
        .await
    }

    async fn check_out(&self, id: Uuid, site_id: Uuid, at: DateTime<Utc>) -> StoreResult<bool> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE registrations SET left_at = ?3 WHERE id = ?1 AND site_id = ?2 AND left_at IS NULL AND at <= ?3",
                )
                .map_err(map_err)?
                .execute(params![id.to_string(), site_id.to_string(), micros(at)])
                .map_err(map_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn registration_count(&self) -> StoreResult<i64> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM registrations", [], |r| r.get(0))
                .map_err(map_err)
        })
        .await
    }

    async fn registration_companions(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Vec<(Option<String>, bool)>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT c.name, c.person_id IS NOT NULL FROM registration_companions c \
                     JOIN registrations r ON r.id = c.registration_id \
                     WHERE r.id = ?1 AND r.area_path >= ?2 AND r.area_path < ?3 ORDER BY c.position",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![id.to_string(), lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    async fn registration_secrets(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<RegistrationSecrets>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT p.id, p.doc_type, p.doc_cipher, r.phone_cipher FROM registrations r \
                 JOIN persons p ON p.id = COALESCE(r.phone_sealed_for, r.person_id) \
                 WHERE r.id = ?1 AND r.area_path >= ?2 AND r.area_path < ?3",
            )
            .map_err(map_err)?
            .query_row(params![id.to_string(), lo, hi], |r| {
                let dt: Option<String> = r.get(1)?;
                Ok(RegistrationSecrets {
                    came_in_as: r.get::<_, U>(0)?.0,
                    doc_type: dt.as_deref().and_then(DocType::parse),
                    doc_cipher: r.get(2)?,
                    phone_cipher: r.get(3)?,
                })
            })
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn person_secrets(
        &self,
        person_id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<PersonSecrets>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, doc_type, doc_cipher, phone_cipher, area_path FROM persons WHERE id = ?1 \
                 AND ((area_path >= ?2 AND area_path < ?3) OR EXISTS (SELECT 1 FROM registrations r \
                 WHERE r.person_id = persons.id AND r.area_path >= ?2 AND r.area_path < ?3))",
            )
            .map_err(map_err)?
            .query_row(params![person_id.to_string(), lo, hi], |r| {
                let dt: Option<String> = r.get(1)?;
                Ok(PersonSecrets {
                    person_id: r.get::<_, U>(0)?.0,
                    doc_type: dt.as_deref().and_then(DocType::parse),
                    doc_cipher: r.get(2)?,
                    phone_cipher: r.get(3)?,
                    area_path: r.get(4)?,
                })
            })
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn person(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Person>> {
        self.person_impl(id, scope).await
    }
    async fn search_persons(
        &self,
        scope: &Scope,
        q: &PersonQuery,
        limit: u32,
    ) -> StoreResult<Vec<Person>> {
        self.search_impl(scope, q, limit).await
    }
    async fn change_category(&self, change: &CategoryChange) -> StoreResult<bool> {
        self.change_category_impl(change).await
    }
    async fn category_history(&self, person_id: Uuid) -> StoreResult<Vec<CategoryChange>> {
        self.category_history_impl(person_id).await
    }
    async fn trace_visits_after(
        &self,
        after: i64,
    ) -> StoreResult<Vec<epigrid_core::trace::VisitRow>> {
        self.trace_visits_after_impl(after).await
    }
    async fn trace_data(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<epigrid_core::trace::TraceData> {
        self.trace_data_impl(since).await
    }
    async fn insert_proximity(
        &self,
        rows: Vec<epigrid_core::trace::ProximityRow>,
    ) -> StoreResult<usize> {
        self.insert_proximity_impl(rows).await
    }
    async fn existing_persons(&self, ids: Vec<Uuid>) -> StoreResult<Vec<Uuid>> {
        self.existing_persons_impl(ids).await
    }
    async fn classify_many(
        &self,
        changes: &[CategoryChange],
        observations: &[Observation],
    ) -> StoreResult<()> {
        self.classify_many_impl(changes, observations).await
    }
    async fn insert_notice(&self, notice: &epigrid_core::trace::Notice) -> StoreResult<()> {
        self.insert_notice_impl(notice).await
    }
    async fn notice_by_token(
        &self,
        token: &str,
    ) -> StoreResult<Option<epigrid_core::trace::Notice>> {
        self.notice_by_token_impl(token).await
    }
    async fn notice(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<epigrid_core::trace::Notice>> {
        self.notice_impl(id, scope).await
    }
    async fn insert_pending_contact(
        &self,
        contact: &epigrid_core::trace::PendingContact,
        person: &PersonInput,
        area_path: &str,
    ) -> StoreResult<()> {
        self.insert_pending_impl(contact, person, area_path).await
    }
    async fn pending_contacts(
        &self,
        notice_id: Uuid,
    ) -> StoreResult<Vec<epigrid_core::trace::PendingContact>> {
        self.pending_impl(notice_id).await
    }
    async fn upsert_contacts(
        &self,
        rows: &[epigrid_core::trace::ContactRecord],
    ) -> StoreResult<Vec<Uuid>> {
        self.upsert_contacts_impl(rows).await
    }
    async fn confirmed_contacts(
        &self,
        scope: &Scope,
    ) -> StoreResult<Vec<epigrid_core::trace::ContactRecord>> {
        self.confirmed_contacts_impl(scope).await
    }
    async fn insert_list(
        &self,
        list: &epigrid_core::store::ListRecord,
        errors: &[epigrid_core::store::ListError],
        matches: &[epigrid_core::matching::ListMatch],
    ) -> StoreResult<()> {
        self.insert_list_impl(list, errors, matches).await
    }
    async fn list_errors(
        &self,
        id: Uuid,
        limit: u32,
    ) -> StoreResult<Vec<epigrid_core::store::ListError>> {
        self.list_errors_impl(id, limit).await
    }
    async fn decide_list_match(
        &self,
        d: &epigrid_core::matching::MatchDecision,
        scope: &Scope,
    ) -> StoreResult<bool> {
        let (lo, hi) = scope.bounds();
        let epigrid_core::matching::MatchDecision {
            list_id,
            line,
            person_id,
            decision,
            by,
            at,
        } = d.clone();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE list_matches SET decision = ?4, decided_by = ?5, decided_at = ?6, \
                     review = CASE WHEN ?4 = 'confirmed' THEN 0 ELSE review END \
                     WHERE list_id = ?1 AND line = ?2 AND person_id = ?3 AND decision IS NULL AND review \
                     AND EXISTS (SELECT 1 FROM lists l WHERE l.id = ?1 AND l.area_path >= ?7 AND l.area_path < ?8) \
                     AND EXISTS (SELECT 1 FROM persons p WHERE p.id = ?3 AND p.area_path >= ?7 AND p.area_path < ?8)",
                )
                .map_err(map_err)?
                .execute(params![
                    list_id.to_string(),
                    line as i64,
                    person_id.to_string(),
                    decision.as_str(),
                    by.to_string(),
                    micros(at),
                    lo,
                    hi
                ])
                .map_err(map_err)?;
            Ok(n == 1)
        })
        .await
    }
    async fn lists_of(
        &self,
        person_id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Vec<(ListRecord, ListMatch)>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT l.id, l.name, l.uploaded_by, l.area_path, l.created_at, l.rows, l.bad_rows, \
                     m.line, m.method, m.confidence, m.review, m.decision FROM list_matches m \
                     JOIN lists l ON l.id = m.list_id JOIN persons p ON p.id = m.person_id WHERE m.person_id = ?1 \
                 AND ((l.area_path >= ?2 AND l.area_path < ?3) OR (p.area_path >= ?2 AND p.area_path < ?3)) \
                     ORDER BY l.created_at DESC, l.id, m.line LIMIT 50",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![person_id.to_string(), lo, hi], |r| {
                    Ok((list_row(r)?, list_match_at(r, 7, person_id)?))
                })
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }
    async fn lists(
        &self,
        scope: &Scope,
        limit: u32,
    ) -> StoreResult<Vec<epigrid_core::store::ListRecord>> {
        self.lists_impl(scope, limit).await
    }
    async fn match_keys(
        &self,
    ) -> StoreResult<(
        Vec<epigrid_core::matching::KnownPerson>,
        Vec<(String, Uuid)>,
    )> {
        self.match_keys_impl().await
    }
    async fn list_match_counts(&self, id: Uuid, scope: &Scope) -> StoreResult<(usize, usize)> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(m.review AND m.decision IS NULL), 0) FROM list_matches m \
                 JOIN persons p ON p.id = m.person_id WHERE m.list_id = ?1 AND p.area_path >= ?2 AND p.area_path < ?3",
            )
            .map_err(map_err)?
            .query_row(params![id.to_string(), lo, hi], |r| {
                Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as usize))
            })
            .map_err(map_err)
        })
        .await
    }
    async fn list_matches(
        &self,
        id: Uuid,
        scope: &Scope,
        page: &epigrid_core::store::MatchPage,
    ) -> StoreResult<
        Option<(
            epigrid_core::store::ListRecord,
            Vec<(epigrid_core::matching::ListMatch, Person)>,
        )>,
    > {
        self.list_matches_impl(id, scope, *page).await
    }
    async fn merge_persons(&self, merge: &epigrid_core::person::PersonMerge) -> StoreResult<()> {
        self.merge_impl(merge).await
    }
    async fn undo_merge(
        &self,
        merge_id: Uuid,
        scope: &Scope,
        at: DateTime<Utc>,
    ) -> StoreResult<epigrid_core::person::PersonMerge> {
        self.undo_merge_impl(merge_id, scope, at).await
    }
    async fn update_person(
        &self,
        id: Uuid,
        name: &str,
        home: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        self.update_person_impl(id, name, home).await
    }
    async fn category_counts(&self, scope: &Scope) -> StoreResult<Vec<(String, Category, i64)>> {
        self.category_counts_impl(scope).await
    }
    async fn insert_observation(&self, o: &Observation) -> StoreResult<()> {
        self.insert_observation_impl(o).await
    }
    async fn update_observation(
        &self,
        before: &Observation,
        after: &Observation,
    ) -> StoreResult<()> {
        self.update_observation_impl(before, after).await
    }
    async fn observation(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Observation>> {
        self.observation_impl(id, scope).await
    }
    async fn observation_by_token(&self, token_hash: &[u8]) -> StoreResult<Option<Observation>> {
        self.observation_by_token_impl(token_hash).await
    }
    async fn observations_of(&self, person_id: Uuid) -> StoreResult<Vec<Observation>> {
        self.observations_of_impl(person_id).await
    }
    async fn observation_rows(
        &self,
        scope: &Scope,
        today: NaiveDate,
        ended_since: NaiveDate,
        released_since: DateTime<Utc>,
        grid_worker: Option<Uuid>,
    ) -> StoreResult<Vec<ObservationRow>> {
        self.observation_rows_impl(scope, today, ended_since, released_since, grid_worker)
            .await
    }
    async fn insert_report(&self, r: &HealthReport) -> StoreResult<()> {
        self.insert_report_impl(r).await
    }
    async fn reports_of(&self, person_id: Uuid) -> StoreResult<Vec<HealthReport>> {
        self.reports_of_impl(person_id).await
    }
    async fn insert_lab_result(&self, r: &LabResult) -> StoreResult<()> {
        self.insert_lab_impl(r).await
    }
    async fn lab_results_of(&self, person_id: Uuid) -> StoreResult<Vec<LabResult>> {
        self.lab_of_impl(person_id).await
    }
    async fn review_list(&self, scope: &Scope) -> StoreResult<Vec<(Person, LabResult)>> {
        self.review_impl(scope).await
    }

    async fn rollup_series(
        &self,
        scope: &Scope,
        metric: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<(NaiveDate, i64)>> {
        let (lo, hi) = scope.bounds();
        let metric = metric.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT day, SUM(value) FROM rollups WHERE metric = ?1 AND area_path >= ?2 AND area_path < ?3 \
                     AND day >= ?4 AND day <= ?5 GROUP BY day ORDER BY day",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![metric, lo, hi, from.to_string(), to.to_string()], |r| {
                    Ok((date(Some(r.get(0)?)).unwrap_or_default(), r.get(1)?))
                })
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    async fn recount_rollups(&self) -> StoreResult<Vec<RollupRow>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT area_path, day, kind, temperature, symptoms, high_risk_travel FROM registrations")
                .map_err(map_err)?;
            let mut counts: std::collections::BTreeMap<(String, String, &'static str), i64> = Default::default();
            let mut rows = stmt.query([]).map_err(map_err)?;
            while let Some(r) = rows.next().map_err(map_err)? {
                let path: String = r.get(0).map_err(map_err)?;
                let day: String = r.get(1).map_err(map_err)?;
                let kind = parse_enum(&r.get::<_, String>(2).map_err(map_err)?, SiteKind::parse).map_err(map_err)?;
                let fields = RegistrationFields {
                    temperature: r.get(3).map_err(map_err)?,
                    symptoms: r.get(4).map_err(map_err)?,
                    high_risk_travel: r.get(5).map_err(map_err)?,
                    ..Default::default()
                };
                let leaf = path_leaf(&path).to_string();
                for m in registration_metrics(kind, &fields) {
                    *counts.entry((leaf.clone(), day.clone(), m)).or_default() += 1;
                }
            }
            Ok(counts
                .into_iter()
                .map(|((area_code, day, metric), value)| RollupRow {
                    area_code,
                    day: date(Some(day)).unwrap_or_default(),
                    metric: metric.to_string(),
                    value,
                })
                .collect())
        })
        .await
    }

    async fn rollup_rows(&self) -> StoreResult<Vec<RollupRow>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT area_code, day, metric, value FROM rollups ORDER BY area_code, day, metric")
                .map_err(map_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(RollupRow {
                        area_code: r.get(0)?,
                        day: date(Some(r.get(1)?)).unwrap_or_default(),
                        metric: r.get(2)?,
                        value: r.get(3)?,
                    })
                })
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    async fn insert_user(&self, user: &User) -> StoreResult<()> {
        let u = user.clone();
        self.write(move |c| {
            // a name that differs from another only in case is taken too ("Admin", "admin")
            let n = c
                .prepare_cached(&format!(
                    "INSERT INTO users ({USER_COLS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 \
                     WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower(?2))"
                ))
                .map_err(map_err)?
                .execute(params![
                    u.id.to_string(),
                    u.username,
                    u.password_hash,
                    u.role.as_str(),
                    u.area_code,
                    u.area_path,
                    u.active,
                    micros(u.created_at)
                ])
                .map_err(map_err)?;
            if n == 0 {
                return Err(StoreError::Conflict("username taken".into()));
            }
            Ok(())
        })
        .await
    }

    async fn update_user(&self, user: &User) -> StoreResult<()> {
        let u = user.clone();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE users SET password_hash = ?2, role = ?3, area_code = ?4, area_path = ?5, active = ?6 WHERE id = ?1",
                )
                .map_err(map_err)?
                .execute(params![u.id.to_string(), u.password_hash, u.role.as_str(), u.area_code, u.area_path, u.active])
                .map_err(map_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            // a deactivated account's sessions end with it (reactivated, it logs in afresh)
            if !u.active {
                c.prepare_cached("DELETE FROM sessions WHERE user_id = ?1")
                    .map_err(map_err)?
                    .execute([u.id.to_string()])
                    .map_err(map_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"))
                .map_err(map_err)?
                .query_row([id.to_string()], user_row)
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let name = username.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {USER_COLS} FROM users WHERE username = ?1"
            ))
            .map_err(map_err)?
            .query_row([name], user_row)
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn users(&self, scope: &Scope) -> StoreResult<Vec<User>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {USER_COLS} FROM users WHERE area_path >= ?1 AND area_path < ?2 ORDER BY username"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map(params![lo, hi], user_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    async fn insert_session(&self, s: &Session) -> StoreResult<()> {
        let s = s.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, csrf, api, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(map_err)?
            .execute(params![
                s.token_hash,
                s.user_id.to_string(),
                s.csrf,
                s.api,
                micros(s.created_at),
                micros(s.expires_at)
            ])
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn session(
        &self,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(Session, User)>> {
        let h = token_hash.to_vec();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT s.token_hash, s.user_id, s.csrf, s.api, s.created_at, s.expires_at, \
                 u.id, u.username, u.password_hash, u.role, u.area_code, u.area_path, u.active, u.created_at \
                 FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = ?1 AND s.expires_at > ?2 AND u.active = 1",
            )
            .map_err(map_err)?
            .query_row(params![h, micros(now)], |r| {
                let s = Session {
                    token_hash: r.get(0)?,
                    user_id: r.get::<_, U>(1)?.0,
                    csrf: r.get(2)?,
                    api: r.get(3)?,
                    created_at: time(r.get(4)?),
                    expires_at: time(r.get(5)?),
                };
                let u = User {
                    id: r.get::<_, U>(6)?.0,
                    username: r.get(7)?,
                    password_hash: r.get(8)?,
                    role: parse_enum(&r.get::<_, String>(9)?, Role::parse)?,
                    area_code: r.get(10)?,
                    area_path: r.get(11)?,
                    active: r.get(12)?,
                    created_at: time(r.get(13)?),
                };
                Ok((s, u))
            })
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn delete_session(&self, token_hash: &[u8]) -> StoreResult<()> {
        let h = token_hash.to_vec();
        self.write(move |c| {
            c.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")
                .map_err(map_err)?
                .execute([&h])
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")
                .map_err(map_err)?
                .execute([micros(now)])
                .map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn purge_before(&self, before: DateTime<Utc>) -> StoreResult<Purged> {
        use epigrid_core::store::{purge_sql, GONE_PEOPLE_SQL, KEPT_PEOPLE_SQL, STALE_PLATES_SQL};
        // The writer is the only one: a purge of a million rows in one transaction would hold
        // every registration back for most of a minute. So the people kept are noted once,
        // then the tables are walked in windows of PURGE_WINDOW rows (by rowid). A reader
        // looks first whether a window holds anything old; only then does the writer take it,
        // as its own transaction, after which the purge waits as long as that took: the
        // registrations queued meanwhile go first, a purge slows them by a window's time at
        // most (milliseconds), and it takes the writer half the time at most. An hourly walk
        // that finds little to do is reads. (The note of who is kept is as old as the walk:
        // each window of registrations also looks at the person's category again, and people
        // and plates go by who is kept at that moment.)
        const PURGE_WINDOW: i64 = 500;
        let at = micros(before);
        let (regs, people) = self
            .write(|c| {
                c.execute_batch(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS purge_kept (id TEXT PRIMARY KEY); \
                     CREATE TEMP TABLE IF NOT EXISTS purge_chunk (id TEXT PRIMARY KEY); \
                     DELETE FROM purge_kept; INSERT OR IGNORE INTO purge_kept {KEPT_PEOPLE_SQL};"
                ))
                .map_err(map_err)?;
                let span = |table: &str| {
                    c.query_row(
                        &format!(
                            "SELECT COALESCE(MIN(rowid), 1), COALESCE(MAX(rowid), 0) FROM {table}"
                        ),
                        [],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                    )
                    .map_err(map_err)
                };
                Ok((span("registrations")?, span("persons")?))
            })
            .await?;
        let kept = "SELECT id FROM purge_kept";
        // One window: what `select` finds among rowids ?2..?3 goes, through `deletes`.
        let window = |select: String, deletes: &'static [&'static str], lo: i64| {
            move |c: &Connection| -> StoreResult<u64> {
                c.execute("DELETE FROM purge_chunk", []).map_err(map_err)?;
                let n = c
                    .execute(
                        &format!("INSERT INTO purge_chunk {select}"),
                        params![at, lo, lo + PURGE_WINDOW - 1],
                    )
                    .map_err(map_err)?;
                for d in deletes {
                    c.execute(d, []).map_err(map_err)?;
                }
                Ok(n as u64)
            }
        };
        let old_registrations = format!(
            "SELECT r.id FROM registrations r WHERE r.seq BETWEEN ?2 AND ?3 AND r.at < ?1 \
             AND r.person_id NOT IN ({kept}) \
             AND NOT EXISTS (SELECT 1 FROM persons p WHERE p.id = r.person_id \
                             AND (p.category <> 'none' OR p.corrected <> 0)) \
             AND NOT EXISTS (SELECT 1 FROM registration_companions c \
                             WHERE c.registration_id = r.id AND c.person_id IN ({kept}))"
        );
        let gone_people = format!(
            "{} AND p.rowid BETWEEN ?2 AND ?3",
            purge_sql(GONE_PEOPLE_SQL, "?1")
        );
        // Whether a window holds anything old at all (on a reader).
        let any_old = |sql: &'static str, lo: i64| {
            self.read(move |c| {
                c.prepare_cached(sql)
                    .map_err(map_err)?
                    .query_row(params![at, lo, lo + PURGE_WINDOW - 1], |r| {
                        r.get::<_, bool>(0)
                    })
                    .map_err(map_err)
            })
        };
        let paced = |job| async move {
            let start = std::time::Instant::now();
            let n = self.write(job).await?;
            tokio::time::sleep(start.elapsed()).await;
            Ok::<u64, StoreError>(n)
        };
        // Walks the rowids `first..=last` window by window: where `check` finds anything old,
        // what `select` finds goes, through `deletes`.
        let (any_old, paced, window) = (&any_old, &paced, &window);
        let walk = |(first, last): (i64, i64),
                    check: &'static str,
                    select: String,
                    deletes: &'static [&'static str]| async move {
            let mut n = 0;
            for lo in (first..=last).step_by(PURGE_WINDOW as usize) {
                if any_old(check, lo).await? {
                    n += paced(window(select.clone(), deletes, lo)).await?;
                }
            }
            Ok::<u64, StoreError>(n)
        };
        let registrations = walk(
            regs,
            "SELECT EXISTS (SELECT 1 FROM registrations WHERE seq BETWEEN ?2 AND ?3 AND at < ?1)",
            old_registrations,
            &[
                "DELETE FROM registration_companions WHERE registration_id IN (SELECT id FROM purge_chunk)",
                "DELETE FROM registrations WHERE id IN (SELECT id FROM purge_chunk)",
            ],
        )
        .await?;
        let plates = purge_sql(STALE_PLATES_SQL, "?1");
        self.write(move |c| c.execute(&plates, [at]).map_err(map_err))
            .await?;
        let persons = walk(
            people,
            "SELECT EXISTS (SELECT 1 FROM persons WHERE rowid BETWEEN ?2 AND ?3 \
             AND last_seen_at < ?1 AND category = 'none')",
            gone_people,
            &[
                "DELETE FROM person_grams WHERE person_id IN (SELECT id FROM purge_chunk)",
                "DELETE FROM person_plates WHERE person_id IN (SELECT id FROM purge_chunk)",
                "DELETE FROM persons WHERE id IN (SELECT id FROM purge_chunk)",
            ],
        )
        .await?;
        Ok(Purged {
            registrations,
            persons,
        })
    }

    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        let e = e.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO audit_log (id, at, user_id, username, action, subject, area_path, ip, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(map_err)?
            .execute(params![
                e.id.to_string(),
                micros(e.at),
                e.user_id.map(|u| u.to_string()),
                e.username,
                e.action,
                e.subject,
                e.area_path,
                e.ip,
                e.detail
            ])
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn audit_log(&self, scope: &Scope, f: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let (lo, hi) = scope.bounds();
        let f = f.clone();
        self.read(move |c| {
            let mut sql = String::from(
                "SELECT seq, id, at, user_id, username, action, subject, area_path, ip, detail FROM audit_log \
                 WHERE ((area_path >= ?1 AND area_path < ?2) OR (?3 AND area_path = '/'))",
            );
            let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(lo), Box::new(hi), Box::new(f.unplaced)];
            let mut add = |cond: &str, v: Box<dyn ToSql>| {
                args.push(v);
                sql.push_str(&format!(" AND {cond} ?{}", args.len()));
            };
            for (col, v) in [("username =", &f.username), ("action =", &f.action), ("subject =", &f.subject)] {
                if let Some(v) = v {
                    add(col, Box::new(v.clone()));
                }
            }
            if let Some(t) = f.from {
                add("at >=", Box::new(micros(t)));
            }
            if let Some(t) = f.to {
                add("at <", Box::new(micros(t)));
            }
            if let Some(s) = f.before_seq {
                add("seq <", Box::new(s));
            }
            sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", f.limit.clamp(1, 10_000)));
            let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
            let refs: Vec<&dyn ToSql> = args.iter().map(|b| b.as_ref()).collect();
            let rows = stmt.query_map(refs.as_slice(), audit_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// People under management

use epigrid_core::person::{
    Category, CategoryChange, HealthReport, LabResult, Observation, ObservationKind,
    ObservationRow, Person, PersonQuery, TestKind, TestResult,
};

const PERSON_COLS: &str = "p.id, p.name, p.doc_type, p.doc_masked, p.phone_masked, p.birth_date, p.sex, \
    p.home_area_code, p.area_path, p.provisional, p.merged_into, p.category, p.category_since, p.created_at, p.last_seen_at";
const OBS_COLS: &str = "o.id, o.person_id, o.kind, o.site_id, o.start_date, o.planned_end, o.released_at, \
    o.release_reason, o.grid_worker_id, o.token_hash, o.token_revoked, o.reports_per_day, o.area_path, o.created_at, o.created_by";

fn person_row(r: &Row<'_>) -> rusqlite::Result<Person> {
    person_row_at(r, 0)
}

fn person_row_at(r: &Row<'_>, o: usize) -> rusqlite::Result<Person> {
    let dt: Option<String> = r.get(o + 2)?;
    let sex: Option<String> = r.get(o + 6)?;
    Ok(Person {
        id: r.get::<_, U>(o)?.0,
        name: r.get(o + 1)?,
        doc_type: dt.as_deref().and_then(DocType::parse),
        doc_masked: r.get(o + 3)?,
        phone_masked: r.get(o + 4)?,
        birth_date: date(r.get(o + 5)?),
        sex: sex.as_deref().and_then(Sex::parse),
        home_area_code: r.get(o + 7)?,
        area_path: r.get(o + 8)?,
        provisional: r.get(o + 9)?,
        merged_into: r.get::<_, Option<U>>(o + 10)?.map(|u| u.0),
        category: parse_enum(&r.get::<_, String>(o + 11)?, Category::parse)?,
        category_since: r.get::<_, Option<i64>>(o + 12)?.map(time),
        created_at: time(r.get(o + 13)?),
        last_seen_at: time(r.get(o + 14)?),
    })
}

fn obs_row(r: &Row<'_>) -> rusqlite::Result<Observation> {
    Ok(Observation {
        id: r.get::<_, U>(0)?.0,
        person_id: r.get::<_, U>(1)?.0,
        kind: parse_enum(&r.get::<_, String>(2)?, ObservationKind::parse)?,
        site_id: r.get::<_, Option<U>>(3)?.map(|u| u.0),
        start: date(r.get(4)?).unwrap_or_default(),
        planned_end: date(r.get(5)?).unwrap_or_default(),
        released_at: r.get::<_, Option<i64>>(6)?.map(time),
        release_reason: r.get(7)?,
        grid_worker_id: r.get::<_, Option<U>>(8)?.map(|u| u.0),
        token_hash: r.get(9)?,
        token_revoked: r.get(10)?,
        reports_per_day: r.get(11)?,
        area_path: r.get(12)?,
        created_at: time(r.get(13)?),
        created_by: r.get::<_, Option<U>>(14)?.map(|u| u.0),
    })
}

fn report_row(r: &Row<'_>) -> rusqlite::Result<HealthReport> {
    Ok(HealthReport {
        id: r.get::<_, U>(0)?.0,
        observation_id: r.get::<_, U>(1)?.0,
        person_id: r.get::<_, U>(2)?.0,
        day: date(r.get(3)?).unwrap_or_default(),
        slot: r.get(4)?,
        at: time(r.get(5)?),
        temperature: r.get(6)?,
        symptoms: r.get(7)?,
        note: r.get(8)?,
        by_user: r.get::<_, Option<U>>(9)?.map(|u| u.0),
    })
}

fn lab_row(r: &Row<'_>, o: usize) -> rusqlite::Result<LabResult> {
    Ok(LabResult {
        id: r.get::<_, U>(o)?.0,
        person_id: r.get::<_, U>(o + 1)?.0,
        test: parse_enum(&r.get::<_, String>(o + 2)?, TestKind::parse)?,
        sample_date: date(r.get(o + 3)?).unwrap_or_default(),
        result_date: date(r.get(o + 4)?),
        result: parse_enum(&r.get::<_, String>(o + 5)?, TestResult::parse)?,
        entered_by: r.get::<_, Option<U>>(o + 6)?.map(|u| u.0),
        created_at: time(r.get(o + 7)?),
    })
}

/// A category change, compare-and-set, with its history row; false if the person is no longer
/// in `ch.from`.
fn apply_change(c: &Connection, ch: &CategoryChange) -> StoreResult<bool> {
    let n = c
        .prepare_cached(
            "UPDATE persons SET category = ?2, category_since = ?3 WHERE id = ?1 AND category = ?4 \
             AND merged_into IS NULL",
        )
        .map_err(map_err)?
        .execute(params![
            ch.person_id.to_string(),
            ch.to.as_str(),
            micros(ch.at),
            ch.from.as_str()
        ])
        .map_err(map_err)?;
    if n == 0 {
        return Ok(false);
    }
    c.prepare_cached(
        "INSERT INTO category_changes (id, person_id, from_cat, to_cat, at, by_user, by_username, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .map_err(map_err)?
    .execute(params![
        ch.id.to_string(),
        ch.person_id.to_string(),
        ch.from.as_str(),
        ch.to.as_str(),
        micros(ch.at),
        ch.by_user.map(|u| u.to_string()),
        ch.by_username,
        ch.reason
    ])
    .map_err(map_err)?;
    Ok(true)
}

/// Starts an observation unless the person has one not released whose days reach this one's
/// start (`StoreError::Conflict`; the one writer makes the check and the insert one step).
fn insert_obs(c: &Connection, o: &Observation) -> StoreResult<()> {
    // a record merged away takes no new facts (checked here too: a merge may have come
    // between the caller's read and this write)
    let merged = c
        .prepare_cached("SELECT 1 FROM persons WHERE id = ?1 AND merged_into IS NOT NULL")
        .map_err(map_err)?
        .exists([o.person_id.to_string()])
        .map_err(map_err)?;
    if merged {
        return Err(StoreError::Conflict(format!("merged:{}", o.person_id)));
    }
    let overlapping = c
        .prepare_cached(
            "SELECT 1 FROM observations WHERE person_id = ?1 AND released_at IS NULL \
             AND planned_end >= ?2 LIMIT 1",
        )
        .map_err(map_err)?
        .exists(params![o.person_id.to_string(), o.start.to_string()])
        .map_err(map_err)?;
    if overlapping {
        return Err(StoreError::Conflict(format!("observation:{}", o.person_id)));
    }
    c.prepare_cached(&format!(
        "INSERT INTO observations ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        OBS_COLS.replace("o.", "")
    ))
    .map_err(map_err)?
    .execute(params![
        o.id.to_string(),
        o.person_id.to_string(),
        o.kind.as_str(),
        o.site_id.map(|u| u.to_string()),
        o.start.to_string(),
        o.planned_end.to_string(),
        o.released_at.map(micros),
        o.release_reason,
        o.grid_worker_id.map(|u| u.to_string()),
        o.token_hash,
        o.token_revoked,
        o.reports_per_day,
        o.area_path,
        micros(o.created_at),
        o.created_by.map(|u| u.to_string()),
    ])
    .map_err(map_err)?;
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn person_impl(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Person>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {PERSON_COLS} FROM persons p WHERE p.id = ?1 AND p.area_path >= ?2 AND p.area_path < ?3"
            ))
            .map_err(map_err)?
            .query_row(params![id.to_string(), lo, hi], person_row)
            .optional()
            .map_err(map_err)
        })
        .await
    }

    pub(crate) async fn search_impl(
        &self,
        scope: &Scope,
        q: &PersonQuery,
        limit: u32,
    ) -> StoreResult<Vec<Person>> {
        let (lo, hi) = scope.bounds();
        let q = q.clone();
        let limit = i64::from(limit.clamp(1, 500));
        self.read(move |c| {
            let scoped = "p.area_path >= ?1 AND p.area_path < ?2 AND p.merged_into IS NULL";
            let (sql, arg): (String, Box<dyn ToSql>) = match &q {
                PersonQuery::Document { index, doc_type } => (
                    // a record merged into another is found as the one it was merged into
                    format!(
                        "SELECT {PERSON_COLS} FROM persons p WHERE p.id IN (SELECT COALESCE(x.merged_into, x.id) \
                         FROM persons x WHERE x.doc_type = '{}' AND x.doc_index = ?3) AND {scoped} LIMIT ?4",
                        doc_type.as_str()
                    ),
                    Box::new(index.clone()),
                ),
                PersonQuery::Phone(index) => (
                    format!(
                        "SELECT {PERSON_COLS} FROM persons p WHERE p.id IN (SELECT COALESCE(x.merged_into, x.id) \
                         FROM persons x WHERE x.phone_index = ?3) AND {scoped} ORDER BY p.last_seen_at DESC, p.id LIMIT ?4"
                    ),
                    Box::new(index.clone()),
                ),
                PersonQuery::Plate(plate) => (
                    format!(
                        "SELECT {PERSON_COLS} FROM persons p WHERE p.id IN (SELECT COALESCE(x.merged_into, x.id) FROM person_plates pp \
                         JOIN persons x ON x.id = pp.person_id WHERE pp.plate = ?3) \
                         AND {scoped} ORDER BY p.last_seen_at DESC, p.id LIMIT ?4"
                    ),
                    Box::new(plate.clone()),
                ),
                PersonQuery::Name(name) => (
                    format!(
                        "SELECT {PERSON_COLS} FROM persons p WHERE p.id IN (SELECT person_id FROM person_grams WHERE gram = ?5) \
                         AND instr(epigrid_fold(p.name), ?3) > 0 AND {scoped} \
                         ORDER BY (epigrid_fold(p.name) = ?3) DESC, p.last_seen_at DESC, p.id LIMIT ?4"
                    ),
                    Box::new(epigrid_core::person::fold_name(name)),
                ),
            };
            let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
            let gram = match &q {
                PersonQuery::Name(n) => epigrid_core::person::search_gram(n),
                _ => String::new(),
            };
            let rows = if matches!(q, PersonQuery::Name(_)) {
                stmt.query_map(params![lo, hi, arg, limit, gram], person_row)
            } else {
                stmt.query_map(params![lo, hi, arg, limit], person_row)
            }
            .map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn change_category_impl(&self, ch: &CategoryChange) -> StoreResult<bool> {
        let ch = ch.clone();
        self.write(move |c| apply_change(c, &ch)).await
    }

    pub(crate) async fn category_history_impl(
        &self,
        person_id: Uuid,
    ) -> StoreResult<Vec<CategoryChange>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, person_id, from_cat, to_cat, at, by_user, by_username, reason FROM category_changes \
                     WHERE person_id = ?1 ORDER BY at, id",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map([person_id.to_string()], |r| {
                    Ok(CategoryChange {
                        id: r.get::<_, U>(0)?.0,
                        person_id: r.get::<_, U>(1)?.0,
                        from: parse_enum(&r.get::<_, String>(2)?, Category::parse)?,
                        to: parse_enum(&r.get::<_, String>(3)?, Category::parse)?,
                        at: time(r.get(4)?),
                        by_user: r.get::<_, Option<U>>(5)?.map(|u| u.0),
                        by_username: r.get(6)?,
                        reason: r.get(7)?,
                    })
                })
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn category_counts_impl(
        &self,
        scope: &Scope,
    ) -> StoreResult<Vec<(String, Category, i64)>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT area_path, category, COUNT(*) FROM persons WHERE category <> 'none' \
                     AND area_path >= ?1 AND area_path < ?2 AND merged_into IS NULL GROUP BY area_path, category ORDER BY area_path, category",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![lo, hi], |r| {
                    Ok((r.get(0)?, parse_enum(&r.get::<_, String>(1)?, Category::parse)?, r.get(2)?))
                })
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn insert_observation_impl(&self, o: &Observation) -> StoreResult<()> {
        let o = o.clone();
        self.write(move |c| insert_obs(c, &o)).await
    }

    pub(crate) async fn update_observation_impl(
        &self,
        before: &Observation,
        after: &Observation,
    ) -> StoreResult<()> {
        let (b, o) = (before.clone(), after.clone());
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE observations SET planned_end = ?2, released_at = ?3, release_reason = ?4, grid_worker_id = ?5, \
                     token_hash = ?6, token_revoked = ?7, reports_per_day = ?8, area_path = ?16 WHERE id = ?1 \
                     AND planned_end = ?9 AND released_at IS ?10 AND release_reason IS ?11 \
                     AND grid_worker_id IS ?12 AND token_hash = ?13 AND token_revoked = ?14 \
                     AND reports_per_day = ?15 AND area_path = ?17",
                )
                .map_err(map_err)?
                .execute(params![
                    o.id.to_string(),
                    o.planned_end.to_string(),
                    o.released_at.map(micros),
                    o.release_reason,
                    o.grid_worker_id.map(|u| u.to_string()),
                    o.token_hash,
                    o.token_revoked,
                    o.reports_per_day,
                    b.planned_end.to_string(),
                    b.released_at.map(micros),
                    b.release_reason,
                    b.grid_worker_id.map(|u| u.to_string()),
                    b.token_hash,
                    b.token_revoked,
                    b.reports_per_day,
                    o.area_path,
                    b.area_path
                ])
                .map_err(map_err)?;
            if n == 0 {
                return Err(changed_or_gone(c, "observations", o.id));
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn observation_impl(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<Observation>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {OBS_COLS} FROM observations o JOIN persons p ON p.id = o.person_id \
                 WHERE o.id = ?1 AND p.area_path >= ?2 AND p.area_path < ?3"
            ))
            .map_err(map_err)?
            .query_row(params![id.to_string(), lo, hi], obs_row)
            .optional()
            .map_err(map_err)
        })
        .await
    }

    pub(crate) async fn observation_by_token_impl(
        &self,
        hash: &[u8],
    ) -> StoreResult<Option<Observation>> {
        let h = hash.to_vec();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {OBS_COLS} FROM observations o WHERE o.token_hash = ?1"
            ))
            .map_err(map_err)?
            .query_row([&h], obs_row)
            .optional()
            .map_err(map_err)
        })
        .await
    }

    pub(crate) async fn observations_of_impl(
        &self,
        person_id: Uuid,
    ) -> StoreResult<Vec<Observation>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {OBS_COLS} FROM observations o WHERE o.person_id = ?1 ORDER BY o.start_date DESC, o.created_at DESC"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map([person_id.to_string()], obs_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn observation_rows_impl(
        &self,
        scope: &Scope,
        today: NaiveDate,
        ended_since: NaiveDate,
        released_since: DateTime<Utc>,
        grid_worker: Option<Uuid>,
    ) -> StoreResult<Vec<ObservationRow>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {OBS_COLS}, p.name, p.category, \
                     last.at, last.temperature, last.symptoms, \
                     (SELECT COUNT(*) FROM health_reports h WHERE h.observation_id = o.id AND h.day = ?3) \
                     FROM observations o JOIN persons p ON p.id = o.person_id \
                     LEFT JOIN health_reports last ON last.id = \
                       (SELECT h.id FROM health_reports h WHERE h.observation_id = o.id ORDER BY h.at DESC LIMIT 1) \
                     WHERE p.area_path >= ?1 AND p.area_path < ?2 AND p.merged_into IS NULL \
                     AND (o.released_at IS NULL OR o.planned_end >= ?4 OR o.released_at >= ?5) \
                     AND (?6 IS NULL OR o.grid_worker_id = ?6) ORDER BY o.planned_end, o.id"
                ))
                .map_err(map_err)?;
            let since_us = micros(released_since);
            let rows = stmt
                .query_map(
                    params![lo, hi, today.to_string(), ended_since.to_string(), since_us, grid_worker.map(|u| u.to_string())],
                    |r| {
                        Ok(ObservationRow {
                            observation: obs_row(r)?,
                            person_name: r.get(15)?,
                            category: parse_enum(&r.get::<_, String>(16)?, Category::parse)?,
                            last_report_at: r.get::<_, Option<i64>>(17)?.map(time),
                            last_temperature: r.get(18)?,
                            last_symptoms: r.get::<_, Option<u8>>(19)?.unwrap_or(0),
                            reports_today: r.get(20)?,
                        })
                    },
                )
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn insert_report_impl(&self, h: &HealthReport) -> StoreResult<()> {
        let h = h.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO health_reports (id, observation_id, person_id, day, slot, at, temperature, symptoms, note, by_user) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(map_err)?
            .execute(params![
                h.id.to_string(),
                h.observation_id.to_string(),
                h.person_id.to_string(),
                h.day.to_string(),
                h.slot,
                micros(h.at),
                h.temperature,
                h.symptoms,
                h.note,
                h.by_user.map(|u| u.to_string())
            ])
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn reports_of_impl(&self, person_id: Uuid) -> StoreResult<Vec<HealthReport>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, observation_id, person_id, day, slot, at, temperature, symptoms, note, by_user \
                     FROM health_reports WHERE person_id = ?1 ORDER BY at DESC",
                )
                .map_err(map_err)?;
            let rows = stmt.query_map([person_id.to_string()], report_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn insert_lab_impl(&self, l: &LabResult) -> StoreResult<()> {
        let l = l.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO lab_results (id, person_id, test, sample_date, result_date, result, entered_by, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(map_err)?
            .execute(params![
                l.id.to_string(),
                l.person_id.to_string(),
                l.test.as_str(),
                l.sample_date.to_string(),
                l.result_date.map(|d| d.to_string()),
                l.result.as_str(),
                l.entered_by.map(|u| u.to_string()),
                micros(l.created_at)
            ])
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn lab_of_impl(&self, person_id: Uuid) -> StoreResult<Vec<LabResult>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, person_id, test, sample_date, result_date, result, entered_by, created_at \
                     FROM lab_results WHERE person_id = ?1 ORDER BY sample_date DESC, created_at DESC",
                )
                .map_err(map_err)?;
            let rows = stmt.query_map([person_id.to_string()], |r| lab_row(r, 0)).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn review_impl(&self, scope: &Scope) -> StoreResult<Vec<(Person, LabResult)>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {PERSON_COLS}, l.id, l.person_id, l.test, l.sample_date, l.result_date, l.result, l.entered_by, l.created_at \
                     FROM lab_results l JOIN persons p ON p.id = l.person_id \
                     WHERE l.result = 'positive' AND p.category NOT IN ('confirmed', 'recovered', 'deceased') \
                     AND p.area_path >= ?1 AND p.area_path < ?2 ORDER BY l.sample_date DESC, l.id"
                ))
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![lo, hi], |r| Ok((person_row(r)?, lab_row(r, 15)?)))
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }
}

impl SqliteStore {
    pub(crate) async fn merge_impl(
        &self,
        m: &epigrid_core::person::PersonMerge,
    ) -> StoreResult<()> {
        let m = m.clone();
        self.write(move |c| {
            if m.from_person == m.into_person {
                return Err(StoreError::Invalid("a person cannot be merged into itself".into()));
            }
            let n = c
                .prepare_cached(
                    "UPDATE persons SET merged_into = ?2 WHERE id = ?1 AND merged_into IS NULL \
                     AND EXISTS (SELECT 1 FROM persons t WHERE t.id = ?2 AND t.merged_into IS NULL \
                     AND (persons.category = 'none' OR persons.category = t.category))",
                )
                .map_err(map_err)?
                .execute(params![m.from_person.to_string(), m.into_person.to_string()])
                .map_err(map_err)?;
            if n == 0 {
                return Err(StoreError::Conflict("merge".into()));
            }
            // persons merged earlier into `from` follow it
            c.prepare_cached("UPDATE persons SET merged_into = ?2 WHERE merged_into = ?1")
                .map_err(map_err)?
                .execute(params![m.from_person.to_string(), m.into_person.to_string()])
                .map_err(map_err)?;
            c.prepare_cached(
                "INSERT INTO person_merges (id, from_person, into_person, at, by_user, by_username, reason) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(map_err)?
            .execute(params![
                m.id.to_string(),
                m.from_person.to_string(),
                m.into_person.to_string(),
                micros(m.at),
                m.by_user.map(|u| u.to_string()),
                m.by_username,
                m.reason
            ])
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn undo_merge_impl(
        &self,
        id: Uuid,
        scope: &Scope,
        at: DateTime<Utc>,
    ) -> StoreResult<epigrid_core::person::PersonMerge> {
        let (lo, hi) = scope.bounds();
        self.write(move |c| {
            let m = c
                .prepare_cached(
                    "SELECT m.id, m.from_person, m.into_person, m.at, m.by_user, m.by_username, m.reason, m.undone_at \
                     FROM person_merges m JOIN persons f ON f.id = m.from_person JOIN persons i ON i.id = m.into_person \
                     WHERE m.id = ?1 AND m.undone_at IS NULL AND f.area_path >= ?2 AND f.area_path < ?3 \
                     AND i.area_path >= ?2 AND i.area_path < ?3",
                )
                .map_err(map_err)?
                .query_row(params![id.to_string(), lo, hi], |r| {
                    Ok(epigrid_core::person::PersonMerge {
                        id: r.get::<_, U>(0)?.0,
                        from_person: r.get::<_, U>(1)?.0,
                        into_person: r.get::<_, U>(2)?.0,
                        at: time(r.get(3)?),
                        by_user: r.get::<_, Option<U>>(4)?.map(|u| u.0),
                        by_username: r.get(5)?,
                        reason: r.get(6)?,
                        undone_at: r.get::<_, Option<i64>>(7)?.map(time),
                    })
                })
                .optional()
                .map_err(map_err)?
                .ok_or(StoreError::NotFound)?;
            let restored = c
                .prepare_cached("UPDATE persons SET merged_into = NULL WHERE id = ?1 AND merged_into = ?2")
                .map_err(map_err)?
                .execute(params![m.from_person.to_string(), m.into_person.to_string()])
                .map_err(map_err)?;
            if restored == 0 {
                // a later merge moved the person on: that one is undone first
                return Err(StoreError::Conflict("merge:later".into()));
            }
            // people merged into this one were moved along with it: they come back
            for sql in epigrid_core::store::merged_back_sql("?1", "?2") {
                c.prepare_cached(&sql)
                    .map_err(map_err)?
                    .execute(params![m.from_person.to_string(), m.into_person.to_string()])
                    .map_err(map_err)?;
            }
            // registrations that came in as the merged-away person while the merge stood are
            // theirs again
            c.prepare_cached(
                "UPDATE registrations SET person_id = phone_sealed_for, phone_sealed_for = NULL \
                 WHERE person_id = ?2 AND phone_sealed_for = ?1",
            )
            .map_err(map_err)?
            .execute(params![m.from_person.to_string(), m.into_person.to_string()])
            .map_err(map_err)?;
            c.prepare_cached("UPDATE person_merges SET undone_at = ?2 WHERE id = ?1")
                .map_err(map_err)?
                .execute(params![id.to_string(), micros(at)])
                .map_err(map_err)?;
            Ok(epigrid_core::person::PersonMerge { undone_at: Some(at), ..m })
        })
        .await
    }

    pub(crate) async fn update_person_impl(
        &self,
        id: Uuid,
        name: &str,
        home: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        let (name, home) = (
            name.to_string(),
            home.map(|(c, p)| (c.to_string(), p.to_string())),
        );
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE persons SET name = ?2, corrected = 1, home_area_code = COALESCE(?3, home_area_code), \
                     area_path = COALESCE(?4, area_path) WHERE id = ?1",
                )
                .map_err(map_err)?
                .execute(params![
                    id.to_string(),
                    name,
                    home.as_ref().map(|h| &h.0),
                    home.as_ref().map(|h| &h.1)
                ])
                .map_err(map_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            let id = id.to_string();
            c.prepare_cached("DELETE FROM person_grams WHERE person_id = ?1")
                .map_err(map_err)?
                .execute([&id])
                .map_err(map_err)?;
            insert_grams(c, &id, &name)?;
            Ok(())
        })
        .await
    }
}

/// A registration as the tracing engine reads it (following merges to the kept person).
const VISIT_SELECT: &str =
    "SELECT r.id, COALESCE(p.merged_into, r.person_id), r.site_id, r.at, r.left_at, \
    s.default_stay_min, r.plate, r.seq FROM registrations r JOIN sites s ON s.id = r.site_id \
    JOIN persons p ON p.id = r.person_id";

fn visit_row(r: &Row<'_>) -> rusqlite::Result<epigrid_core::trace::VisitRow> {
    Ok(epigrid_core::trace::VisitRow {
        seq: r.get(7)?,
        registration_id: r.get::<_, U>(0)?.0,
        person_id: r.get::<_, U>(1)?.0,
        site_id: r.get::<_, U>(2)?.0,
        at: time(r.get(3)?),
        left_at: r.get::<_, Option<i64>>(4)?.map(time),
        default_stay_min: r.get(5)?,
        plate: r.get(6)?,
    })
}

impl SqliteStore {
    pub(crate) async fn trace_visits_after_impl(
        &self,
        after: i64,
    ) -> StoreResult<Vec<epigrid_core::trace::VisitRow>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!("{VISIT_SELECT} WHERE r.seq > ?1 ORDER BY r.seq"))
                .map_err(map_err)?;
            let rows = stmt.query_map([after], visit_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn trace_data_impl(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<epigrid_core::trace::TraceData> {
        use epigrid_core::trace::TraceData;
        self.read(move |c| {
            let mut data = TraceData::default();
            let mut stmt = c
                .prepare(
                    &format!("{VISIT_SELECT} WHERE r.at >= ?1"),
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map([micros(since)], visit_row)
                .map_err(map_err)?;
            data.visits = collect(rows)?;
            let mut stmt = c
                .prepare(
                    "SELECT COALESCE(pr.merged_into, r.person_id), COALESCE(pc.merged_into, c.person_id), r.id, r.at \
                     FROM registration_companions c JOIN registrations r ON r.id = c.registration_id \
                     LEFT JOIN persons pr ON pr.id = r.person_id LEFT JOIN persons pc ON pc.id = c.person_id \
                     WHERE c.person_id IS NOT NULL AND r.at >= ?1",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map([micros(since)], |r| Ok((r.get::<_, U>(0)?.0, r.get::<_, U>(1)?.0, r.get::<_, U>(2)?.0, time(r.get(3)?))))
                .map_err(map_err)?;
            data.companions = collect(rows)?;
            let mut stmt = c
                .prepare("SELECT id, home_area_code FROM persons WHERE home_area_code IS NOT NULL AND merged_into IS NULL")
                .map_err(map_err)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, U>(0)?.0, r.get(1)?))).map_err(map_err)?;
            data.households = collect(rows)?;
            data.proximity = SqliteStore::proximity_since(c, since)?;
            Ok(data)
        })
        .await
    }
}

impl SqliteStore {
    pub(crate) async fn insert_proximity_impl(
        &self,
        rows: Vec<epigrid_core::trace::ProximityRow>,
    ) -> StoreResult<usize> {
        self.write(move |c| {
            let mut stmt = c
                .prepare_cached("INSERT INTO proximity (id, a, b, at, duration_s, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .map_err(map_err)?;
            for r in &rows {
                stmt.execute(params![r.id.to_string(), r.a.to_string(), r.b.to_string(), micros(r.at), r.duration_s, r.source])
                    .map_err(map_err)?;
            }
            Ok(rows.len())
        })
        .await
    }

    pub(crate) async fn existing_persons_impl(&self, ids: Vec<Uuid>) -> StoreResult<Vec<Uuid>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT 1 FROM persons WHERE id = ?1")
                .map_err(map_err)?;
            let mut out = Vec::new();
            for id in ids {
                if stmt.exists([id.to_string()]).map_err(map_err)? {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) fn proximity_since(
        c: &Connection,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<epigrid_core::trace::ProximityPair>> {
        let mut stmt = c
            .prepare("SELECT COALESCE(pa.merged_into, x.a), COALESCE(pb.merged_into, x.b), x.at, x.duration_s FROM proximity x \
                     LEFT JOIN persons pa ON pa.id = x.a LEFT JOIN persons pb ON pb.id = x.b WHERE x.at >= ?1")
            .map_err(map_err)?;
        let rows = stmt
            .query_map([micros(since)], |r| {
                Ok((
                    r.get::<_, U>(0)?.0,
                    r.get::<_, U>(1)?.0,
                    time(r.get(2)?),
                    r.get(3)?,
                ))
            })
            .map_err(map_err)?;
        collect(rows)
    }
}

impl SqliteStore {
    pub(crate) async fn classify_many_impl(
        &self,
        changes: &[CategoryChange],
        observations: &[Observation],
    ) -> StoreResult<()> {
        let (changes, observations) = (changes.to_vec(), observations.to_vec());
        self.write(move |c| {
            for ch in &changes {
                if !apply_change(c, ch)? {
                    return Err(StoreError::Conflict(format!("person:{}", ch.person_id)));
                }
            }
            for o in &observations {
                insert_obs(c, o)?;
            }
            Ok(())
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Contact-search notices

use epigrid_core::trace::{Notice, NoticeEntry, PendingContact};

fn notice_head(r: &Row<'_>) -> rusqlite::Result<Notice> {
    Ok(Notice {
        id: r.get::<_, U>(0)?.0,
        case_person_id: r.get::<_, U>(1)?.0,
        public_token: r.get(2)?,
        area_path: r.get(3)?,
        created_by: r.get::<_, Option<U>>(4)?.map(|u| u.0),
        created_at: time(r.get(5)?),
        entries: Vec::new(),
    })
}

fn notice_entries(c: &Connection, id: Uuid) -> StoreResult<Vec<NoticeEntry>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT position, site_id, place, area_name, from_at, to_at FROM notice_entries WHERE notice_id = ?1 ORDER BY position",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map([id.to_string()], |r| {
            Ok(NoticeEntry {
                position: r.get(0)?,
                site_id: r.get::<_, U>(1)?.0,
                place: r.get(2)?,
                area_name: r.get(3)?,
                from: time(r.get(4)?),
                to: time(r.get(5)?),
            })
        })
        .map_err(map_err)?;
    collect(rows)
}

const NOTICE_COLS: &str =
    "n.id, n.case_person_id, n.public_token, n.area_path, n.created_by, n.created_at";

impl SqliteStore {
    pub(crate) async fn insert_notice_impl(&self, n: &Notice) -> StoreResult<()> {
        let n = n.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO notices (id, case_person_id, public_token, area_path, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(map_err)?
            .execute(params![
                n.id.to_string(),
                n.case_person_id.to_string(),
                n.public_token,
                n.area_path,
                n.created_by.map(|u| u.to_string()),
                micros(n.created_at)
            ])
            .map_err(map_err)?;
            let mut stmt = c
                .prepare_cached(
                    "INSERT INTO notice_entries (notice_id, position, site_id, place, area_name, from_at, to_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(map_err)?;
            for e in &n.entries {
                stmt.execute(params![n.id.to_string(), e.position, e.site_id.to_string(), e.place, e.area_name, micros(e.from), micros(e.to)])
                    .map_err(map_err)?;
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn notice_by_token_impl(&self, token: &str) -> StoreResult<Option<Notice>> {
        let token = token.to_string();
        self.read(move |c| {
            let head = c
                .prepare_cached(&format!(
                    "SELECT {NOTICE_COLS} FROM notices n WHERE n.public_token = ?1"
                ))
                .map_err(map_err)?
                .query_row([token], notice_head)
                .optional()
                .map_err(map_err)?;
            head.map(|mut n| {
                n.entries = notice_entries(c, n.id)?;
                Ok(n)
            })
            .transpose()
        })
        .await
    }

    pub(crate) async fn notice_impl(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Notice>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let head = c
                .prepare_cached(&format!(
                    "SELECT {NOTICE_COLS} FROM notices n JOIN persons p ON p.id = n.case_person_id \
                     WHERE n.id = ?1 AND p.area_path >= ?2 AND p.area_path < ?3"
                ))
                .map_err(map_err)?
                .query_row(params![id.to_string(), lo, hi], notice_head)
                .optional()
                .map_err(map_err)?;
            head.map(|mut n| {
                n.entries = notice_entries(c, n.id)?;
                Ok(n)
            })
            .transpose()
        })
        .await
    }

    pub(crate) async fn insert_pending_impl(
        &self,
        pc: &PendingContact,
        person: &PersonInput,
        area_path: &str,
    ) -> StoreResult<()> {
        let (pc, person, area_path) = (pc.clone(), person.clone(), area_path.to_string());
        self.write(move |c| {
            // Coming forward is not a registration: someone already known keeps their area,
            // name and phone (anyone who knows an ID number can type it, and the pending
            // contact pins them, so a change here would stick); only someone new is made.
            let known: Option<String> = c
                .prepare_cached("SELECT COALESCE(merged_into, id) FROM persons WHERE id = ?1")
                .map_err(map_err)?
                .query_row([person.id.to_string()], |r| r.get(0))
                .optional()
                .map_err(map_err)?;
            let pid = match known {
                Some(pid) => pid,
                None => upsert_person(c, &person, &area_path, micros(pc.reported_at))?,
            };
            c.prepare_cached(
                "INSERT INTO pending_contacts (id, notice_id, position, index_person_id, person_id, reported_at, status) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (notice_id, person_id, position) DO NOTHING",
            )
            .map_err(map_err)?
            .execute(params![
                pc.id.to_string(),
                pc.notice_id.to_string(),
                pc.position,
                pc.index_person_id.to_string(),
                pid,
                micros(pc.reported_at),
                pc.status
            ])
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn pending_impl(&self, notice_id: Uuid) -> StoreResult<Vec<PendingContact>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, notice_id, position, index_person_id, person_id, reported_at, status FROM pending_contacts \
                     WHERE notice_id = ?1 ORDER BY reported_at",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map([notice_id.to_string()], |r| {
                    Ok(PendingContact {
                        id: r.get::<_, U>(0)?.0,
                        notice_id: r.get::<_, U>(1)?.0,
                        position: r.get(2)?,
                        index_person_id: r.get::<_, U>(3)?.0,
                        person_id: r.get::<_, U>(4)?.0,
                        reported_at: time(r.get(5)?),
                        status: r.get(6)?,
                    })
                })
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Contacts kept between traces

use epigrid_core::trace::ContactRecord;

impl SqliteStore {
    pub(crate) async fn upsert_contacts_impl(
        &self,
        rows: &[ContactRecord],
    ) -> StoreResult<Vec<Uuid>> {
        let rows = rows.to_vec();
        self.write(move |c| {
            let mut new = Vec::new();
            for r in &rows {
                let (i, p) = (r.index_person_id.to_string(), r.contact_person_id.to_string());
                let known = c
                    .prepare_cached("SELECT 1 FROM contacts WHERE index_person_id = ?1 AND contact_person_id = ?2")
                    .map_err(map_err)?
                    .exists([&i, &p])
                    .map_err(map_err)?;
                if !known {
                    new.push(r.contact_person_id);
                }
                c.prepare_cached(
                    "INSERT INTO contacts (index_person_id, contact_person_id, degree, kinds, exposure_s, score, status, first_found_at, last_found_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
                     ON CONFLICT (index_person_id, contact_person_id) DO UPDATE SET \
                     degree = CASE WHEN excluded.kinds = '' THEN contacts.degree ELSE excluded.degree END, \
                     kinds = CASE WHEN excluded.kinds = '' THEN contacts.kinds ELSE excluded.kinds END, \
                     exposure_s = CASE WHEN excluded.kinds = '' THEN contacts.exposure_s ELSE excluded.exposure_s END, \
                     score = CASE WHEN excluded.kinds = '' THEN contacts.score ELSE excluded.score END, \
                     last_found_at = excluded.last_found_at, \
                     status = CASE WHEN excluded.status = 'confirmed' THEN 'confirmed' ELSE contacts.status END",
                )
                .map_err(map_err)?
                .execute(params![i, p, r.degree, r.kinds, r.exposure_s, r.score, r.status, micros(r.found_at)])
                .map_err(map_err)?;
            }
            Ok(new)
        })
        .await
    }

    pub(crate) async fn confirmed_contacts_impl(
        &self,
        scope: &Scope,
    ) -> StoreResult<Vec<ContactRecord>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT k.index_person_id, k.contact_person_id, k.degree, k.kinds, k.exposure_s, k.score, k.status, k.last_found_at \
                     FROM contacts k JOIN persons p ON p.id = k.contact_person_id \
                     WHERE k.status = 'confirmed' AND p.area_path >= ?1 AND p.area_path < ?2 \
                     ORDER BY k.index_person_id, k.contact_person_id",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![lo, hi], |r| {
                    Ok(ContactRecord {
                        index_person_id: r.get::<_, U>(0)?.0,
                        contact_person_id: r.get::<_, U>(1)?.0,
                        degree: r.get(2)?,
                        kinds: r.get(3)?,
                        exposure_s: r.get(4)?,
                        score: r.get(5)?,
                        status: r.get(6)?,
                        found_at: time(r.get(7)?),
                    })
                })
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Lists from other agencies

use epigrid_core::matching::ListMatch;
use epigrid_core::store::ListRecord;

impl SqliteStore {
    pub(crate) async fn insert_list_impl(
        &self,
        l: &ListRecord,
        errors: &[epigrid_core::store::ListError],
        matches: &[ListMatch],
    ) -> StoreResult<()> {
        let (l, errors, matches) = (l.clone(), errors.to_vec(), matches.to_vec());
        self.write(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "INSERT INTO list_errors (list_id, n, line, field, key, args) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(map_err)?;
            let list_id = l.id.to_string();
            c.prepare_cached(
                "INSERT INTO lists (id, name, uploaded_by, area_path, created_at, rows, bad_rows) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(map_err)?
            .execute(params![list_id, l.name, l.uploaded_by.map(|u| u.to_string()), l.area_path, micros(l.created_at), l.rows, l.bad_rows])
            .map_err(map_err)?;
            for (n, e) in errors.iter().enumerate() {
                stmt.execute(params![list_id, n as i64, e.line as i64, e.field, e.key, e.args_json()])
                    .map_err(map_err)?;
            }
            let mut stmt = c
                .prepare_cached(
                    // a person purged since the list was matched is left out, not a failed upload
                    "INSERT OR IGNORE INTO list_matches (list_id, line, person_id, method, confidence, review) \
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM persons WHERE id = ?3)",
                )
                .map_err(map_err)?;
            for m in &matches {
                stmt.execute(params![list_id, m.line as i64, m.person_id.to_string(), m.method, m.confidence, m.review])
                    .map_err(map_err)?;
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn list_errors_impl(
        &self,
        id: Uuid,
        limit: u32,
    ) -> StoreResult<Vec<epigrid_core::store::ListError>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT line, field, key, args FROM list_errors WHERE list_id = ?1 ORDER BY n LIMIT ?2")
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![id.to_string(), limit], |r| {
                    Ok(epigrid_core::store::ListError::from_stored(r.get(0)?, r.get(1)?, r.get(2)?, &r.get::<_, String>(3)?))
                })
                .map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn lists_impl(
        &self,
        scope: &Scope,
        limit: u32,
    ) -> StoreResult<Vec<ListRecord>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {LIST_COLS} FROM lists WHERE area_path >= ?1 AND area_path < ?2 ORDER BY created_at DESC LIMIT ?3"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map(params![lo, hi, limit], list_row).map_err(map_err)?;
            collect(rows)
        })
        .await
    }

    pub(crate) async fn match_keys_impl(
        &self,
    ) -> StoreResult<(
        Vec<epigrid_core::matching::KnownPerson>,
        Vec<(String, Uuid)>,
    )> {
        self.read(move |c| {
            let mut stmt = c
                .prepare("SELECT id, merged_into, name, birth_index, phone_index FROM persons")
                .map_err(map_err)?;
            let people = stmt
                .query_map([], |r| {
                    Ok(epigrid_core::matching::KnownPerson {
                        id: r.get::<_, U>(0)?.0,
                        merged_into: r.get::<_, Option<U>>(1)?.map(|u| u.0),
                        name: r.get(2)?,
                        birth_index: r.get(3)?,
                        phone_index: r.get(4)?,
                    })
                })
                .map_err(map_err)?;
            let people = collect(people)?;
            let mut stmt = c
                .prepare("SELECT plate, person_id FROM person_plates")
                .map_err(map_err)?;
            let plates = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, U>(1)?.0)))
                .map_err(map_err)?;
            Ok((people, collect(plates)?))
        })
        .await
    }

    pub(crate) async fn list_matches_impl(
        &self,
        id: Uuid,
        scope: &Scope,
        page: epigrid_core::store::MatchPage,
    ) -> StoreResult<Option<(ListRecord, Vec<(ListMatch, Person)>)>> {
        let (lo, hi) = scope.bounds();
        self.read(move |c| {
            let l = c
                .prepare_cached(&format!(
                    "SELECT {LIST_COLS} FROM lists WHERE id = ?1 AND area_path >= ?2 AND area_path < ?3"
                ))
                .map_err(map_err)?
                .query_row(params![id.to_string(), lo, hi], list_row)
                .optional()
                .map_err(map_err)?;
            let Some(l) = l else { return Ok(None) };
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT m.person_id, m.line, m.method, m.confidence, m.review, m.decision, {PERSON_COLS} FROM list_matches m \
                     JOIN persons p ON p.id = m.person_id WHERE m.list_id = ?1 AND p.area_path >= ?2 AND p.area_path < ?3 \
                     AND (?4 = 0 OR (m.review AND m.decision IS NULL)) \
                     ORDER BY m.line, m.confidence DESC, m.person_id LIMIT ?5 OFFSET ?6"
                ))
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![id.to_string(), lo, hi, page.review_only, page.limit, page.offset], |r| {
                    Ok((list_match_at(r, 1, r.get::<_, U>(0)?.0)?, person_row_at(r, 6)?))
                })
                .map_err(map_err)?;
            Ok(Some((l, collect(rows)?)))
        })
        .await
    }
}

const LIST_COLS: &str = "id, name, uploaded_by, area_path, created_at, rows, bad_rows";

/// A list match from the columns `line, method, confidence, review, decision` from `at` on.
fn list_match_at(r: &rusqlite::Row<'_>, at: usize, person_id: Uuid) -> rusqlite::Result<ListMatch> {
    Ok(ListMatch {
        line: r.get::<_, i64>(at)? as usize,
        person_id,
        method: epigrid_core::matching::method_name(&r.get::<_, String>(at + 1)?),
        confidence: r.get(at + 2)?,
        review: r.get(at + 3)?,
        decision: r
            .get::<_, Option<String>>(at + 4)?
            .as_deref()
            .and_then(epigrid_core::matching::Decision::parse),
    })
}

fn list_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListRecord> {
    Ok(ListRecord {
        id: r.get::<_, U>(0)?.0,
        name: r.get(1)?,
        uploaded_by: r.get::<_, Option<U>>(2)?.map(|u| u.0),
        area_path: r.get(3)?,
        created_at: time(r.get(4)?),
        rows: r.get(5)?,
        bad_rows: r.get(6)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    /// Registrations whose commit panics, by id: a bug stood in for, in the fold's tests.
    pub(crate) static PANIC_ON: std::sync::Mutex<Vec<uuid::Uuid>> =
        std::sync::Mutex::new(Vec::new());
}
