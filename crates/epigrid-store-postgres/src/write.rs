//! Batched registration writes: a few fixed statements over arrays (`unnest`), prepared once
//! per connection, in one transaction whose statements are pipelined: a batch costs two round
//! trips (BEGIN with the persons, then everything else with the COMMIT) and one WAL flush.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::{GenericClient, Pool};
use epigrid_core::model::{NewRegistration, PersonInput};
use epigrid_core::store::{path_leaf, registration_metrics, StoreError, StoreResult};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;
use uuid::Uuid;

use crate::{map_err, pool_err, Pending, MAX_BATCH};

/// What a person's row becomes when a registration brings them
/// again: unless they are pinned (`pinned_person_sql`, worked out once per row: `OFFSET 0`
/// keeps the planner from copying it into each column), a phone given replaces theirs, and a
/// later registration in another area moves them there with its name and phone (or none), so
/// that area's staff see what it gave and nothing other areas were told; `persons` is the
/// stored row, `EXCLUDED` the incoming one.
macro_rules! person_on_conflict {
    () => {
        concat!(
            " ON CONFLICT (id) DO UPDATE SET \
       (name, phone_index, phone_cipher, phone_masked, area_path) = (SELECT \
         CASE WHEN x.moves THEN EXCLUDED.name ELSE persons.name END, \
         CASE WHEN x.moves THEN EXCLUDED.phone_index WHEN x.keep_phone THEN persons.phone_index \
              ELSE COALESCE(EXCLUDED.phone_index, persons.phone_index) END, \
         CASE WHEN x.moves THEN EXCLUDED.phone_cipher WHEN x.keep_phone THEN persons.phone_cipher \
              ELSE COALESCE(EXCLUDED.phone_cipher, persons.phone_cipher) END, \
         CASE WHEN x.moves THEN EXCLUDED.phone_masked WHEN x.keep_phone THEN persons.phone_masked \
              ELSE COALESCE(EXCLUDED.phone_masked, persons.phone_masked) END, \
         CASE WHEN x.moves THEN EXCLUDED.area_path ELSE persons.area_path END \
         FROM (SELECT p.pinned, p.pinned AND persons.phone_index IS NOT NULL AS keep_phone, \
                 NOT p.pinned AND EXCLUDED.last_seen_at >= persons.last_seen_at \
                   AND EXCLUDED.area_path <> persons.area_path AS moves \
               FROM (SELECT ",
            epigrid_core::pinned_person_sql!(),
            " AS pinned OFFSET 0) p) x), \
       last_seen_at = GREATEST(persons.last_seen_at, EXCLUDED.last_seen_at) "
        )
    };
}

/// Upserts a batch's people; per row: id, the id registrations go to, and whether the row's
/// name is new (a new person, or one a registration moved and renamed: its name grams are
/// written next). `before` reads the names as the statement's snapshot has them.
const PERSONS: &str = concat!(
    "WITH before AS (SELECT id, name FROM persons WHERE id = ANY($1::uuid[])), up AS (\
     INSERT INTO persons (id, doc_type, doc_index, doc_cipher, doc_masked, name, \
     phone_index, phone_cipher, phone_masked, birth_date, sex, area_path, provisional, created_at, last_seen_at, \
     birth_index) \
     SELECT id, doc_type, doc_index, doc_cipher, doc_masked, name, phone_index, phone_cipher, phone_masked, \
       birth_date, sex, area_path, provisional, created, seen, birth_index \
     FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[], $5::text[], $6::text[], $7::bytea[], \
       $8::bytea[], $9::text[], $10::date[], $11::text[], $12::text[], $13::bool[], $14::timestamptz[], \
       $15::timestamptz[], $16::bytea[]) \
       AS t(id, doc_type, doc_index, doc_cipher, doc_masked, name, phone_index, phone_cipher, phone_masked, \
       birth_date, sex, area_path, provisional, created, seen, birth_index) \
",
    person_on_conflict!(),
    "RETURNING id, COALESCE(merged_into, id) AS eff, name) \
     SELECT up.id, up.eff, before.name IS DISTINCT FROM up.name \
     FROM up LEFT JOIN before ON before.id = up.id"
);

