//! `POST /api/v1/persons/{id}/trace`: contacts of a person found from the records by the core
//! tracing engine, limited to the caller's scope.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use epigrid_core::area::Scope;
use epigrid_core::person::{Category, TestResult};
use epigrid_core::trace::{Loaded, TraceParams};
use epigrid_core::validate::FieldError;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::JsonBody;
use crate::auth::Staff;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/persons/{id}/trace", post(trace))
}

/// Longest visit the window must look back for (a day covers any default stay).
const LOOKBACK: i64 = 86_400;

fn parse_time(st: &AppState, field: &str, v: &Value) -> Result<Option<DateTime<Utc>>, FieldError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Ok(Some(t.with_timezone(&Utc)));
            }
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .and_then(|dt| st.cfg.tz.from_local_datetime(&dt).single())
                .map(|t| Some(t.with_timezone(&Utc)))
                .ok_or_else(|| FieldError::new(field, "err.date.format"))
        }
        _ => Err(FieldError::new(field, "err.date.format")),
    }
}

/// The default infectious window: from two days before the first positive sample (else
/// before the person became a case or suspect, else 14 days ago) until the start of their
/// observation (isolation), else open-ended (visits in progress count until their estimated end).
async fn default_window(
    st: &AppState,
    person: &epigrid_core::person::Person,
) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
    let labs = st.store.lab_results_of(person.id).await?;
    let first_positive = labs
        .iter()
        .filter(|l| l.result == TestResult::Positive)
        .map(|l| l.sample_date)
        .min();
    let midnight = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .and_then(|dt| st.cfg.tz.from_local_datetime(&dt).single())
            .map(|t| t.with_timezone(&Utc))
    };
    let start = match first_positive.and_then(midnight) {
        Some(t) => t - Duration::days(2),
        None => match person.category_since.filter(|_| {
            matches!(
                person.category,
                Category::Confirmed | Category::Suspected | Category::Fever
            )
        }) {
            Some(t) => t - Duration::days(2),
            None => Utc::now() - Duration::days(14),
        },
    };
    let isolation = st
        .store
        .observations_of(person.id)
        .await?
        .iter()
        .filter_map(|o| midnight(o.start))
        .filter(|t| *t > start)
        .min();
    Ok((
        start,
        isolation.unwrap_or_else(|| Utc::now() + Duration::seconds(LOOKBACK)),
    ))
}

async fn trace(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf(headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))?;
    staff.require(matches!(
        staff.role(),
        epigrid_core::model::Role::Admin
            | epigrid_core::model::Role::Epidemiologist
            | epigrid_core::model::Role::Manager
    ))?;
    let pid = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let person = st
        .store
        .person(pid, &staff.scope())
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut errs = Vec::new();
    let from = parse_time(&st, "from", b.get("from").unwrap_or(&Value::Null)).unwrap_or_else(|e| {
        errs.push(e);
        None
    });
    let to = parse_time(&st, "to", b.get("to").unwrap_or(&Value::Null)).unwrap_or_else(|e| {
        errs.push(e);
        None
    });
    let degree = match b.get("degree") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(d @ 1..=2) => d as u8,
            _ => {
                errs.push(
                    FieldError::new("degree", "err.int.range")
                        .with("min", "1")
                        .with("max", "2"),
                );
                1
            }
        },
    };
    let min_exposure_s = match b.get("min_exposure_s") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_i64().filter(|n| (0..=86_400 * 30).contains(n)) {
            Some(n) => n,
            None => {
                errs.push(
                    FieldError::new("min_exposure_s", "err.int.range")
                        .with("min", "0")
                        .with("max", "2592000"),
                );
                0
            }
        },
    };
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let (dfrom, dto) = default_window(&st, &person).await?;
    let (from, to) = (from.unwrap_or(dfrom), to.unwrap_or(dto));
    if from >= to {
        return Err(ApiError::field("to", "err.date.before_start"));
    }
    let data = st
        .store
        .trace_data(from - Duration::seconds(LOOKBACK))
        .await?;
    let loaded = Loaded::from_data(data);
    let Some(index) = loaded.pid_of.get(&person.id).copied() else {
        return Ok(Json(json!({"from": from, "to": to, "contacts": []})));
    };
    let params = TraceParams {
        from: from.timestamp(),
        to: to.timestamp(),
        degree,
        min_exposure_s,
        ..Default::default()
    };
    let found = loaded.records.trace(index, &params);
    let scope: Scope = staff.scope();
    let mut contacts = Vec::new();
    for c in &found {
        let Some(cid) = loaded.person_ids.get(c.person as usize).copied() else {
            continue;
        };
        // only contacts in the caller's area are returned
        let Some(p) = st.store.person(cid, &scope).await? else {
            continue;
        };
        contacts.push(json!({
            "person_id": cid,
            "name": crate::view::mask_name(&p.name),
            "category": p.category,
            "area_code": p.area_code(),
            "degree": c.degree,
            "via_person_id": c.via.and_then(|v| loaded.person_ids.get(v as usize).copied()),
            "kinds": c.kinds,
            "exposure_s": c.exposure_s,
            "score": c.score,
            "evidence": c.evidence.iter().map(|e| json!({
                "kind": e.kind,
                "index_registration_id": loaded.registration(e.index_record),
                "contact_registration_id": loaded.registration(e.contact_record),
                "from": DateTime::from_timestamp(e.from, 0),
                "to": DateTime::from_timestamp(e.to, 0),
                "exposure_s": e.exposure_s,
            })).collect::<Vec<_>>(),
        }));
    }
    staff
        .audit(
            &st,
            "trace",
            &format!("person:{}", person.id),
            &person.area_path,
            &format!("degree={degree} contacts={}", contacts.len()),
        )
        .await;
    Ok(Json(
        json!({"person_id": person.id, "from": from, "to": to, "degree": degree, "contacts": contacts}),
    ))
}
