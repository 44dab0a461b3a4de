//! The `Store` implementation: SQL for each operation.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use epigrid_core::area::{Area, Scope};
use epigrid_core::model::*;
use epigrid_core::store::{
    path_leaf, registration_metrics, Purged, Store, StoreError, StoreResult,
};
use epigrid_core::validate::DocType;

use crate::{map_err, PgStore};

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

fn bad(what: &str, v: &str) -> StoreError {
    StoreError::Backend(format!("unexpected {what} in database: {v}"))
}

fn area_row(r: &Row) -> Area {
    Area {
        code: r.get(0),
        name: r.get(1),
        level: r.get::<_, i16>(2) as u8,
        parent_code: r.get(3),
        path: r.get(4),
    }
}

fn site_row(r: &Row) -> StoreResult<Site> {
    let kind: String = r.get(2);
    Ok(Site {
        id: r.get(0),
        token: r.get(1),
        kind: SiteKind::parse(&kind).ok_or_else(|| bad("site kind", &kind))?,
        name: r.get(3),
        area_code: r.get(4),
        area_path: r.get(5),
        active: r.get(6),
        default_stay_min: r.get(7),
        created_at: r.get(8),
    })
}

fn user_row_at(r: &Row, o: usize) -> StoreResult<User> {
    let role: String = r.get(o + 3);
    Ok(User {
        id: r.get(o),
        username: r.get(o + 1),
        password_hash: r.get(o + 2),
        role: Role::parse(&role).ok_or_else(|| bad("role", &role))?,
        area_code: r.get(o + 4),
        area_path: r.get(o + 5),
        active: r.get(o + 6),
        created_at: r.get(o + 7),
    })
}

fn reg_row(r: &Row) -> StoreResult<Registration> {
    let kind: String = r.get(4);
    let channel: String = r.get(14);
    let doc_type: Option<String> = r.get(10);
    let direction: Option<String> = r.get(25);
    Ok(Registration {
        id: r.get(0),
        seq: r.get(1),
        site_id: r.get(2),
        site_name: r.get(3),
        kind: SiteKind::parse(&kind).ok_or_else(|| bad("site kind", &kind))?,
        area_code: r.get(5),
        area_path: r.get(6),
        at: r.get(7),
        person_id: r.get(8),
        name: r.get(9),
        id_type: doc_type.as_deref().and_then(DocType::parse),
        doc_masked: r.get(11),
        phone_masked: r.get(12),
        provisional: r.get(13),
        channel: Channel::parse(&channel).ok_or_else(|| bad("channel", &channel))?,
        by_user: r.get(15),
        verification_code: r.get(16),
        left_at: r.get(17),
        fields: RegistrationFields {
            temperature: r.get(18),
            symptoms: r.get::<_, i16>(19) as u8,
            high_risk_travel: r.get(20),
            plate: r.get(21),
            companions: r.get(22),
            origin_code: r.get(23),
            destination: r.get(24),
            direction: direction.as_deref().and_then(Direction::parse),
            visitor: r.get(26),
            unit_code: r.get(27),
            visit_reason: r.get(28),
            arrival_date: r.get(29),
            residence_code: r.get(30),
            address: r.get(31),
            employer: r.get(32),
            stay_days: r.get(33),
            purpose: r.get(34),
        },
    })
}