/// A person as the registrations of one batch leave them, the same as writing those one by one
/// in order (as SQLite does): who they are and when they were first seen from their first
/// sighting; "last seen" from the latest by time; a later sighting in another area moves them
/// there with its name and phone (or none), otherwise a sighting's phone (a companion's has
/// none) replaces theirs. Whether the stored row moves too is decided in SQL
/// (`person_on_conflict`).
struct Sighted<'a> {
    first: &'a PersonInput,
    name: &'a str,
    /// whose phone is written (`None`: no phone)
    phone: Option<&'a PersonInput>,
    area: &'a str,
    created: DateTime<Utc>,
    seen: DateTime<Utc>,
}

impl<'a> Sighted<'a> {
    fn new(p: &'a PersonInput, area: &'a str, at: DateTime<Utc>) -> Sighted<'a> {
        Sighted {
            first: p,
            name: &p.name,
            phone: p.phone_index.is_some().then_some(p),
            area,
            created: at,
            seen: at,
        }
    }

    fn again(&mut self, p: &'a PersonInput, area: &'a str, at: DateTime<Utc>) {
        if at >= self.seen && area != self.area {
            self.name = &p.name;
            self.phone = p.phone_index.is_some().then_some(p);
            self.area = area;
        } else if p.phone_index.is_some() {
            self.phone = Some(p);
        }
        self.seen = self.seen.max(at);
    }
}

/// One person brought by someone coming forward on a notice: made if new, and otherwise left
/// as they are (coming forward is not a registration; anyone who knows an ID number can type
/// it, and the pending contact pins them, so a change here would stick). Per row: the id the
/// contact goes to, and whether the person was made here. No row: the person was made by
/// another transaction after this statement's snapshot (read them again).
pub(crate) const PENDING_PERSON: &str = "WITH made AS (\
     INSERT INTO persons (id, doc_type, doc_index, doc_cipher, doc_masked, name, phone_index, \
     phone_cipher, phone_masked, birth_date, sex, area_path, provisional, created_at, last_seen_at, birth_index) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15) \
     ON CONFLICT (id) DO NOTHING RETURNING id) \
     SELECT id, true FROM made \
     UNION ALL SELECT COALESCE(merged_into, id), false FROM persons \
     WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM made)";

const GRAMS: &str = "INSERT INTO person_grams (gram, person_id) \
     SELECT * FROM unnest($1::text[], $2::uuid[]) ON CONFLICT DO NOTHING";

const REGISTRATIONS: &str = "INSERT INTO registrations (id, site_id, person_id, area_path, at, day, kind, \
     channel, by_user, verification_code, temperature, symptoms, high_risk_travel, plate, companions, \
     origin_code, destination, direction, visitor, unit_code, visit_reason, arrival_date, residence_code, \
     address, employer, stay_days, purpose, phone_cipher, phone_masked, phone_sealed_for, name) \
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::date[], \
       $7::text[], $8::text[], $9::uuid[], $10::text[], $11::int2[], $12::int2[], $13::bool[], $14::text[], \
       $15::int4[], $16::text[], $17::text[], $18::text[], $19::bool[], $20::text[], $21::text[], $22::date[], \
       $23::text[], $24::text[], $25::text[], $26::int4[], $27::text[], $28::bytea[], \
       $29::text[], $30::uuid[], $31::text[]) \
     RETURNING id, seq";

const PLATES: &str = "INSERT INTO person_plates (plate, person_id, first_at) \
     SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) ON CONFLICT DO NOTHING";

const COMPANIONS: &str =
    "INSERT INTO registration_companions (registration_id, position, name, person_id) \
     SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::uuid[])";

const ROLLUPS: &str = "INSERT INTO rollups (area_code, area_path, day, metric, value) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::int8[]) \
     ON CONFLICT (area_code, day, metric) DO UPDATE SET value = rollups.value + EXCLUDED.value";

/// Whether a batch is its own transaction (begun and committed here, pipelined with its
/// statements) or runs inside the caller's.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Tx {
    Own,
    Within,
}

/// The batch's statements, prepared once per connection (the pool's statement cache).
struct Prepared {
    persons: Statement,
    grams: Statement,
    registrations: Statement,
    plates: Statement,
    companions: Statement,
    rollups: Statement,
}

