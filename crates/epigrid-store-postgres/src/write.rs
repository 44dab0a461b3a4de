//! Batched registration writes: multi-row statements in one transaction.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use epigrid_core::model::{NewRegistration, PersonInput};
use epigrid_core::store::{path_leaf, registration_metrics, StoreError, StoreResult};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{map_err, pool_err, Pending, MAX_BATCH};

type Param = Box<dyn ToSql + Sync + Send>;

/// A multi-row `VALUES (...), (...)` list with numbered parameters.
struct Values {
    sql: String,
    params: Vec<Param>,
}

impl Values {
    fn new() -> Values {
        Values {
            sql: String::new(),
            params: Vec::new(),
        }
    }
    fn row(&mut self, vals: Vec<Param>) {
        if !self.params.is_empty() {
            self.sql.push(',');
        }
        self.sql.push('(');
        for (i, v) in vals.into_iter().enumerate() {
            if i > 0 {
                self.sql.push(',');
            }
            self.params.push(v);
            self.sql.push_str(&format!("${}", self.params.len()));
        }
        self.sql.push(')');
    }
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn b<T: ToSql + Sync + Send + 'static>(v: T) -> Param {
    Box::new(v)
}

/// Writes registrations in the given transaction; returns their sequence numbers in order.
pub(crate) async fn insert_batch(
    tx: &tokio_postgres::Transaction<'_>,
    regs: &[NewRegistration],
) -> StoreResult<Vec<i64>> {
    if regs.is_empty() {
        return Ok(Vec::new());
    }
    // Persons: one row per person (the latest sighting wins), sorted by id against deadlocks.
    let mut persons: BTreeMap<Uuid, (&PersonInput, &str, chrono::DateTime<chrono::Utc>)> =
        BTreeMap::new();
    for r in regs {
        let people = std::iter::once(&r.person)
            .chain(r.companion_list.iter().filter_map(|c| c.person.as_ref()));
        for p in people {
            let e = persons
                .entry(p.id)
                .or_insert((p, r.area_path.as_str(), r.at));
            if r.at >= e.2 {
                *e = (p, r.area_path.as_str(), r.at);
            }
        }
    }
    let mut v = Values::new();
    for (p, path, at) in persons.values() {
        v.row(vec![
            b(p.id),
            b(p.doc_type.map(|d| d.as_str().to_string())),
            b(p.doc_index.clone()),
            b(p.doc_cipher.clone()),
            b(p.doc_masked.clone()),
            b(p.name.clone()),
            b(p.phone_index.clone()),
            b(p.phone_cipher.clone()),
            b(p.phone_masked.clone()),
            b(p.birth_date),
            b(p.sex.map(|s| s.as_str().to_string())),
            b(path.to_string()),
            b(p.provisional),
            b(*at),
            b(*at),
        ]);
    }
    let sql = format!(
        "INSERT INTO persons (id, doc_type, doc_index, doc_cipher, doc_masked, name, phone_index, \
         phone_cipher, phone_masked, birth_date, sex, area_path, provisional, created_at, last_seen_at) \
         VALUES {} ON CONFLICT (id) DO UPDATE SET \
           phone_index = COALESCE(EXCLUDED.phone_index, persons.phone_index), \
           phone_cipher = COALESCE(EXCLUDED.phone_cipher, persons.phone_cipher), \
           phone_masked = COALESCE(EXCLUDED.phone_masked, persons.phone_masked), \
           area_path = CASE WHEN persons.home_area_code IS NULL AND EXCLUDED.last_seen_at >= persons.last_seen_at \
                       THEN EXCLUDED.area_path ELSE persons.area_path END, \
           last_seen_at = GREATEST(persons.last_seen_at, EXCLUDED.last_seen_at) \
         RETURNING id, COALESCE(merged_into, id), (xmax = 0)",
        v.sql
    );
    let rows = tx.query(&sql, &v.refs()).await.map_err(map_err)?;
    let mut effective: BTreeMap<Uuid, Uuid> = BTreeMap::new();
    let mut grams = Values::new();
    for row in rows {
        let id: Uuid = row.get(0);
        effective.insert(id, row.get(1));
        // new people: index their names for search by part of a name
        if row.get::<_, bool>(2) {
            if let Some((p, _, _)) = persons.get(&id) {
                for g in epigrid_core::person::name_grams(&p.name) {
                    grams.row(vec![b(g), b(id)]);
                }
            }
        }
    }
    if !grams.params.is_empty() {
        let sql = format!(
            "INSERT INTO person_grams (gram, person_id) VALUES {} ON CONFLICT DO NOTHING",
            grams.sql
        );
        tx.execute(&sql, &grams.refs()).await.map_err(map_err)?;
    }
    let eff = |id: &Uuid| effective.get(id).copied().unwrap_or(*id);

    let mut v = Values::new();
    for r in regs {
        let f = &r.fields;
        v.row(vec![
            b(r.id),
            b(r.site_id),
            b(eff(&r.person.id)),
            b(r.area_path.clone()),
            b(r.at),
            b(r.day),
            b(r.kind.as_str().to_string()),
            b(r.channel.as_str().to_string()),
            b(r.by_user),
            b(r.verification_code.clone()),
            b(f.temperature),
            b(i16::from(f.symptoms)),
            b(f.high_risk_travel),
            b(f.plate.clone()),
            b(f.companions),
            b(f.origin_code.clone()),
            b(f.destination.clone()),
            b(f.direction.map(|d| d.as_str().to_string())),
            b(f.visitor),
            b(f.unit_code.clone()),
            b(f.visit_reason.clone()),
            b(f.arrival_date),
            b(f.residence_code.clone()),
            b(f.address.clone()),
            b(f.employer.clone()),
            b(f.stay_days),
            b(f.purpose.clone()),
        ]);
    }
    let sql = format!(
        "INSERT INTO registrations (id, site_id, person_id, area_path, at, day, kind, channel, by_user, \
         verification_code, temperature, symptoms, high_risk_travel, plate, companions, origin_code, \
         destination, direction, visitor, unit_code, visit_reason, arrival_date, residence_code, address, \
         employer, stay_days, purpose) VALUES {} RETURNING id, seq",
        v.sql
    );
    let rows = tx.query(&sql, &v.refs()).await.map_err(map_err)?;
    let seqs: BTreeMap<Uuid, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();

    let mut v = Values::new();
    let mut pairs = std::collections::BTreeSet::new();
    for r in regs {
        if let Some(plate) = &r.fields.plate {
            if pairs.insert((plate.as_str(), eff(&r.person.id))) {
                v.row(vec![b(plate.clone()), b(eff(&r.person.id)), b(r.at)]);
            }
        }
    }
    if !v.params.is_empty() {
        let sql = format!(
            "INSERT INTO person_plates (plate, person_id, first_at) VALUES {} ON CONFLICT DO NOTHING",
            v.sql
        );
        tx.execute(&sql, &v.refs()).await.map_err(map_err)?;
    }

    let mut v = Values::new();
    for r in regs {
        for (i, c) in r.companion_list.iter().enumerate() {
            v.row(vec![
                b(r.id),
                b(i as i32),
                b(c.name.clone()),
                b(c.person.as_ref().map(|p| eff(&p.id))),
            ]);
        }
    }
    if !v.params.is_empty() {
        let sql = format!(
            "INSERT INTO registration_companions (registration_id, position, name, person_id) VALUES {}",
            v.sql
        );
        tx.execute(&sql, &v.refs()).await.map_err(map_err)?;
    }

    let mut counts: BTreeMap<(&str, &str, chrono::NaiveDate, &str), i64> = BTreeMap::new();
    for r in regs {
        for m in registration_metrics(r.kind, &r.fields) {
            *counts
                .entry((path_leaf(&r.area_path), &r.area_path, r.day, m))
                .or_default() += 1;
        }
    }
    let mut v = Values::new();
    for ((leaf, path, day, metric), n) in counts {
        v.row(vec![
            b(leaf.to_string()),
            b(path.to_string()),
            b(day),
            b(metric.to_string()),
            b(n),
        ]);
    }
    let sql = format!(
        "INSERT INTO rollups (area_code, area_path, day, metric, value) VALUES {} \
         ON CONFLICT (area_code, day, metric) DO UPDATE SET value = rollups.value + EXCLUDED.value",
        v.sql
    );
    tx.execute(&sql, &v.refs()).await.map_err(map_err)?;

    regs.iter()
        .map(|r| {
            seqs.get(&r.id)
                .copied()
                .ok_or_else(|| StoreError::Backend("a registration was not returned".into()))
        })
        .collect()
}

async fn write_once(pool: &Pool, regs: &[NewRegistration]) -> StoreResult<Vec<i64>> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(map_err)?;
    let seqs = insert_batch(&tx, regs).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(seqs)
}

/// Collects queued registrations and writes them in batches until the channel closes.
pub(crate) async fn batcher(pool: Pool, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // the registrations and their replies apart, without copying a registration
        let (regs, replies): (Vec<NewRegistration>, Vec<_>) = batch.drain(..).unzip();
        match write_once(&pool, &regs).await {
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
                    let r = write_once(&pool, std::slice::from_ref(reg)).await;
                    let _ = reply.send(r.map(|s| s.first().copied().unwrap_or_default()));
                }
            }
        }
    }
}
