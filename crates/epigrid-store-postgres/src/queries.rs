//! The `Store` implementation: SQL for each operation.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use epigrid_core::area::{Area, Scope};
use epigrid_core::model::*;
use epigrid_core::store::{path_leaf, registration_metrics, Store, StoreError, StoreResult};
use epigrid_core::validate::DocType;

use crate::{map_err, PgStore};

const AREA_COLS: &str = "code, name, level, parent_code, path";
const SITE_COLS: &str = "id, token, kind, name, area_code, area_path, active, default_stay_min, created_at";
const USER_COLS: &str = "id, username, password_hash, role, area_code, area_path, active, created_at";
const REG_SELECT: &str = "SELECT r.id, r.seq, r.site_id, s.name, r.kind, s.area_code, r.area_path, r.at, \
    r.person_id, p.name, p.doc_type, p.doc_masked, p.phone_masked, p.provisional, r.channel, r.by_user, \
    r.verification_code, r.left_at, r.temperature, r.symptoms, r.high_risk_travel, r.plate, r.companions, \
    r.origin_code, r.destination, r.direction, r.visitor, r.unit_code, r.visit_reason, r.arrival_date, \
    r.residence_code, r.address, r.employer, r.stay_days, r.purpose \
    FROM registrations r JOIN sites s ON s.id = r.site_id JOIN persons p ON p.id = r.person_id";

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

    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Option<Row>> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
        c.query_opt(&stmt, params).await.map_err(map_err)
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
                .execute(&stmt, &[&a.code, &a.name, &i16::from(a.level), &a.parent_code, &a.path])
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(changed as usize)
    }

    async fn area(&self, code: &str) -> StoreResult<Option<Area>> {
        Ok(self
            .query_opt(&format!("SELECT {AREA_COLS} FROM areas WHERE code = $1"), &[&code])
            .await?
            .map(|r| area_row(&r)))
    }

    async fn area_children(&self, parent: Option<&str>) -> StoreResult<Vec<Area>> {
        let rows = match parent {
            Some(p) => {
                self.query(&format!("SELECT {AREA_COLS} FROM areas WHERE parent_code = $1 ORDER BY code"), &[&p])
                    .await?
            }
            None => {
                self.query(&format!("SELECT {AREA_COLS} FROM areas WHERE parent_code IS NULL ORDER BY code"), &[])
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

    async fn update_site(&self, s: &Site) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE sites SET name = $2, token = $3, active = $4, default_stay_min = $5 WHERE id = $1",
                &[&s.id, &s.name, &s.token, &s.active, &s.default_stay_min],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
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
        self.query_opt(&format!("SELECT {SITE_COLS} FROM sites WHERE token = $1"), &[&token])
            .await?
            .map(|r| site_row(&r))
            .transpose()
    }

    async fn sites(&self, scope: &Scope) -> StoreResult<Vec<Site>> {
        let (lo, hi) = scope.bounds();
        self.query(
            &format!("SELECT {SITE_COLS} FROM sites WHERE area_path >= $1 AND area_path < $2 ORDER BY area_path, name"),
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
            crate::write::insert_batch(&tx, chunk).await?;
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

    async fn registrations(&self, scope: &Scope, f: &RegistrationFilter) -> StoreResult<Vec<Registration>> {
        let (lo, hi) = scope.bounds();
        let mut sql = format!("{REG_SELECT} WHERE r.area_path >= $1 AND r.area_path < $2");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(lo), Box::new(hi)];
        let mut add = |cond: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ${}", args.len()));
        };
        if let Some(s) = f.site_id {
            add("r.site_id =", Box::new(s));
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
            add("r.person_id =", Box::new(p));
        }
        if let Some(s) = f.after_seq {
            add("r.seq >", Box::new(s));
        }
        if let Some(s) = f.before_seq {
            add("r.seq <", Box::new(s));
        }
        let order = if f.after_seq.is_some() { "ASC" } else { "DESC" };
        sql.push_str(&format!(" ORDER BY r.seq {order} LIMIT {}", f.limit.clamp(1, 5000)));
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect();
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
        Ok(self.query("SELECT COUNT(*) FROM registrations", &[]).await?[0].get(0))
    }

    async fn person_secrets(&self, person_id: Uuid, scope: &Scope) -> StoreResult<Option<PersonSecrets>> {
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
        let mut counts: std::collections::BTreeMap<(String, NaiveDate, &'static str), i64> = Default::default();
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
                *counts.entry((path_leaf(&path).to_string(), r.get(1), m)).or_default() += 1;
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
            .query("SELECT area_code, day, metric, value FROM rollups ORDER BY area_code, day, metric", &[])
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
        self.execute(
            &format!("INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
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
        .map(|_| ())
    }

    async fn update_user(&self, u: &User) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE users SET password_hash = $2, role = $3, area_code = $4, area_path = $5, active = $6 WHERE id = $1",
                &[&u.id, &u.password_hash, &u.role.as_str(), &u.area_code, &u.area_path, &u.active],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.query_opt(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"), &[&id])
            .await?
            .map(|r| user_row_at(&r, 0))
            .transpose()
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        self.query_opt(&format!("SELECT {USER_COLS} FROM users WHERE username = $1"), &[&username])
            .await?
            .map(|r| user_row_at(&r, 0))
            .transpose()
    }

    async fn users(&self, scope: &Scope) -> StoreResult<Vec<User>> {
        let (lo, hi) = scope.bounds();
        self.query(
            &format!("SELECT {USER_COLS} FROM users WHERE area_path >= $1 AND area_path < $2 ORDER BY username"),
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

    async fn session(&self, token_hash: &[u8], now: DateTime<Utc>) -> StoreResult<Option<(Session, User)>> {
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

    async fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now]).await
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

    async fn audit_log(&self, scope: &Scope, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let (lo, hi) = scope.bounds();
        let limit = i64::from(limit.clamp(1, 10_000));
        Ok(self
            .query(
                "SELECT id, at, user_id, username, action, subject, area_path, ip, detail FROM audit_log \
                 WHERE area_path >= $1 AND area_path < $2 ORDER BY seq DESC LIMIT $3",
                &[&lo, &hi, &limit],
            )
            .await?
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: r.get(1),
                user_id: r.get(2),
                username: r.get(3),
                action: r.get(4),
                subject: r.get(5),
                area_path: r.get(6),
                ip: r.get(7),
                detail: r.get(8),
            })
            .collect())
    }
}