async fn prepare<C: GenericClient>(c: &C) -> StoreResult<Prepared> {
    Ok(Prepared {
        persons: c.prepare_cached(PERSONS).await.map_err(map_err)?,
        grams: c.prepare_cached(GRAMS).await.map_err(map_err)?,
        registrations: c.prepare_cached(REGISTRATIONS).await.map_err(map_err)?,
        plates: c.prepare_cached(PLATES).await.map_err(map_err)?,
        companions: c.prepare_cached(COMPANIONS).await.map_err(map_err)?,
        rollups: c.prepare_cached(ROLLUPS).await.map_err(map_err)?,
    })
}

/// One column of a batch, as the array a statement's `unnest` takes.
fn col<'a, T, U>(rows: &'a [T], f: impl FnMut(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

/// Runs `f` only when `rows` is non-zero (an empty statement is not sent).
async fn when<F: std::future::Future<Output = Result<u64, tokio_postgres::Error>>>(
    rows: usize,
    f: F,
) -> Result<u64, tokio_postgres::Error> {
    if rows == 0 {
        Ok(0)
    } else {
        f.await
    }
}

/// Writes registrations; returns their sequence numbers in order. With [`Tx::Own`] the batch
/// is one transaction of its own: on any error it is rolled back before this returns.
pub(crate) async fn insert_batch<C: GenericClient>(
    c: &C,
    regs: &[NewRegistration],
    tx: Tx,
) -> StoreResult<Vec<i64>> {
    if regs.is_empty() {
        return Ok(Vec::new());
    }
    let st = prepare(c).await?;
    let r = pipelined(c, &st, regs, tx).await;
    if r.is_err() && tx == Tx::Own {
        // a failed statement aborted the transaction; if its COMMIT was already sent it was
        // answered with a rollback, and this ROLLBACK only draws a warning
        let _ = c.batch_execute("ROLLBACK").await;
    }
    r
}

async fn pipelined<C: GenericClient>(
    c: &C,
    st: &Prepared,
    regs: &[NewRegistration],
    tx: Tx,
) -> StoreResult<Vec<i64>> {
    // Persons: one row per person, sorted by id against deadlocks.
    let mut persons: BTreeMap<Uuid, Sighted> = BTreeMap::new();
    for r in regs {
        let people = std::iter::once(&r.person)
            .chain(r.companion_list.iter().filter_map(|c| c.person.as_ref()));
        for p in people {
            persons
                .entry(p.id)
                .and_modify(|s| s.again(p, &r.area_path, r.at))
                .or_insert_with(|| Sighted::new(p, &r.area_path, r.at));
        }
    }
    let ps: Vec<&Sighted> = persons.values().collect();
    let ids = col(&ps, |s| s.first.id);
    let doc_types = col(&ps, |s| s.first.doc_type.map(|d| d.as_str()));
    let doc_index = col(&ps, |s| s.first.doc_index.as_deref());
    let doc_cipher = col(&ps, |s| s.first.doc_cipher.as_deref());
    let doc_masked = col(&ps, |s| s.first.doc_masked.as_deref());
    let names = col(&ps, |s| s.name);
    let phone_index = col(&ps, |s| s.phone.and_then(|p| p.phone_index.as_deref()));
    let phone_cipher = col(&ps, |s| s.phone.and_then(|p| p.phone_cipher.as_deref()));
    let phone_masked = col(&ps, |s| s.phone.and_then(|p| p.phone_masked.as_deref()));
    let births = col(&ps, |s| s.first.birth_date);
    let birth_index = col(&ps, |s| s.first.birth_index.as_deref());
    let sexes = col(&ps, |s| s.first.sex.map(|x| x.as_str()));
    let paths = col(&ps, |s| s.area);
    let provisional = col(&ps, |s| s.first.provisional);
    let created = col(&ps, |s| s.created);
    let seen = col(&ps, |s| s.seen);
    let person_params: [&(dyn ToSql + Sync); 16] = [
        &ids,
        &doc_types,
        &doc_index,
        &doc_cipher,
        &doc_masked,
        &names,
        &phone_index,
        &phone_cipher,
        &phone_masked,
        &births,
        &sexes,
        &paths,
        &provisional,
        &created,
        &seen,
        &birth_index,
    ];
    let upsert = c.query(&st.persons, &person_params);
    // BEGIN and the persons go out together; the first error wins
    let rows = match tx {
        Tx::Own => {
            let (_, rows) =
                tokio::try_join!(biased; c.batch_execute("BEGIN"), upsert).map_err(map_err)?;
            rows
        }
        Tx::Within => upsert.await.map_err(map_err)?,
    };
    let mut effective: BTreeMap<Uuid, Uuid> = BTreeMap::new();
    let (mut gram_texts, mut gram_ids) = (Vec::new(), Vec::new());
    for row in rows {
        let id: Uuid = row.get(0);
        effective.insert(id, row.get(1));
        // new names (new people, people moved): index them for search by part of a name
        if row.get::<_, bool>(2) {
            if let Some(s) = persons.get(&id) {
                for g in epigrid_core::person::name_grams(s.name) {
                    gram_texts.push(g);
                    gram_ids.push(id);
                }
            }
        }
    }
    let eff = |id: &Uuid| effective.get(id).copied().unwrap_or(*id);

    let reg_ids = col(regs, |r| r.id);
    let sites = col(regs, |r| r.site_id);
    let people = col(regs, |r| eff(&r.person.id));
    let reg_paths = col(regs, |r| r.area_path.as_str());
    let reg_ats = col(regs, |r| r.at);
    let days = col(regs, |r| r.day);
    let kinds = col(regs, |r| r.kind.as_str());
    let channels = col(regs, |r| r.channel.as_str());
    let by_users = col(regs, |r| r.by_user);
    let codes = col(regs, |r| r.verification_code.as_str());
    let temps = col(regs, |r| r.fields.temperature);
    let symptoms = col(regs, |r| i16::from(r.fields.symptoms));
    let travel = col(regs, |r| r.fields.high_risk_travel);
    let plates = col(regs, |r| r.fields.plate.as_deref());
    let companions = col(regs, |r| r.fields.companions);
    let origins = col(regs, |r| r.fields.origin_code.as_deref());
    let destinations = col(regs, |r| r.fields.destination.as_deref());
    let directions = col(regs, |r| r.fields.direction.map(|d| d.as_str()));
    let visitors = col(regs, |r| r.fields.visitor);
    let units = col(regs, |r| r.fields.unit_code.as_deref());
    let reasons = col(regs, |r| r.fields.visit_reason.as_deref());
    let arrivals = col(regs, |r| r.fields.arrival_date);
    let residences = col(regs, |r| r.fields.residence_code.as_deref());
    let addresses = col(regs, |r| r.fields.address.as_deref());
    let employers = col(regs, |r| r.fields.employer.as_deref());
    let stays = col(regs, |r| r.fields.stay_days);
    let purposes = col(regs, |r| r.fields.purpose.as_deref());
    let reg_phone_ciphers = col(regs, |r| r.person.phone_cipher.as_deref());
    let reg_phone_masks = col(regs, |r| r.person.phone_masked.as_deref());
    // the person each registration came in as, where it is not the one it now points at
    let sealed_for = col(regs, |r| Some(r.person.id).filter(|id| eff(id) != *id));
    let typed_names = col(regs, |r| r.person.name.as_str());

    let mut pairs = BTreeSet::new();
    let (mut plate_texts, mut plate_people, mut plate_ats) = (Vec::new(), Vec::new(), Vec::new());
    for r in regs {
        if let Some(plate) = &r.fields.plate {
            if pairs.insert((plate.as_str(), eff(&r.person.id))) {
                plate_texts.push(plate.as_str());
                plate_people.push(eff(&r.person.id));
                plate_ats.push(r.at);
            }
        }
    }

    let (mut comp_regs, mut comp_pos, mut comp_names, mut comp_people) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in regs {
        for (i, c) in r.companion_list.iter().enumerate() {
            comp_regs.push(r.id);
            comp_pos.push(i as i32);
            comp_names.push(c.name.as_deref());
            comp_people.push(c.person.as_ref().map(|p| eff(&p.id)));
        }
    }

    let mut counts: BTreeMap<(&str, &str, NaiveDate, &str), i64> = BTreeMap::new();
    for r in regs {
        for m in registration_metrics(r.kind, &r.fields) {
            *counts
                .entry((path_leaf(&r.area_path), &r.area_path, r.day, m))
                .or_default() += 1;
        }
    }
    let keys: Vec<_> = counts.keys().collect();
    let leaves = col(&keys, |k| k.0);
    let roll_paths = col(&keys, |k| k.1);
    let roll_days = col(&keys, |k| k.2);
    let metrics = col(&keys, |k| k.3);
    let values: Vec<i64> = counts.values().copied().collect();

    // Everything else, and the COMMIT, in one round trip; sent in this order (`biased`).
    let reg_params: [&(dyn ToSql + Sync); 31] = [
        &reg_ids,
        &sites,
        &people,
        &reg_paths,
        &reg_ats,
        &days,
        &kinds,
        &channels,
        &by_users,
        &codes,
        &temps,
        &symptoms,
        &travel,
        &plates,
        &companions,
        &origins,
        &destinations,
        &directions,
        &visitors,
        &units,
        &reasons,
        &arrivals,
        &residences,
        &addresses,
        &employers,
        &stays,
        &purposes,
        &reg_phone_ciphers,
        &reg_phone_masks,
        &sealed_for,
        &typed_names,
    ];
    let inserted = c.query(&st.registrations, &reg_params);
    let gram_params: [&(dyn ToSql + Sync); 2] = [&gram_texts, &gram_ids];
    let grams = when(gram_ids.len(), c.execute(&st.grams, &gram_params));
    let plate_params: [&(dyn ToSql + Sync); 3] = [&plate_texts, &plate_people, &plate_ats];
    let plated = when(plate_people.len(), c.execute(&st.plates, &plate_params));
    let comp_params: [&(dyn ToSql + Sync); 4] = [&comp_regs, &comp_pos, &comp_names, &comp_people];
    let companioned = when(comp_regs.len(), c.execute(&st.companions, &comp_params));
    let roll_params: [&(dyn ToSql + Sync); 5] =
        [&leaves, &roll_paths, &roll_days, &metrics, &values];
    let rolled = when(values.len(), c.execute(&st.rollups, &roll_params));
    let commit = async {
        match tx {
            Tx::Own => c.batch_execute("COMMIT").await,
            Tx::Within => Ok(()),
        }
    };
    let (rows, _, _, _, _, _) =
        tokio::try_join!(biased; inserted, grams, plated, companioned, rolled, commit)
            .map_err(map_err)?;
    let seqs: BTreeMap<Uuid, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    regs.iter()
        .map(|r| {
            seqs.get(&r.id)
                .copied()
                .ok_or_else(|| StoreError::Backend("a registration was not returned".into()))
        })
        .collect()
}

/// A pooled connection while its batch's transaction is open. If the batch is dropped or
/// panics before the transaction ends, the connection is closed (PostgreSQL rolls back), not
/// returned to the pool still inside the transaction for the next batch to commit.
struct InBatch(Option<deadpool_postgres::Object>);

impl Drop for InBatch {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            drop(deadpool_postgres::Object::take(o));
        }
    }
}