impl PgStore {
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
        c.query(&stmt, params).await.map_err(map_err)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Option<Row>> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
        c.query_opt(&stmt, params).await.map_err(map_err)
    }

    /// Why a compare-and-set update of row `id` in `table` changed nothing: the row changed
    /// since the caller read it (`Conflict`), or it is gone (`NotFound`).
    async fn changed_or_gone(&self, table: &str, id: Uuid) -> StoreError {
        let sql = format!("SELECT 1 FROM {table} WHERE id = $1");
        match self.query_opt(&sql, &[&id]).await {
            Ok(Some(_)) => StoreError::Conflict(format!("{table}:{id}")),
            Ok(None) => StoreError::NotFound,
            Err(e) => e,
        }
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
        c.execute(&stmt, params).await.map_err(map_err)
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.query("SELECT 1", &[]).await.map(|_| ())
    }

    async fn upsert_areas(&self, areas: &[Area]) -> StoreResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let stmt = tx
            .prepare(
                "INSERT INTO areas (code, name, level, parent_code, path) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, level = EXCLUDED.level, \
                 parent_code = EXCLUDED.parent_code, path = EXCLUDED.path \
                 WHERE (areas.name, areas.level, areas.parent_code, areas.path) IS DISTINCT FROM \
                       (EXCLUDED.name, EXCLUDED.level, EXCLUDED.parent_code, EXCLUDED.path)",
            )
            .await
            .map_err(map_err)?;
        let mut changed = 0;
        for a in areas {
            changed += tx
                .execute(
                    &stmt,
                    &[
                        &a.code,
                        &a.name,
                        &i16::from(a.level),
                        &a.parent_code,
                        &a.path,
                    ],
                )
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(changed as usize)
    }

    async fn area(&self, code: &str) -> StoreResult<Option<Area>> {
        Ok(self
            .query_opt(
                &format!("SELECT {AREA_COLS} FROM areas WHERE code = $1"),
                &[&code],
            )
            .await?
            .map(|r| area_row(&r)))
    }

    async fn area_children(&self, parent: Option<&str>) -> StoreResult<Vec<Area>> {
        let rows = match parent {
            Some(p) => {
                self.query(
                    &format!("SELECT {AREA_COLS} FROM areas WHERE parent_code = $1 ORDER BY code"),
                    &[&p],
                )
                .await?
            }
            None => {
                self.query(
                    &format!(
                        "SELECT {AREA_COLS} FROM areas WHERE parent_code IS NULL ORDER BY code"
                    ),
                    &[],
                )
                .await?
            }
        };
        Ok(rows.iter().map(area_row).collect())
    }

    async fn areas_in(&self, scope: &Scope, max_level: u8) -> StoreResult<Vec<Area>> {
        let (lo, hi) = scope.bounds();
        let rows = self
            .query(
                &format!("SELECT {AREA_COLS} FROM areas WHERE path >= $1 AND path < $2 AND level <= $3 ORDER BY path"),
                &[&lo, &hi, &i16::from(max_level)],
            )
            .await?;
        Ok(rows.iter().map(area_row).collect())
    }

    async fn area_count(&self) -> StoreResult<i64> {
        Ok(self.query("SELECT COUNT(*) FROM areas", &[]).await?[0].get(0))
    }

    async fn insert_site(&self, s: &Site) -> StoreResult<()> {
        self.execute(
            &format!("INSERT INTO sites ({SITE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
            &[
                &s.id,
                &s.token,
                &s.kind.as_str(),
                &s.name,
                &s.area_code,
                &s.area_path,
                &s.active,
                &s.default_stay_min,
                &s.created_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn update_site(&self, b: &Site, s: &Site) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE sites SET name = $2, token = $3, active = $4, default_stay_min = $5 WHERE id = $1 \
                 AND name = $6 AND token = $7 AND active = $8 AND default_stay_min = $9",
                &[
                    &s.id,
                    &s.name,
                    &s.token,
                    &s.active,
                    &s.default_stay_min,
                    &b.name,
                    &b.token,
                    &b.active,
                    &b.default_stay_min,
                ],
            )
            .await?;
        if n == 0 {
            return Err(self.changed_or_gone("sites", s.id).await);
        }
        Ok(())
    }

    async fn site(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Site>> {
        let (lo, hi) = scope.bounds();
        self.query_opt(
            &format!("SELECT {SITE_COLS} FROM sites WHERE id = $1 AND area_path >= $2 AND area_path < $3"),
            &[&id, &lo, &hi],
        )
        .await?
        .map(|r| site_row(&r))
        .transpose()
    }

    async fn site_by_token(&self, token: &str) -> StoreResult<Option<Site>> {
        self.query_opt(
            &format!("SELECT {SITE_COLS} FROM sites WHERE token = $1"),
            &[&token],
        )
        .await?
        .map(|r| site_row(&r))
        .transpose()
    }

    async fn sites(&self, scope: &Scope) -> StoreResult<Vec<Site>> {
        let (lo, hi) = scope.bounds();
        self.query(
            &format!("SELECT {SITE_COLS} FROM sites WHERE area_path >= $1 AND area_path < $2 ORDER BY area_path, name COLLATE \"C\", id"),
            &[&lo, &hi],
        )
        .await?
        .iter()
        .map(site_row)
        .collect()
    }

    async fn insert_registration(&self, reg: NewRegistration) -> StoreResult<i64> {
        let (tx, rx) = oneshot::channel();
        self.batcher
            .send((reg, tx))
            .await
            .map_err(|_| StoreError::Backend("the registration batcher has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the registration batcher dropped a write".into()))?
    }

    async fn insert_registrations(&self, regs: Vec<NewRegistration>) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        for chunk in regs.chunks(1000) {
            crate::write::insert_batch(&tx, chunk, crate::write::Tx::Within).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn registration(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Registration>> {
        let (lo, hi) = scope.bounds();
        self.query_opt(
            &format!("{REG_SELECT} WHERE r.id = $1 AND r.area_path >= $2 AND r.area_path < $3"),
            &[&id, &lo, &hi],
        )
        .await?
        .map(|r| reg_row(&r))
        .transpose()
    }

    async fn registrations(
        &self,
        scope: &Scope,
        f: &RegistrationFilter,
    ) -> StoreResult<Vec<Registration>> {
        let (lo, hi) = scope.bounds();
        let mut sql = format!("{REG_SELECT} WHERE r.area_path >= $1 AND r.area_path < $2");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(lo), Box::new(hi)];
        let mut add = |cond: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            let ph = format!("${}", args.len());
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
                Box::new(s),
            );
        }
        if let Some(k) = f.kind {
            add("r.kind =", Box::new(k.as_str().to_string()));
        }
        if let Some(t) = f.from {
            add("r.at >=", Box::new(t));
        }
        if let Some(t) = f.to {
            add("r.at <", Box::new(t));
        }
        if let Some(p) = f.person_id {
            // a person's registrations include those of records merged into them
            add(
                "r.person_id IN (SELECT id FROM persons WHERE id = # OR merged_into = #)",
                Box::new(p),
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
        if epigrid_core::store::lists_newest(f) {
            // the newest rows first, through the primary key (see `lists_newest`)
            let window = epigrid_core::store::newest_window(limit);
            let mut probe_args: Vec<&(dyn ToSql + Sync)> = args
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                .collect();
            probe_args.push(&f.before_seq);
            let probe = format!(
                "{sql} AND r.seq >= COALESCE(${}::BIGINT, (SELECT MAX(seq) + 1 FROM registrations)) - {window}{tail}",
                probe_args.len()
            );
            let rows: Vec<Registration> = self
                .query(&probe, &probe_args)
                .await?
                .iter()
                .map(reg_row)
                .collect::<StoreResult<_>>()?;
            if rows.len() >= limit as usize {
                return Ok(rows);
            }
        }
        sql.push_str(&tail);
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        self.query(&sql, &refs).await?.iter().map(reg_row).collect()
    }

    async fn check_out(&self, id: Uuid, site_id: Uuid, at: DateTime<Utc>) -> StoreResult<bool> {
        let n = self
            .execute(
                "UPDATE registrations SET left_at = $3 WHERE id = $1 AND site_id = $2 AND left_at IS NULL AND at <= $3",
                &[&id, &site_id, &at],
            )
            .await?;
        Ok(n == 1)
    }

    async fn registration_count(&self) -> StoreResult<i64> {
        Ok(self
            .query("SELECT COUNT(*) FROM registrations", &[])
            .await?[0]
            .get(0))
    }

    async fn registration_companions(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Vec<(Option<String>, bool)>> {
        let (lo, hi) = scope.bounds();
        Ok(self
            .query(
                "SELECT c.name, c.person_id IS NOT NULL FROM registration_companions c \
                 JOIN registrations r ON r.id = c.registration_id \
                 WHERE r.id = $1 AND r.area_path >= $2 AND r.area_path < $3 ORDER BY c.position",
                &[&id, &lo, &hi],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn registration_secrets(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<RegistrationSecrets>> {
        let (lo, hi) = scope.bounds();
        Ok(self
            .query_opt(
                "SELECT p.id, p.doc_type, p.doc_cipher, r.phone_cipher FROM registrations r \
                 JOIN persons p ON p.id = COALESCE(r.phone_sealed_for, r.person_id) \
                 WHERE r.id = $1 AND r.area_path >= $2 AND r.area_path < $3",
                &[&id, &lo, &hi],
            )
            .await?
            .map(|r| {
                let dt: Option<String> = r.get(1);
                RegistrationSecrets {
                    came_in_as: r.get(0),
                    doc_type: dt.as_deref().and_then(DocType::parse),
                    doc_cipher: r.get(2),
                    phone_cipher: r.get(3),
                }
            }))
    }

    async fn person_secrets(
        &self,
        person_id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<PersonSecrets>> {
        let (lo, hi) = scope.bounds();
        Ok(self
            .query_opt(
                "SELECT id, doc_type, doc_cipher, phone_cipher, area_path FROM persons WHERE id = $1 \
                 AND ((area_path >= $2 AND area_path < $3) OR EXISTS (SELECT 1 FROM registrations r \
                 WHERE r.person_id = persons.id AND r.area_path >= $2 AND r.area_path < $3))",
                &[&person_id, &lo, &hi],
            )
            .await?
            .map(|r| {
                let dt: Option<String> = r.get(1);
                PersonSecrets {
                    person_id: r.get(0),
                    doc_type: dt.as_deref().and_then(DocType::parse),
                    doc_cipher: r.get(2),
                    phone_cipher: r.get(3),
                    area_path: r.get(4),
                }
            }))
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
        // a line number no list can have matches nothing
        let Ok(line) = i32::try_from(line) else {
            return Ok(false);
        };
        let n = self
            .execute(
                "UPDATE list_matches SET decision = $4, decided_by = $5, decided_at = $6, \
                 review = CASE WHEN $4 = 'confirmed' THEN false ELSE review END \
                 WHERE list_id = $1 AND line = $2 AND person_id = $3 AND decision IS NULL AND review \
                 AND EXISTS (SELECT 1 FROM lists l WHERE l.id = $1 AND l.area_path >= $7 AND l.area_path < $8) \
                 AND EXISTS (SELECT 1 FROM persons p WHERE p.id = $3 AND p.area_path >= $7 AND p.area_path < $8)",
                &[
                    &list_id,
                    &line,
                    &person_id,
                    &decision.as_str(),
                    &by,
                    &at,
                    &lo,
                    &hi,
                ],
            )
            .await?;
        Ok(n == 1)
    }
    async fn lists_of(
        &self,
        person_id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Vec<(ListRecord, ListMatch)>> {
        let (lo, hi) = scope.bounds();
        Ok(self
            .query(
                "SELECT l.id, l.name, l.uploaded_by, l.area_path, l.created_at, l.rows, l.bad_rows, \
                 m.line, m.method, m.confidence, m.review, m.decision FROM list_matches m \
                 JOIN lists l ON l.id = m.list_id JOIN persons p ON p.id = m.person_id WHERE m.person_id = $1 \
                 AND ((l.area_path >= $2 AND l.area_path < $3) OR (p.area_path >= $2 AND p.area_path < $3)) \
                 ORDER BY l.created_at DESC, l.id, m.line LIMIT 50",
                &[&person_id, &lo, &hi],
            )
            .await?
            .iter()
            .map(|r| {
                (list_row(r), list_match_at(r, 7, person_id))
            })
            .collect())
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
        let rows = self
            .query(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE m.review AND m.decision IS NULL) FROM list_matches m \
                 JOIN persons p ON p.id = m.person_id WHERE m.list_id = $1 AND p.area_path >= $2 AND p.area_path < $3",
                &[&id, &lo, &hi],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| (r.get::<_, i64>(0) as usize, r.get::<_, i64>(1) as usize))
            .unwrap_or((0, 0)))
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
        Ok(self
            .query(
                "SELECT day, SUM(value)::BIGINT FROM rollups WHERE metric = $1 AND area_path >= $2 AND area_path < $3 \
                 AND day >= $4 AND day <= $5 GROUP BY day ORDER BY day",
                &[&metric, &lo, &hi, &from, &to],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn recount_rollups(&self) -> StoreResult<Vec<RollupRow>> {
        let rows = self
            .query(
                "SELECT area_path, day, kind, temperature, symptoms, high_risk_travel FROM registrations",
                &[],
            )
            .await?;
        let mut counts: std::collections::BTreeMap<(String, NaiveDate, &'static str), i64> =
            Default::default();
        for r in rows {
            let path: String = r.get(0);
            let kind: String = r.get(2);
            let kind = SiteKind::parse(&kind).ok_or_else(|| bad("site kind", &kind))?;
            let fields = RegistrationFields {
                temperature: r.get(3),
                symptoms: r.get::<_, i16>(4) as u8,
                high_risk_travel: r.get(5),
                ..Default::default()
            };
            for m in registration_metrics(kind, &fields) {
                *counts
                    .entry((path_leaf(&path).to_string(), r.get(1), m))
                    .or_default() += 1;
            }
        }
        Ok(counts
            .into_iter()
            .map(|((area_code, day, metric), value)| RollupRow {
                area_code,
                day,
                metric: metric.to_string(),
                value,
            })
            .collect())
    }

    async fn rollup_rows(&self) -> StoreResult<Vec<RollupRow>> {
        Ok(self
            .query(
                "SELECT area_code, day, metric, value FROM rollups ORDER BY area_code, day, metric",
                &[],
            )
            .await?
            .iter()
            .map(|r| RollupRow {
                area_code: r.get(0),
                day: r.get(1),
                metric: r.get(2),
                value: r.get(3),
            })
            .collect())
    }

    async fn insert_user(&self, u: &User) -> StoreResult<()> {
        // A name that differs from another only in case is taken too ("Admin", "admin"). Two
        // processes adding such names at once take turns on a lock for the folded name (held
        // until commit), so the second one's check sees the first one's row. (No unique index
        // on lower(username): databases made before may hold such pairs.)
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('epigrid.users:' || lower($1), 0))",
            &[&u.username],
        )
        .await
        .map_err(map_err)?;
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO users ({USER_COLS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
                 WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($2))"
                ),
                &[
                    &u.id,
                    &u.username,
                    &u.password_hash,
                    &u.role.as_str(),
                    &u.area_code,
                    &u.area_path,
                    &u.active,
                    &u.created_at,
                ],
            )
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        if n == 0 {
            return Err(StoreError::Conflict("username taken".into()));
        }
        Ok(())
    }

    async fn update_user(&self, u: &User) -> StoreResult<()> {
        // a deactivated account's sessions end with it (reactivated, it logs in afresh)
        let rows = self
            .query(
                "WITH u AS (UPDATE users SET password_hash = $2, role = $3, area_code = $4, area_path = $5, \
                 active = $6 WHERE id = $1 RETURNING id), \
                 d AS (DELETE FROM sessions WHERE NOT $6 AND user_id IN (SELECT id FROM u)) \
                 SELECT id FROM u",
                &[&u.id, &u.password_hash, &u.role.as_str(), &u.area_code, &u.area_path, &u.active],
            )
            .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.query_opt(
            &format!("SELECT {USER_COLS} FROM users WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|r| user_row_at(&r, 0))
        .transpose()
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        self.query_opt(
            &format!("SELECT {USER_COLS} FROM users WHERE username = $1"),
            &[&username],
        )
        .await?
        .map(|r| user_row_at(&r, 0))
        .transpose()
    }

    async fn users(&self, scope: &Scope) -> StoreResult<Vec<User>> {
        let (lo, hi) = scope.bounds();
        self.query(
            &format!("SELECT {USER_COLS} FROM users WHERE area_path >= $1 AND area_path < $2 ORDER BY username COLLATE \"C\""),
            &[&lo, &hi],
        )
        .await?
        .iter()
        .map(|r| user_row_at(r, 0))
        .collect()
    }

    async fn insert_session(&self, s: &Session) -> StoreResult<()> {
        self.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf, api, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&s.token_hash, &s.user_id, &s.csrf, &s.api, &s.created_at, &s.expires_at],
        )
        .await
        .map(|_| ())
    }

    async fn session(
        &self,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(Session, User)>> {
        let row = self
            .query_opt(
                "SELECT s.token_hash, s.user_id, s.csrf, s.api, s.created_at, s.expires_at, \
                 u.id, u.username, u.password_hash, u.role, u.area_code, u.area_path, u.active, u.created_at \
                 FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.active",
                &[&token_hash, &now],
            )
            .await?;
        row.map(|r| {
            Ok((
                Session {
                    token_hash: r.get(0),
                    user_id: r.get(1),
                    csrf: r.get(2),
                    api: r.get(3),
                    created_at: r.get(4),
                    expires_at: r.get(5),
                },
                user_row_at(&r, 6)?,
            ))
        })
        .transpose()
    }

    async fn delete_session(&self, token_hash: &[u8]) -> StoreResult<()> {
        self.execute("DELETE FROM sessions WHERE token_hash = $1", &[&token_hash])
            .await
            .map(|_| ())
    }

    async fn key_check(&self) -> StoreResult<Option<Vec<u8>>> {
        let row = self
            .query_opt(epigrid_core::store::KEY_CHECK_SQL, &[])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn claim_key_check(&self, check: &[u8]) -> StoreResult<Vec<u8>> {
        self.execute(
            "INSERT INTO meta (name, value) VALUES ('key_check', $1) ON CONFLICT (name) DO NOTHING",
            &[&check],
        )
        .await?;
        Ok(self.key_check().await?.unwrap_or_default())
    }

    async fn is_demo(&self) -> StoreResult<bool> {
        Ok(self
            .query_opt("SELECT 1 FROM meta WHERE name = 'demo'", &[])
            .await?
            .is_some())
    }

    async fn mark_demo(&self) -> StoreResult<()> {
        self.execute(
            "INSERT INTO meta (name, value) VALUES ('demo', '\\x01'::bytea) ON CONFLICT (name) DO NOTHING",
            &[],
        )
        .await
        .map(|_| ())
    }

    async fn seal_birth_dates(
        &self,
        index: &(dyn Fn(NaiveDate) -> Vec<u8> + Send + Sync),
    ) -> StoreResult<u64> {
        use chrono::Datelike;
        let mut changed = 0;
        loop {
            let rows = self
                .query(epigrid_core::store::UNSEALED_BIRTHS_SQL, &[])
                .await?;
            if rows.is_empty() {
                return Ok(changed);
            }
            let (mut ids, mut years, mut indexes) = (Vec::new(), Vec::new(), Vec::new());
            for r in &rows {
                let (id, d): (Uuid, NaiveDate) = (r.get(0), r.get(1));
                if let Some(year) = NaiveDate::from_ymd_opt(d.year(), 1, 1) {
                    ids.push(id);
                    years.push(year);
                    indexes.push(index(d));
                }
            }
            if ids.is_empty() {
                return Ok(changed);
            }
            changed += self
                .execute(
                    "UPDATE persons p SET birth_date = t.year, birth_index = t.ix \
                     FROM unnest($1::uuid[], $2::date[], $3::bytea[]) AS t(id, year, ix) \
                     WHERE p.id = t.id AND p.birth_index IS NULL",
                    &[&ids, &years, &indexes],
                )
                .await?;
        }
    }

    async fn sealed_sample(&self) -> StoreResult<Option<(Uuid, Vec<u8>)>> {
        let row = self
            .query_opt(
                "SELECT id, doc_cipher FROM persons WHERE doc_cipher IS NOT NULL LIMIT 1",
                &[],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])
            .await
    }

    async fn purge_before(&self, before: DateTime<Utc>) -> StoreResult<Purged> {
        /// An arbitrary constant naming the purge's lock: servers sharing the database take
        /// turns rather than deadlock on the same rows.
        const PURGE_LOCK: i64 = 0x0070_7572_6765;
        /// People deleted per transaction.
        const PEOPLE_AT_ONCE: usize = 1000;
        use tokio_postgres::error::SqlState;
        let sql = epigrid_core::store::purge_statements("$1", PEOPLE_AT_ONCE);
        let mut c = self.client().await?;
        // Old registrations and the vehicles seen only in them: nobody writes to those rows,
        // so one transaction (other writers do not wait for it).
        let tx = c.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PURGE_LOCK])
            .await
            .map_err(map_err)?;
        let mut n = Vec::new();
        for s in &sql[..3] {
            n.push(tx.execute(s.as_str(), &[&before]).await.map_err(map_err)?);
        }
        tx.commit().await.map_err(map_err)?;
        let mut purged = Purged {
            registrations: n[1],
            persons: 0,
        };
        // Then the people left with nothing, a thousand at a time, each time in one snapshot
        // (REPEATABLE READ): the people whose grams go are the ones deleted. One of them
        // registering again meanwhile fails that transaction (a serialization failure or a
        // deadlock, detected); it is rolled back whole, and the rest waits for the next run.
        loop {
            let chunk = async {
                let tx = c
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .start()
                    .await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PURGE_LOCK])
                    .await?;
                let mut deleted = 0;
                for s in &sql[3..] {
                    deleted = tx.execute(s.as_str(), &[&before]).await?;
                }
                tx.commit().await?;
                Ok::<u64, tokio_postgres::Error>(deleted)
            };
            match chunk.await {
                Ok(deleted) => {
                    purged.persons += deleted;
                    if deleted < PEOPLE_AT_ONCE as u64 {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                            | Some(&SqlState::T_R_DEADLOCK_DETECTED)
                    ) =>
                {
                    tracing::info!(
                        "retention purge: people left for the next run (they came back)"
                    );
                    break;
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(purged)
    }

    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        self.execute(
            "INSERT INTO audit_log (id, at, user_id, username, action, subject, area_path, ip, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[&e.id, &e.at, &e.user_id, &e.username, &e.action, &e.subject, &e.area_path, &e.ip, &e.detail],
        )
        .await
        .map(|_| ())
    }

    async fn audit_log(&self, scope: &Scope, f: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let (lo, hi) = scope.bounds();
        let mut sql = String::from(
            "SELECT seq, id, at, user_id, username, action, subject, area_path, ip, detail FROM audit_log \
             WHERE ((area_path >= $1 AND area_path < $2) OR ($3 AND area_path = '/'))",
        );
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> =
            vec![Box::new(lo), Box::new(hi), Box::new(f.unplaced)];
        let mut add = |cond: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ${}", args.len()));
        };
        for (col, v) in [
            ("username =", &f.username),
            ("action =", &f.action),
            ("subject =", &f.subject),
        ] {
            if let Some(v) = v {
                add(col, Box::new(v.clone()));
            }
        }
        if let Some(t) = f.from {
            add("at >=", Box::new(t));
        }
        if let Some(t) = f.to {
            add("at <", Box::new(t));
        }
        if let Some(s) = f.before_seq {
            add("seq <", Box::new(s));
        }
        sql.push_str(&format!(
            " ORDER BY seq DESC LIMIT {}",
            f.limit.clamp(1, 10_000)
        ));
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        Ok(self
            .query(&sql, &refs)
            .await?
            .iter()
            .map(|r| AuditEntry {
                seq: r.get(0),
                id: r.get(1),
                at: r.get(2),
                user_id: r.get(3),
                username: r.get(4),
                action: r.get(5),
                subject: r.get(6),
                area_path: r.get(7),
                ip: r.get(8),
                detail: r.get(9),
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// People under management

use epigrid_core::person::{
    Category, CategoryChange, HealthReport, LabResult, Observation, ObservationKind,
    ObservationRow, Person, PersonQuery, TestKind, TestResult,
};
use epigrid_core::validate::Sex;

const PERSON_COLS: &str = "p.id, p.name, p.doc_type, p.doc_masked, p.phone_masked, p.birth_date, p.sex, \
    p.home_area_code, p.area_path, p.provisional, p.merged_into, p.category, p.category_since, p.created_at, p.last_seen_at";
const OBS_COLS: &str = "o.id, o.person_id, o.kind, o.site_id, o.start_date, o.planned_end, o.released_at, \
    o.release_reason, o.grid_worker_id, o.token_hash, o.token_revoked, o.reports_per_day, o.area_path, o.created_at, o.created_by";

fn person_row(r: &Row) -> StoreResult<Person> {
    let dt: Option<String> = r.get(2);
    let sex: Option<String> = r.get(6);
    let cat: String = r.get(11);
    Ok(Person {
        id: r.get(0),
        name: r.get(1),
        doc_type: dt.as_deref().and_then(DocType::parse),
        doc_masked: r.get(3),
        phone_masked: r.get(4),
        birth_date: r.get(5),
        sex: sex.as_deref().and_then(Sex::parse),
        home_area_code: r.get(7),
        area_path: r.get(8),
        provisional: r.get(9),
        merged_into: r.get(10),
        category: Category::parse(&cat).ok_or_else(|| bad("category", &cat))?,
        category_since: r.get(12),
        created_at: r.get(13),
        last_seen_at: r.get(14),
    })
}

fn obs_row(r: &Row) -> StoreResult<Observation> {
    let kind: String = r.get(2);
    Ok(Observation {
        id: r.get(0),
        person_id: r.get(1),
        kind: ObservationKind::parse(&kind).ok_or_else(|| bad("observation kind", &kind))?,
        site_id: r.get(3),
        start: r.get(4),
        planned_end: r.get(5),
        released_at: r.get(6),
        release_reason: r.get(7),
        grid_worker_id: r.get(8),
        token_hash: r.get(9),
        token_revoked: r.get(10),
        reports_per_day: r.get::<_, i16>(11) as u8,
        area_path: r.get(12),
        created_at: r.get(13),
        created_by: r.get(14),
    })
}

fn report_row(r: &Row) -> HealthReport {
    HealthReport {
        id: r.get(0),
        observation_id: r.get(1),
        person_id: r.get(2),
        day: r.get(3),
        slot: r.get::<_, i16>(4) as u8,
        at: r.get(5),
        temperature: r.get(6),
        symptoms: r.get::<_, i16>(7) as u8,
        note: r.get(8),
        by_user: r.get(9),
    }
}

fn lab_row(r: &Row, o: usize) -> StoreResult<LabResult> {
    let test: String = r.get(o + 2);
    let result: String = r.get(o + 5);
    Ok(LabResult {
        id: r.get(o),
        person_id: r.get(o + 1),
        test: TestKind::parse(&test).ok_or_else(|| bad("test", &test))?,
        sample_date: r.get(o + 3),
        result_date: r.get(o + 4),
        result: TestResult::parse(&result).ok_or_else(|| bad("result", &result))?,
        entered_by: r.get(o + 6),
        created_at: r.get(o + 7),
    })
}

/// A category change, compare-and-set, with its history row; false if the person is no longer
/// in `ch.from`.
async fn apply_change<C: deadpool_postgres::GenericClient>(
    c: &C,
    ch: &CategoryChange,
) -> StoreResult<bool> {
    let n = c
        .execute(
            "UPDATE persons SET category = $2, category_since = $3 WHERE id = $1 AND category = $4 \
             AND merged_into IS NULL",
            &[&ch.person_id, &ch.to.as_str(), &ch.at, &ch.from.as_str()],
        )
        .await
        .map_err(map_err)?;
    if n == 0 {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO category_changes (id, person_id, from_cat, to_cat, at, by_user, by_username, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[&ch.id, &ch.person_id, &ch.from.as_str(), &ch.to.as_str(), &ch.at, &ch.by_user, &ch.by_username, &ch.reason],
    )
    .await
    .map_err(map_err)?;
    Ok(true)
}

/// Starts an observation unless the person has one not released whose days reach this one's
/// start (`StoreError::Conflict`). Call inside a transaction: the person's row is locked
/// first, so two starts at once take turns and the second finds the first.
async fn insert_obs<C: deadpool_postgres::GenericClient>(
    c: &C,
    o: &Observation,
) -> StoreResult<()> {
    // locked, then read: a record merged away takes no new facts (a merge may have come
    // between the caller's read and this write; once locked, it cannot come now)
    let merged: Option<bool> = c
        .query_opt(
            "SELECT merged_into IS NOT NULL FROM persons WHERE id = $1 FOR UPDATE",
            &[&o.person_id],
        )
        .await
        .map_err(map_err)?
        .map(|r| r.get(0));
    if merged == Some(true) {
        return Err(StoreError::Conflict(format!("merged:{}", o.person_id)));
    }
    let overlapping = c
        .query_opt(
            "SELECT 1 FROM observations WHERE person_id = $1 AND released_at IS NULL \
             AND planned_end >= $2 LIMIT 1",
            &[&o.person_id, &o.start],
        )
        .await
        .map_err(map_err)?;
    if overlapping.is_some() {
        return Err(StoreError::Conflict(format!("observation:{}", o.person_id)));
    }
    c.execute(
        &format!(
            "INSERT INTO observations ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            OBS_COLS.replace("o.", "")
        ),
        &[
            &o.id,
            &o.person_id,
            &o.kind.as_str(),
            &o.site_id,
            &o.start,
            &o.planned_end,
            &o.released_at,
            &o.release_reason,
            &o.grid_worker_id,
            &o.token_hash,
            &o.token_revoked,
            &i16::from(o.reports_per_day),
            &o.area_path,
            &o.created_at,
            &o.created_by,
        ],
    )
    .await
    .map_err(map_err)?;
    Ok(())
}

impl PgStore {
    pub(crate) async fn person_impl(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Person>> {
        let (lo, hi) = scope.bounds();
        self.query_opt(
            &format!("SELECT {PERSON_COLS} FROM persons p WHERE p.id = $1 AND p.area_path >= $2 AND p.area_path < $3"),
            &[&id, &lo, &hi],
        )
        .await?
        .map(|r| person_row(&r))
        .transpose()
    }

    pub(crate) async fn search_impl(
        &self,
        scope: &Scope,
        q: &PersonQuery,
        limit: u32,
    ) -> StoreResult<Vec<Person>> {
        let (lo, hi) = scope.bounds();
        let limit = i64::from(limit.clamp(1, 500));
        let scoped = "p.area_path >= $1 AND p.area_path < $2 AND p.merged_into IS NULL";
        let rows = match q {
            PersonQuery::Document { index, doc_type } => {
                self.query(
                    // a record merged into another is found as the one it was merged into
                    &format!(
                        "SELECT {PERSON_COLS} FROM persons p WHERE p.id IN (SELECT COALESCE(x.merged_into, x.id) \
                         FROM persons x WHERE x.doc_type = $4 AND x.doc_index = $3) AND {scoped} LIMIT $5"
                    ),
                    &[&lo, &hi, index, &doc_type.as_str(), &limit],
                )
                .await?
            }
            PersonQuery::Phone(index) => {
                self.query(
                    &format!(
                        "SELECT {PERSON_COLS} FROM persons p WHERE p.id IN (SELECT COALESCE(x.merged_into, x.id) \
                         FROM persons x WHERE x.phone_index = $3) AND {scoped} ORDER BY p.last_seen_at DESC, p.id LIMIT $4"
                    ),
                    &[&lo, &hi, index, &limit],
                )
                .await?
            }
            PersonQuery::Plate(plate) => {
                self.query(
                    &format!(
                        "SELECT {PERSON_COLS} FROM persons p WHERE p.id IN (SELECT COALESCE(x.merged_into, x.id) FROM person_plates pp \
                         JOIN persons x ON x.id = pp.person_id WHERE pp.plate = $3) \
                         AND {scoped} ORDER BY p.last_seen_at DESC, p.id LIMIT $4"
                    ),
                    &[&lo, &hi, plate, &limit],
                )
                .await?
            }
            PersonQuery::Name(name) => {
                let gram = epigrid_core::person::search_gram(name);
                let folded = epigrid_core::person::fold_name(name);
                let typed_gram = epigrid_core::person::first_gram(name);
                // lower() folds as the database's LC_CTYPE does: every alphabet under a UTF-8
                // locale (C.UTF-8, en_US.UTF-8, zh_CN.UTF-8), ASCII alone under plain "C". So
                // the name as typed is matched too, and its gram as typed (what migration 20's
                // lower() left unfolded there): exactly the case typed always finds a name.
                self.query(
                    &format!(
                        "SELECT {PERSON_COLS} FROM persons p WHERE p.id IN (SELECT person_id FROM person_grams WHERE gram IN ($5, $7)) \
                         AND (strpos(lower(p.name), $3) > 0 OR strpos(p.name, $6) > 0) AND {scoped} \
                         ORDER BY (lower(p.name) = $3 OR p.name = $6) DESC, p.last_seen_at DESC, p.id LIMIT $4"
                    ),
                    &[&lo, &hi, &folded, &limit, &gram, name, &typed_gram],
                )
                .await?
            }
        };
        rows.iter().map(person_row).collect()
    }

    pub(crate) async fn change_category_impl(&self, ch: &CategoryChange) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        if !apply_change(&tx, ch).await? {
            return Ok(false);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    pub(crate) async fn category_history_impl(
        &self,
        person_id: Uuid,
    ) -> StoreResult<Vec<CategoryChange>> {
        self.query(
            "SELECT id, person_id, from_cat, to_cat, at, by_user, by_username, reason FROM category_changes \
             WHERE person_id = $1 ORDER BY at, id",
            &[&person_id],
        )
        .await?
        .iter()
        .map(|r| {
            let (f, t): (String, String) = (r.get(2), r.get(3));
            Ok(CategoryChange {
                id: r.get(0),
                person_id: r.get(1),
                from: Category::parse(&f).ok_or_else(|| bad("category", &f))?,
                to: Category::parse(&t).ok_or_else(|| bad("category", &t))?,
                at: r.get(4),
                by_user: r.get(5),
                by_username: r.get(6),
                reason: r.get(7),
            })
        })
        .collect()
    }

    pub(crate) async fn category_counts_impl(
        &self,
        scope: &Scope,
    ) -> StoreResult<Vec<(String, Category, i64)>> {
        let (lo, hi) = scope.bounds();
        self.query(
            "SELECT area_path, category, COUNT(*) FROM persons WHERE category <> 'none' \
             AND area_path >= $1 AND area_path < $2 AND merged_into IS NULL GROUP BY area_path, category ORDER BY area_path, category",
            &[&lo, &hi],
        )
        .await?
        .iter()
        .map(|r| {
            let c: String = r.get(1);
            Ok((r.get(0), Category::parse(&c).ok_or_else(|| bad("category", &c))?, r.get(2)))
        })
        .collect()
    }

    pub(crate) async fn insert_observation_impl(&self, o: &Observation) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        insert_obs(&tx, o).await?;
        tx.commit().await.map_err(map_err)
    }

    pub(crate) async fn update_observation_impl(
        &self,
        b: &Observation,
        o: &Observation,
    ) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE observations SET planned_end = $2, released_at = $3, release_reason = $4, grid_worker_id = $5, \
                 token_hash = $6, token_revoked = $7, reports_per_day = $8, area_path = $16 WHERE id = $1 \
                 AND planned_end = $9 AND released_at IS NOT DISTINCT FROM $10 \
                 AND release_reason IS NOT DISTINCT FROM $11 AND grid_worker_id IS NOT DISTINCT FROM $12 \
                 AND token_hash = $13 AND token_revoked = $14 AND reports_per_day = $15 \
                 AND area_path = $17",
                &[
                    &o.id,
                    &o.planned_end,
                    &o.released_at,
                    &o.release_reason,
                    &o.grid_worker_id,
                    &o.token_hash,
                    &o.token_revoked,
                    &i16::from(o.reports_per_day),
                    &b.planned_end,
                    &b.released_at,
                    &b.release_reason,
                    &b.grid_worker_id,
                    &b.token_hash,
                    &b.token_revoked,
                    &i16::from(b.reports_per_day),
                    &o.area_path,
                    &b.area_path,
                ],
            )
            .await?;
        if n == 0 {
            return Err(self.changed_or_gone("observations", o.id).await);
        }
        Ok(())
    }

    pub(crate) async fn observation_impl(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<Observation>> {
        let (lo, hi) = scope.bounds();
        self.query_opt(
            &format!(
                "SELECT {OBS_COLS} FROM observations o JOIN persons p ON p.id = o.person_id \
                 WHERE o.id = $1 AND p.area_path >= $2 AND p.area_path < $3"
            ),
            &[&id, &lo, &hi],
        )
        .await?
        .map(|r| obs_row(&r))
        .transpose()
    }

    pub(crate) async fn observation_by_token_impl(
        &self,
        hash: &[u8],
    ) -> StoreResult<Option<Observation>> {
        self.query_opt(
            &format!("SELECT {OBS_COLS} FROM observations o WHERE o.token_hash = $1"),
            &[&hash],
        )
        .await?
        .map(|r| obs_row(&r))
        .transpose()
    }

    pub(crate) async fn observations_of_impl(
        &self,
        person_id: Uuid,
    ) -> StoreResult<Vec<Observation>> {
        self.query(
            &format!("SELECT {OBS_COLS} FROM observations o WHERE o.person_id = $1 ORDER BY o.start_date DESC, o.created_at DESC"),
            &[&person_id],
        )
        .await?
        .iter()
        .map(obs_row)
        .collect()
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
        self.query(
            &format!(
                "SELECT {OBS_COLS}, p.name, p.category, last.at, last.temperature, last.symptoms, \
                 (SELECT COUNT(*) FROM health_reports h WHERE h.observation_id = o.id AND h.day = $3) \
                 FROM observations o JOIN persons p ON p.id = o.person_id \
                 LEFT JOIN LATERAL (SELECT h.at, h.temperature, h.symptoms FROM health_reports h \
                   WHERE h.observation_id = o.id ORDER BY h.at DESC LIMIT 1) last ON TRUE \
                 WHERE p.area_path >= $1 AND p.area_path < $2 AND p.merged_into IS NULL \
                 AND (o.released_at IS NULL OR o.planned_end >= $4 OR o.released_at >= $5) \
                 AND ($6::uuid IS NULL OR o.grid_worker_id = $6) ORDER BY o.planned_end, o.id"
            ),
            &[&lo, &hi, &today, &ended_since, &released_since, &grid_worker],
        )
        .await?
        .iter()
        .map(|r| {
            let cat: String = r.get(16);
            Ok(ObservationRow {
                observation: obs_row(r)?,
                person_name: r.get(15),
                category: Category::parse(&cat).ok_or_else(|| bad("category", &cat))?,
                last_report_at: r.get(17),
                last_temperature: r.get(18),
                last_symptoms: r.get::<_, Option<i16>>(19).unwrap_or(0) as u8,
                reports_today: r.get(20),
            })
        })
        .collect()
    }

    pub(crate) async fn insert_report_impl(&self, h: &HealthReport) -> StoreResult<()> {
        self.execute(
            "INSERT INTO health_reports (id, observation_id, person_id, day, slot, at, temperature, symptoms, note, by_user) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &h.id,
                &h.observation_id,
                &h.person_id,
                &h.day,
                &i16::from(h.slot),
                &h.at,
                &h.temperature,
                &i16::from(h.symptoms),
                &h.note,
                &h.by_user,
            ],
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn reports_of_impl(&self, person_id: Uuid) -> StoreResult<Vec<HealthReport>> {
        Ok(self
            .query(
                "SELECT id, observation_id, person_id, day, slot, at, temperature, symptoms, note, by_user \
                 FROM health_reports WHERE person_id = $1 ORDER BY at DESC",
                &[&person_id],
            )
            .await?
            .iter()
            .map(report_row)
            .collect())
    }

    pub(crate) async fn insert_lab_impl(&self, l: &LabResult) -> StoreResult<()> {
        self.execute(
            "INSERT INTO lab_results (id, person_id, test, sample_date, result_date, result, entered_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&l.id, &l.person_id, &l.test.as_str(), &l.sample_date, &l.result_date, &l.result.as_str(), &l.entered_by, &l.created_at],
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn lab_of_impl(&self, person_id: Uuid) -> StoreResult<Vec<LabResult>> {
        self.query(
            "SELECT id, person_id, test, sample_date, result_date, result, entered_by, created_at \
             FROM lab_results WHERE person_id = $1 ORDER BY sample_date DESC, created_at DESC",
            &[&person_id],
        )
        .await?
        .iter()
        .map(|r| lab_row(r, 0))
        .collect()
    }

    pub(crate) async fn review_impl(&self, scope: &Scope) -> StoreResult<Vec<(Person, LabResult)>> {
        let (lo, hi) = scope.bounds();
        self.query(
            &format!(
                "SELECT {PERSON_COLS}, l.id, l.person_id, l.test, l.sample_date, l.result_date, l.result, l.entered_by, l.created_at \
                 FROM lab_results l JOIN persons p ON p.id = l.person_id \
                 WHERE l.result = 'positive' AND p.category NOT IN ('confirmed', 'recovered', 'deceased') \
                 AND p.area_path >= $1 AND p.area_path < $2 ORDER BY l.sample_date DESC, l.id"
            ),
            &[&lo, &hi],
        )
        .await?
        .iter()
        .map(|r| Ok((person_row(r)?, lab_row(r, 15)?)))
        .collect()
    }
}

impl PgStore {
    pub(crate) async fn merge_impl(
        &self,
        m: &epigrid_core::person::PersonMerge,
    ) -> StoreResult<()> {
        if m.from_person == m.into_person {
            return Err(StoreError::Invalid(
                "a person cannot be merged into itself".into(),
            ));
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        // Both people are locked, in one order, before either is read: two merges of the same
        // pair in opposite directions take turns, and the second finds the first done (each
        // would otherwise see the other still unmerged and both records would point away).
        tx.execute(
            "SELECT 1 FROM persons WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
            &[&m.from_person, &m.into_person],
        )
        .await
        .map_err(map_err)?;
        let n = tx
            .execute(
                "UPDATE persons SET merged_into = $2 WHERE id = $1 AND merged_into IS NULL \
                 AND EXISTS (SELECT 1 FROM persons t WHERE t.id = $2 AND t.merged_into IS NULL \
                 AND (persons.category = 'none' OR persons.category = t.category))",
                &[&m.from_person, &m.into_person],
            )
            .await
            .map_err(map_err)?;
        if n == 0 {
            return Err(StoreError::Conflict("merge".into()));
        }
        tx.execute(
            "UPDATE persons SET merged_into = $2 WHERE merged_into = $1",
            &[&m.from_person, &m.into_person],
        )
        .await
        .map_err(map_err)?;
        tx.execute(
            "INSERT INTO person_merges (id, from_person, into_person, at, by_user, by_username, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&m.id, &m.from_person, &m.into_person, &m.at, &m.by_user, &m.by_username, &m.reason],
        )
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    pub(crate) async fn undo_merge_impl(
        &self,
        id: Uuid,
        scope: &Scope,
        at: DateTime<Utc>,
    ) -> StoreResult<epigrid_core::person::PersonMerge> {
        let (lo, hi) = scope.bounds();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let r = tx
            .query_opt(
                "SELECT m.id, m.from_person, m.into_person, m.at, m.by_user, m.by_username, m.reason \
                 FROM person_merges m JOIN persons f ON f.id = m.from_person JOIN persons i ON i.id = m.into_person \
                 WHERE m.id = $1 AND m.undone_at IS NULL AND f.area_path >= $2 AND f.area_path < $3 \
                 AND i.area_path >= $2 AND i.area_path < $3 FOR UPDATE OF m",
                &[&id, &lo, &hi],
            )
            .await
            .map_err(map_err)?
            .ok_or(StoreError::NotFound)?;
        let m = epigrid_core::person::PersonMerge {
            id: r.get(0),
            from_person: r.get(1),
            into_person: r.get(2),
            at: r.get(3),
            by_user: r.get(4),
            by_username: r.get(5),
            reason: r.get(6),
            undone_at: Some(at),
        };
        tx.execute(
            "SELECT 1 FROM persons WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
            &[&m.from_person, &m.into_person],
        )
        .await
        .map_err(map_err)?;
        let restored = tx
            .execute(
                "UPDATE persons SET merged_into = NULL WHERE id = $1 AND merged_into = $2",
                &[&m.from_person, &m.into_person],
            )
            .await
            .map_err(map_err)?;
        if restored == 0 {
            // a later merge moved the person on: that one is undone first
            return Err(StoreError::Conflict("merge:later".into()));
        }
        // people merged into this one were moved along with it: they come back
        for sql in epigrid_core::store::merged_back_sql("$1", "$2") {
            tx.execute(&sql, &[&m.from_person, &m.into_person])
                .await
                .map_err(map_err)?;
        }
        // registrations that came in as the merged-away person while the merge stood are
        // theirs again
        tx.execute(
            "UPDATE registrations SET person_id = phone_sealed_for, phone_sealed_for = NULL \
             WHERE person_id = $2 AND phone_sealed_for = $1",
            &[&m.from_person, &m.into_person],
        )
        .await
        .map_err(map_err)?;
        tx.execute(
            "UPDATE person_merges SET undone_at = $2 WHERE id = $1",
            &[&id, &at],
        )
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(m)
    }

    pub(crate) async fn update_person_impl(
        &self,
        id: Uuid,
        name: &str,
        home: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let n = tx
            .execute(
                "UPDATE persons SET name = $2, corrected = true, home_area_code = COALESCE($3, home_area_code), \
                 area_path = COALESCE($4, area_path) WHERE id = $1",
                &[&id, &name, &home.map(|h| h.0), &home.map(|h| h.1)],
            )
            .await
            .map_err(map_err)?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.execute("DELETE FROM person_grams WHERE person_id = $1", &[&id])
            .await
            .map_err(map_err)?;
        insert_grams(&tx, id, name).await?;
        tx.commit().await.map_err(map_err)
    }
}
/// A registration as the tracing engine reads it (following merges to the kept person).
const VISIT_SELECT: &str =
    "SELECT r.id, COALESCE(p.merged_into, r.person_id), r.site_id, r.at, r.left_at, \
    s.default_stay_min, r.plate, r.seq FROM registrations r JOIN sites s ON s.id = r.site_id \
    JOIN persons p ON p.id = r.person_id";

fn visit_row(r: &Row) -> epigrid_core::trace::VisitRow {
    epigrid_core::trace::VisitRow {
        seq: r.get(7),
        registration_id: r.get(0),
        person_id: r.get(1),
        site_id: r.get(2),
        at: r.get(3),
        left_at: r.get(4),
        default_stay_min: r.get(5),
        plate: r.get(6),
    }
}

impl PgStore {
    pub(crate) async fn trace_visits_after_impl(
        &self,
        after: i64,
    ) -> StoreResult<Vec<epigrid_core::trace::VisitRow>> {
        let rows = self
            .query(
                &format!("{VISIT_SELECT} WHERE r.seq > $1 ORDER BY r.seq"),
                &[&after],
            )
            .await?;
        Ok(rows.iter().map(visit_row).collect())
    }

    pub(crate) async fn trace_data_impl(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<epigrid_core::trace::TraceData> {
        use epigrid_core::trace::TraceData;
        let visits = self
            .query(&format!("{VISIT_SELECT} WHERE r.at >= $1"), &[&since])
            .await?
            .iter()
            .map(visit_row)
            .collect();
        let companions = self
            .query(
                "SELECT COALESCE(pr.merged_into, r.person_id), COALESCE(pc.merged_into, c.person_id), r.id, r.at \
                 FROM registration_companions c JOIN registrations r ON r.id = c.registration_id \
                 LEFT JOIN persons pr ON pr.id = r.person_id LEFT JOIN persons pc ON pc.id = c.person_id \
                 WHERE c.person_id IS NOT NULL AND r.at >= $1",
                &[&since],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let households = self
            .query("SELECT id, home_area_code FROM persons WHERE home_area_code IS NOT NULL AND merged_into IS NULL", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let proximity = self
            .query(
                "SELECT COALESCE(pa.merged_into, x.a), COALESCE(pb.merged_into, x.b), x.at, x.duration_s FROM proximity x \
                 LEFT JOIN persons pa ON pa.id = x.a LEFT JOIN persons pb ON pb.id = x.b WHERE x.at >= $1",
                &[&since],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), i64::from(r.get::<_, i32>(3))))
            .collect();
        Ok(TraceData {
            visits,
            companions,
            households,
            proximity,
        })
    }
}

impl PgStore {
    pub(crate) async fn insert_proximity_impl(
        &self,
        rows: Vec<epigrid_core::trace::ProximityRow>,
    ) -> StoreResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let stmt = tx
            .prepare("INSERT INTO proximity (id, a, b, at, duration_s, source) VALUES ($1, $2, $3, $4, $5, $6)")
            .await
            .map_err(map_err)?;
        for r in &rows {
            let d = i32::try_from(r.duration_s).unwrap_or(i32::MAX);
            tx.execute(&stmt, &[&r.id, &r.a, &r.b, &r.at, &d, &r.source])
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(rows.len())
    }

    pub(crate) async fn existing_persons_impl(&self, ids: Vec<Uuid>) -> StoreResult<Vec<Uuid>> {
        Ok(self
            .query("SELECT id FROM persons WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}

impl PgStore {
    pub(crate) async fn classify_many_impl(
        &self,
        changes: &[CategoryChange],
        observations: &[Observation],
    ) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        for ch in changes {
            if !apply_change(&tx, ch).await? {
                return Err(StoreError::Conflict(format!("person:{}", ch.person_id)));
            }
        }
        for o in observations {
            insert_obs(&tx, o).await?;
        }
        tx.commit().await.map_err(map_err)
    }
}

// ---------------------------------------------------------------------------------------------
// Contact-search notices

use epigrid_core::trace::{Notice, NoticeEntry, PendingContact};

const NOTICE_COLS: &str =
    "n.id, n.case_person_id, n.public_token, n.area_path, n.created_by, n.created_at";

fn notice_head(r: &Row) -> Notice {
    Notice {
        id: r.get(0),
        case_person_id: r.get(1),
        public_token: r.get(2),
        area_path: r.get(3),
        created_by: r.get(4),
        created_at: r.get(5),
        entries: Vec::new(),
    }
}

impl PgStore {
    async fn notice_entries(&self, id: Uuid) -> StoreResult<Vec<NoticeEntry>> {
        Ok(self
            .query(
                "SELECT position, site_id, place, area_name, from_at, to_at FROM notice_entries WHERE notice_id = $1 ORDER BY position",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| NoticeEntry { position: r.get(0), site_id: r.get(1), place: r.get(2), area_name: r.get(3), from: r.get(4), to: r.get(5) })
            .collect())
    }

    pub(crate) async fn insert_notice_impl(&self, n: &Notice) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        tx.execute(
            "INSERT INTO notices (id, case_person_id, public_token, area_path, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&n.id, &n.case_person_id, &n.public_token, &n.area_path, &n.created_by, &n.created_at],
        )
        .await
        .map_err(map_err)?;
        let stmt = tx
            .prepare(
                "INSERT INTO notice_entries (notice_id, position, site_id, place, area_name, from_at, to_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(map_err)?;
        for e in &n.entries {
            tx.execute(
                &stmt,
                &[
                    &n.id,
                    &e.position,
                    &e.site_id,
                    &e.place,
                    &e.area_name,
                    &e.from,
                    &e.to,
                ],
            )
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    pub(crate) async fn notice_by_token_impl(&self, token: &str) -> StoreResult<Option<Notice>> {
        let Some(row) = self
            .query_opt(
                &format!("SELECT {NOTICE_COLS} FROM notices n WHERE n.public_token = $1"),
                &[&token],
            )
            .await?
        else {
            return Ok(None);
        };
        let mut n = notice_head(&row);
        n.entries = self.notice_entries(n.id).await?;
        Ok(Some(n))
    }

    pub(crate) async fn notice_impl(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Notice>> {
        let (lo, hi) = scope.bounds();
        let Some(row) = self
            .query_opt(
                &format!(
                    "SELECT {NOTICE_COLS} FROM notices n JOIN persons p ON p.id = n.case_person_id \
                     WHERE n.id = $1 AND p.area_path >= $2 AND p.area_path < $3"
                ),
                &[&id, &lo, &hi],
            )
            .await?
        else {
            return Ok(None);
        };
        let mut n = notice_head(&row);
        n.entries = self.notice_entries(n.id).await?;
        Ok(Some(n))
    }

    pub(crate) async fn insert_pending_impl(
        &self,
        pc: &PendingContact,
        person: &PersonInput,
        area_path: &str,
    ) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let sex = person.sex.map(Sex::as_str);
        let row = tx
            .query_opt(
                crate::write::PENDING_PERSON,
                &[
                    &person.id,
                    &person.doc_type.map(|d| d.as_str()),
                    &person.doc_index,
                    &person.doc_cipher,
                    &person.doc_masked,
                    &person.name,
                    &person.phone_index,
                    &person.phone_cipher,
                    &person.phone_masked,
                    &person.birth_date,
                    &sex,
                    &area_path,
                    &person.provisional,
                    &pc.reported_at,
                    &person.birth_index,
                ],
            )
            .await
            .map_err(map_err)?;
        let pid: Uuid = match row {
            Some(row) => {
                if row.get::<_, bool>(1) {
                    // a new person's name
                    insert_grams(&tx, row.get(0), &person.name).await?;
                }
                row.get(0)
            }
            None => tx
                .query_one(
                    "SELECT COALESCE(merged_into, id) FROM persons WHERE id = $1",
                    &[&person.id],
                )
                .await
                .map_err(map_err)?
                .get(0),
        };
        tx.execute(
            "INSERT INTO pending_contacts (id, notice_id, position, index_person_id, person_id, reported_at, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (notice_id, person_id, position) DO NOTHING",
            &[&pc.id, &pc.notice_id, &pc.position, &pc.index_person_id, &pid, &pc.reported_at, &pc.status],
        )
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    pub(crate) async fn pending_impl(&self, notice_id: Uuid) -> StoreResult<Vec<PendingContact>> {
        Ok(self
            .query(
                "SELECT id, notice_id, position, index_person_id, person_id, reported_at, status FROM pending_contacts \
                 WHERE notice_id = $1 ORDER BY reported_at",
                &[&notice_id],
            )
            .await?
            .iter()
            .map(|r| PendingContact {
                id: r.get(0),
                notice_id: r.get(1),
                position: r.get(2),
                index_person_id: r.get(3),
                person_id: r.get(4),
                reported_at: r.get(5),
                status: r.get(6),
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Contacts kept between traces

use epigrid_core::trace::ContactRecord;

impl PgStore {
    pub(crate) async fn upsert_contacts_impl(
        &self,
        rows: &[ContactRecord],
    ) -> StoreResult<Vec<Uuid>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let stmt = tx
            .prepare(
                "INSERT INTO contacts (index_person_id, contact_person_id, degree, kinds, exposure_s, score, status, first_found_at, last_found_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
                 ON CONFLICT (index_person_id, contact_person_id) DO UPDATE SET \
                 degree = CASE WHEN EXCLUDED.kinds = '' THEN contacts.degree ELSE EXCLUDED.degree END, \
                 kinds = CASE WHEN EXCLUDED.kinds = '' THEN contacts.kinds ELSE EXCLUDED.kinds END, \
                 exposure_s = CASE WHEN EXCLUDED.kinds = '' THEN contacts.exposure_s ELSE EXCLUDED.exposure_s END, \
                 score = CASE WHEN EXCLUDED.kinds = '' THEN contacts.score ELSE EXCLUDED.score END, \
                 last_found_at = EXCLUDED.last_found_at, \
                 status = CASE WHEN EXCLUDED.status = 'confirmed' THEN 'confirmed' ELSE contacts.status END \
                 RETURNING (xmax = 0)",
            )
            .await
            .map_err(map_err)?;
        let mut new = Vec::new();
        // a fixed order keeps concurrent upserts from deadlocking
        let mut rows = rows.to_vec();
        rows.sort_by_key(|r| (r.index_person_id, r.contact_person_id));
        for r in &rows {
            let row = tx
                .query_one(
                    &stmt,
                    &[
                        &r.index_person_id,
                        &r.contact_person_id,
                        &r.degree,
                        &r.kinds,
                        &r.exposure_s,
                        &r.score,
                        &r.status,
                        &r.found_at,
                    ],
                )
                .await
                .map_err(map_err)?;
            if row.get::<_, bool>(0) {
                new.push(r.contact_person_id);
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(new)
    }

    pub(crate) async fn confirmed_contacts_impl(
        &self,
        scope: &Scope,
    ) -> StoreResult<Vec<ContactRecord>> {
        let (lo, hi) = scope.bounds();
        Ok(self
            .query(
                "SELECT k.index_person_id, k.contact_person_id, k.degree, k.kinds, k.exposure_s, k.score, k.status, k.last_found_at \
                 FROM contacts k JOIN persons p ON p.id = k.contact_person_id \
                 WHERE k.status = 'confirmed' AND p.area_path >= $1 AND p.area_path < $2 \
                 ORDER BY k.index_person_id, k.contact_person_id",
                &[&lo, &hi],
            )
            .await?
            .iter()
            .map(|r| ContactRecord {
                index_person_id: r.get(0),
                contact_person_id: r.get(1),
                degree: r.get(2),
                kinds: r.get(3),
                exposure_s: r.get(4),
                score: r.get(5),
                status: r.get(6),
                found_at: r.get(7),
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Lists from other agencies

use epigrid_core::matching::ListMatch;
use epigrid_core::store::ListRecord;

impl PgStore {
    pub(crate) async fn insert_list_impl(
        &self,
        l: &ListRecord,
        errors: &[epigrid_core::store::ListError],
        matches: &[ListMatch],
    ) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        tx.execute(
            "INSERT INTO lists (id, name, uploaded_by, area_path, created_at, rows, bad_rows) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&l.id, &l.name, &l.uploaded_by, &l.area_path, &l.created_at, &l.rows, &l.bad_rows],
        )
        .await
        .map_err(map_err)?;
        // many rows per statement: a million matches are a few hundred round trips
        const BATCH: usize = 5000;
        for (b, part) in errors.chunks(BATCH).enumerate() {
            let n: Vec<i32> = (0..part.len()).map(|i| (b * BATCH + i) as i32).collect();
            let line: Vec<i32> = part.iter().map(|e| e.line as i32).collect();
            let field: Vec<&str> = part.iter().map(|e| e.field.as_str()).collect();
            let key: Vec<&str> = part.iter().map(|e| e.key.as_str()).collect();
            let args: Vec<String> = part.iter().map(|e| e.args_json()).collect();
            tx.execute(
                "INSERT INTO list_errors (list_id, n, line, field, key, args) \
                 SELECT $1, * FROM unnest($2::int[], $3::int[], $4::text[], $5::text[], $6::text[])",
                &[&l.id, &n, &line, &field, &key, &args],
            )
            .await
            .map_err(map_err)?;
        }
        for part in matches.chunks(BATCH) {
            let line: Vec<i32> = part.iter().map(|m| m.line as i32).collect();
            let person: Vec<Uuid> = part.iter().map(|m| m.person_id).collect();
            let method: Vec<&str> = part.iter().map(|m| m.method).collect();
            let confidence: Vec<f64> = part.iter().map(|m| m.confidence).collect();
            let review: Vec<bool> = part.iter().map(|m| m.review).collect();
            tx.execute(
                // a person purged since the list was matched is left out, not a failed upload
                "INSERT INTO list_matches (list_id, line, person_id, method, confidence, review) \
                 SELECT $1, t.* FROM unnest($2::int[], $3::uuid[], $4::text[], $5::float8[], $6::bool[]) \
                   AS t(line, person_id, method, confidence, review) \
                 WHERE EXISTS (SELECT 1 FROM persons p WHERE p.id = t.person_id) \
                 ON CONFLICT DO NOTHING",
                &[&l.id, &line, &person, &method, &confidence, &review],
            )
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    pub(crate) async fn list_errors_impl(
        &self,
        id: Uuid,
        limit: u32,
    ) -> StoreResult<Vec<epigrid_core::store::ListError>> {
        Ok(self
            .query(
                "SELECT line, field, key, args FROM list_errors WHERE list_id = $1 ORDER BY n LIMIT $2",
                &[&id, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| {
                epigrid_core::store::ListError::from_stored(
                    i64::from(r.get::<_, i32>(0)),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                )
            })
            .collect())
    }

    pub(crate) async fn lists_impl(
        &self,
        scope: &Scope,
        limit: u32,
    ) -> StoreResult<Vec<ListRecord>> {
        let (lo, hi) = scope.bounds();
        let rows = self
            .query(
                &format!("SELECT {LIST_COLS} FROM lists WHERE area_path >= $1 AND area_path < $2 ORDER BY created_at DESC LIMIT $3"),
                &[&lo, &hi, &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(list_row).collect())
    }

    pub(crate) async fn match_keys_impl(
        &self,
    ) -> StoreResult<(
        Vec<epigrid_core::matching::KnownPerson>,
        Vec<(String, Uuid)>,
    )> {
        let people = self
            .query(
                "SELECT id, merged_into, name, birth_index, phone_index FROM persons",
                &[],
            )
            .await?
            .iter()
            .map(|r| epigrid_core::matching::KnownPerson {
                id: r.get(0),
                merged_into: r.get(1),
                name: r.get(2),
                birth_index: r.get(3),
                phone_index: r.get(4),
            })
            .collect();
        let plates = self
            .query("SELECT plate, person_id FROM person_plates", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok((people, plates))
    }

    pub(crate) async fn list_matches_impl(
        &self,
        id: Uuid,
        scope: &Scope,
        page: epigrid_core::store::MatchPage,
    ) -> StoreResult<Option<(ListRecord, Vec<(ListMatch, Person)>)>> {
        let (lo, hi) = scope.bounds();
        let Some(r) = self
            .query_opt(
                &format!("SELECT {LIST_COLS} FROM lists WHERE id = $1 AND area_path >= $2 AND area_path < $3"),
                &[&id, &lo, &hi],
            )
            .await?
        else {
            return Ok(None);
        };
        let l = list_row(&r);
        let rows = self
            .query(
                &format!(
                    "SELECT {PERSON_COLS}, m.line, m.method, m.confidence, m.review, m.decision FROM list_matches m \
                     JOIN persons p ON p.id = m.person_id WHERE m.list_id = $1 AND p.area_path >= $2 AND p.area_path < $3 \
                     AND (NOT $4 OR (m.review AND m.decision IS NULL)) \
                     ORDER BY m.line, m.confidence DESC, m.person_id LIMIT $5 OFFSET $6"
                ),
                &[&id, &lo, &hi, &page.review_only, &i64::from(page.limit), &i64::from(page.offset)],
            )
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let person = person_row(r)?;
            out.push((list_match_at(r, 15, person.id), person));
        }
        Ok(Some((l, out)))
    }
}

const LIST_COLS: &str = "id, name, uploaded_by, area_path, created_at, rows, bad_rows";

/// A list match from the columns `line, method, confidence, review, decision` from `at` on.
fn list_match_at(r: &tokio_postgres::Row, at: usize, person_id: Uuid) -> ListMatch {
    ListMatch {
        line: r.get::<_, i32>(at) as usize,
        person_id,
        method: epigrid_core::matching::method_name(r.get(at + 1)),
        confidence: r.get(at + 2),
        review: r.get(at + 3),
        decision: r
            .get::<_, Option<String>>(at + 4)
            .as_deref()
            .and_then(epigrid_core::matching::Decision::parse),
    }
}

fn list_row(r: &tokio_postgres::Row) -> ListRecord {
    ListRecord {
        id: r.get(0),
        name: r.get(1),
        uploaded_by: r.get(2),
        area_path: r.get(3),
        created_at: r.get(4),
        rows: r.get(5),
        bad_rows: r.get(6),
    }
}

/// Indexes a name for search by part of it (see `person::name_grams`), in one statement.
async fn insert_grams(
    tx: &tokio_postgres::Transaction<'_>,
    person_id: Uuid,
    name: &str,
) -> StoreResult<()> {
    let grams: Vec<String> = epigrid_core::person::name_grams(name).into_iter().collect();
    tx.execute(
        "INSERT INTO person_grams (gram, person_id) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
        &[&grams, &person_id],
    )
    .await
    .map_err(map_err)?;
    Ok(())
}