async fn write_once(pool: &Pool, regs: &[NewRegistration]) -> StoreResult<Vec<i64>> {
    let mut held = InBatch(Some(pool.get().await.map_err(pool_err)?));
    let r = match &held.0 {
        Some(c) => insert_batch(c, regs, Tx::Own).await,
        None => Err(StoreError::Backend("no connection".into())),
    };
    // the transaction ended (committed, or rolled back): back to the pool
    drop(held.0.take());
    r
}

/// Collects queued registrations and writes them in batches until the channel closes. Each
/// batch runs as a task of its own, so that a batch that panicked fails its own registrations
/// (their callers get an error) and not every later one.
pub(crate) async fn batcher(pool: Pool, mut rx: mpsc::Receiver<Pending>) {
    loop {
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        if tokio::spawn(async move { write_batch(&pool, batch).await })
            .await
            .is_err()
        {
            tracing::error!("a registration batch panicked");
        }
    }
}

async fn write_batch(pool: &Pool, batch: Vec<Pending>) {
    // the registrations and their replies apart, without copying a registration
    let (regs, replies): (Vec<NewRegistration>, Vec<_>) = batch.into_iter().unzip();
    match write_once(pool, &regs).await {
        Ok(seqs) => {
            for (reply, seq) in replies.into_iter().zip(seqs) {
                let _ = reply.send(Ok(seq));
            }
        }
        Err(e) if regs.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(_) => {
            // Retry one by one so that one bad registration fails alone.
            for (reg, reply) in regs.iter().zip(replies) {
                let r = write_once(pool, std::slice::from_ref(reg)).await;
                let _ = reply.send(r.map(|s| s.first().copied().unwrap_or_default()));
            }
        }
    }
}
