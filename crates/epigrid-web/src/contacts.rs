//! `POST /api/v1/persons/{id}/trace`: contacts of a person found from the records by the core
//! tracing engine, limited to the caller's scope.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use epigrid_core::area::Scope;
use epigrid_core::person::{Category, TestResult};
use epigrid_core::trace::{Contact, Loaded, TraceParams};
use epigrid_core::validate::FieldError;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::JsonBody;
use crate::auth::Staff;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/persons/{id}/trace", post(trace))
        .route("/api/v1/persons/{id}/contacts", post(confirm_contacts))
        .route("/persons/{id}/trace", axum::routing::get(trace_page))
        .route("/persons/{id}/contacts", post(trace_confirm_page))
}

/// Longest visit the window must look back for (a day covers any default stay).
const LOOKBACK: i64 = 86_400;

/// An optional `from`/`to` field: RFC 3339, or a local date (see [`crate::api::parse_time`]).
pub(crate) fn parse_time(
    st: &AppState,
    field: &str,
    v: &Value,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => crate::api::parse_time(st, field, s).map(Some),
        _ => Err(FieldError::new(field, "err.time.format")),
    }
}

/// Registrations read per page by [`each_registration_page`].
pub(crate) const PAGE: u32 = 1000;

/// Hands what `filter` matches in `scope` to `each`, newest first, a page of [`PAGE`] at a
/// time (not all at once: a courier may check in thousands of times), until the last page or
/// after `max_pages`; whether it got to the last.
pub(crate) async fn each_registration_page(
    st: &AppState,
    scope: &Scope,
    mut filter: epigrid_core::model::RegistrationFilter,
    max_pages: usize,
    mut each: impl FnMut(Vec<epigrid_core::model::Registration>),
) -> ApiResult<bool> {
    filter.limit = PAGE;
    for _ in 0..max_pages {
        let page = st.store.registrations(scope, &filter).await?;
        let more = page.len() == PAGE as usize;
        filter.before_seq = page.last().map(|r| r.seq);
        each(page);
        if !more {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Symptom onset: the first fever or symptom the person reported (at a site or in a daily
/// report) in the 14 days before `before`.
async fn symptom_onset(
    st: &AppState,
    person_id: Uuid,
    before: DateTime<Utc>,
) -> ApiResult<Option<DateTime<Utc>>> {
    let since = before - Duration::days(14);
    // a courier may check in thousands of times in 14 days
    let mut first_at_site: Option<DateTime<Utc>> = None;
    let filter = epigrid_core::model::RegistrationFilter {
        person_id: Some(person_id),
        from: Some(since),
        to: Some(before),
        ..Default::default()
    };
    let complete = each_registration_page(st, &Scope::all(), filter, 100, |page| {
        let symptomatic = page
            .iter()
            .filter(|r| epigrid_core::store::is_fever(&r.fields) || r.fields.symptoms != 0)
            .map(|r| r.at)
            .min();
        first_at_site = first_at_site.into_iter().chain(symptomatic).min();
    })
    .await?;
    if !complete {
        tracing::warn!(
            "symptom onset: over 100,000 registrations in 14 days; the oldest were not read"
        );
    }
    let fever = epigrid_core::validate::Temperature::FEVER.tenths();
    let reports = st.store.reports_of(person_id).await?;
    let in_reports = reports
        .iter()
        .filter(|r| r.temperature.is_some_and(|t| t >= fever) || r.symptoms != 0)
        .map(|r| r.at)
        .filter(|t| *t >= since && *t <= before);
    Ok(first_at_site.into_iter().chain(in_reports).min())
}

/// The default infectious window: from two days before symptom onset or the first positive
/// sample, whichever came first (else before the person became a case or suspect, else 14
/// days ago), until the start of their observation (isolation), else open-ended (visits in
/// progress count until their estimated end).
pub(crate) async fn default_window(
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
    let positive = first_positive.and_then(midnight);
    let onset = symptom_onset(st, person.id, positive.unwrap_or_else(Utc::now)).await?;
    let start = match positive.into_iter().chain(onset).min() {
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
    // An observation isolates from its start day; one recorded during that day from when it
    // was recorded (the person was about until then), and one recorded later (backdated)
    // from the end of that day: a contact on the day isolation began is kept, not lost.
    let isolation = st
        .store
        .observations_of(person.id)
        .await?
        .iter()
        .filter_map(|o| {
            let day_start = midnight(o.start)?;
            let day_end = o.start.succ_opt().and_then(midnight)?;
            Some(day_start.max(o.created_at.min(day_end)))
        })
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
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    staff.require(staff.role().classifies())?;
    let person = crate::persons::person_in_scope(&st, &staff, &id).await?;
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
    let (from, to, contacts) =
        run_trace(&st, &staff, &person, from, to, degree, min_exposure_s).await?;
    Ok(Json(json!({
        "person_id": person.id, "from": from, "to": to, "degree": degree, "contacts": contacts,
        "purged_before": purged_before(&st, from),
    })))
}

/// When a trace window starts before the retention horizon: the time before which the
/// registrations of people nobody had acted on are gone, so contacts from then are missing.
fn purged_before(st: &AppState, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
    st.cfg.retention_horizon().filter(|h| from < *h)
}

/// Runs a trace for `person` (default window where `from`/`to` are None) and returns the
/// contacts in the caller's scope as JSON, highest score first. Audited.
pub(crate) async fn run_trace(
    st: &AppState,
    staff: &Staff,
    person: &epigrid_core::person::Person,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    degree: u8,
    min_exposure_s: i64,
) -> ApiResult<(DateTime<Utc>, DateTime<Utc>, Vec<Value>)> {
    let (dfrom, dto) = default_window(st, person).await?;
    let (from, to) = (from.unwrap_or(dfrom), to.unwrap_or(dto));
    if from >= to {
        return Err(ApiError::field("to", "err.date.before_start"));
    }
    let needed = from - Duration::seconds(LOOKBACK);
    let params = TraceParams {
        from: from.timestamp(),
        to: to.timestamp(),
        degree,
        min_exposure_s,
        ..Default::default()
    };
    // Found contacts as owned data, so the index lock is not held while reading people.
    type Found = (
        Uuid,
        Contact,
        Option<Uuid>,
        Vec<(Option<Uuid>, Option<Uuid>)>,
    );
    let found: Vec<Found> = {
        let mut guard = st.trace_cache.lock().await;
        let version = st.trace_version.load(std::sync::atomic::Ordering::Relaxed);
        let fresh = guard.as_ref().is_some_and(|c| {
            c.version == version
                && c.since <= needed
                && c.loaded_at.elapsed() < crate::state::TRACE_TTL
        });
        if fresh {
            if let Some(c) = guard.as_mut() {
                let newer = st.store.trace_visits_after(c.loaded.read_after()).await?;
                c.loaded.append_visits(&newer);
            }
        } else {
            // load a generous window once, so that the next traces reuse it
            let since = needed.min(Utc::now() - Duration::days(30));
            let data = st.store.trace_data(since).await?;
            *guard = Some(crate::state::TraceCache {
                loaded: Loaded::from_data(data),
                since,
                version,
                loaded_at: std::time::Instant::now(),
            });
        }
        let Some(cache) = guard.as_ref() else {
            return Ok((from, to, Vec::new()));
        };
        let loaded = &cache.loaded;
        match loaded.pid_of.get(&person.id).copied() {
            None => Vec::new(),
            Some(index) => loaded
                .records
                .trace(index, &params)
                .into_iter()
                .filter_map(|c| {
                    let cid = loaded.person_ids.get(c.person as usize).copied()?;
                    let via = c
                        .via
                        .and_then(|v| loaded.person_ids.get(v as usize).copied());
                    let regs = c
                        .evidence
                        .iter()
                        .map(|e| {
                            (
                                loaded.registration(e.index_record),
                                loaded.registration(e.contact_record),
                            )
                        })
                        .collect();
                    Some((cid, c, via, regs))
                })
                .collect(),
        }
    };
    let scope: Scope = staff.scope();
    let mut contacts = Vec::new();
    // what the caller may see, looked up once per trace: the index person's registrations
    // and the links between degrees recur across contacts
    let mut visible = Visible::default();
    for (cid, c, via, regs) in &found {
        // only contacts in the caller's area are returned
        let Some(p) = st.store.person(*cid, &scope).await? else {
            continue;
        };
        // the link between two degrees is named only when the caller may see that person too
        let via = visible.check(st, &scope, Seen::Person, *via).await?;
        // evidence names only registrations the caller may see (the times stay)
        let mut seen_regs = Vec::with_capacity(regs.len());
        for (ir, cr) in regs {
            seen_regs.push((
                visible.check(st, &scope, Seen::Registration, *ir).await?,
                visible.check(st, &scope, Seen::Registration, *cr).await?,
            ));
        }
        contacts.push(json!({
            "person_id": cid,
            "name": crate::view::mask_name(&p.name),
            "category": p.category,
            "area_code": p.area_code(),
            "degree": c.degree,
            "via_person_id": via,
            "kinds": c.kinds,
            "exposure_s": c.exposure_s,
            "score": c.score,
            "evidence": c.evidence.iter().zip(&seen_regs).map(|(e, (ir, cr))| json!({
                "kind": e.kind,
                "index_registration_id": ir,
                "contact_registration_id": cr,
                "from": DateTime::from_timestamp(e.from, 0),
                "to": DateTime::from_timestamp(e.to, 0),
                "exposure_s": e.exposure_s,
            })).collect::<Vec<_>>(),
        }));
    }
    // Keep what was found; a re-run after new data marks what is new.
    let now = Utc::now();
    let records: Vec<epigrid_core::trace::ContactRecord> = contacts
        .iter()
        .filter_map(|c| {
            Some(epigrid_core::trace::ContactRecord {
                index_person_id: person.id,
                contact_person_id: c["person_id"]
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())?,
                degree: c["degree"].as_i64().unwrap_or(1) as i32,
                kinds: c["kinds"]
                    .as_array()
                    .map(|k| {
                        k.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
                exposure_s: c["exposure_s"].as_i64().unwrap_or(0),
                score: c["score"].as_f64().unwrap_or(0.0),
                status: "pending".into(),
                found_at: now,
            })
        })
        .collect();
    // the read is recorded before anything is stored or shown: a trace the audit log cannot
    // hold neither shows its contacts nor uses up their "new" markers
    staff
        .audit_read(
            st,
            "trace",
            &format!("person:{}", person.id),
            &person.area_path,
            &format!("degree={degree} contacts={}", contacts.len()),
        )
        .await?;
    let new: std::collections::HashSet<Uuid> = st
        .store
        .upsert_contacts(&records)
        .await?
        .into_iter()
        .collect();
    for c in &mut contacts {
        let is_new = c["person_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .is_some_and(|id| new.contains(&id));
        c["new"] = json!(is_new);
    }
    Ok((from, to, contacts))
}

/// `POST /api/v1/persons/{id}/contacts`: marks the selected people close contacts of this case
/// in one action — all or none — starting their home observation and assigning each to the
/// grid worker whose area is closest above theirs. Returns each person's report link (shown
/// once) for delivery.
async fn confirm_contacts(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    staff.require(staff.role().investigates())?;
    let index = crate::persons::person_in_scope(&st, &staff, &id).await?;
    let mut errs = Vec::new();
    let ids: Vec<Uuid> = match b.get("person_ids").and_then(Value::as_array) {
        // every id or none: a batch half applied is worse than one refused
        Some(a) if !a.is_empty() && a.len() <= 1000 => a
            .iter()
            .enumerate()
            .filter_map(
                |(i, v)| match v.as_str().and_then(|s| Uuid::parse_str(s.trim()).ok()) {
                    Some(id) => Some(id),
                    None => {
                        errs.push(FieldError::new(format!("person_ids[{i}]"), "err.id.format"));
                        None
                    }
                },
            )
            .collect(),
        _ => {
            errs.push(FieldError::new("person_ids", "err.contacts.list"));
            Vec::new()
        }
    };
    let reason = crate::persons::reason(b.get("reason").and_then(Value::as_str).unwrap_or(""))
        .unwrap_or_else(|e| {
            errs.push(e);
            String::new()
        });
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let base = crate::api::base_url(&st, &headers);
    let (classified, links) = confirm(&st, &staff, &base, &index, &ids, &reason).await?;
    Ok(Json(
        json!({"classified": classified, "observations": links}),
    ))
}

/// Marks `ids` close contacts of `index` (all or none), opening observations; returns how many
/// changed category and the report links of the observations opened.
pub(crate) async fn confirm(
    st: &AppState,
    staff: &Staff,
    base: &str,
    index: &epigrid_core::person::Person,
    ids: &[Uuid],
    reason: &str,
) -> ApiResult<(usize, Vec<Value>)> {
    use epigrid_core::person::{check_transition, CategoryChange, Observation, ObservationKind};
    // here, not only in each handler: the page's form reaches this too
    staff.require(staff.role().investigates())?;
    crate::persons::takes_new_facts(index)?;
    // contacts are marked for someone under investigation: a case, a suspected case, a fever
    // patient, a close contact (their contacts are the second degree), or a former case
    if matches!(index.category, Category::None | Category::RuledOut) {
        return Err(ApiError::Conflict("err.contacts.index_not_case"));
    }
    let scope = staff.scope();
    let mut people = Vec::new();
    // a person chosen twice is marked once (not refused as changed meanwhile)
    let mut chosen = std::collections::HashSet::new();
    for pid in ids.iter().filter(|id| chosen.insert(**id)) {
        let p = st
            .store
            .person(*pid, &scope)
            .await?
            .ok_or_else(|| ApiError::field("person_ids", "err.person.not_found"))?;
        if p.id == index.id {
            return Err(ApiError::field("person_ids", "err.contacts.index"));
        }
        crate::persons::takes_new_facts(&p)?;
        people.push(p);
    }
    let users = st.store.users(&scope).await?;
    let now = Utc::now();
    let today = now.with_timezone(&st.cfg.tz).date_naive();
    let mut changes = Vec::new();
    let mut observations = Vec::new();
    let mut links = Vec::new();
    for (i, p) in people.iter().enumerate() {
        if p.category != Category::CloseContact {
            // named, so that one person among hundreds chosen can be taken off the list
            check_transition(p.category, Category::CloseContact).map_err(|k| {
                ApiError::ConflictAt(FieldError::new(format!("person_ids[{i}]"), k))
            })?;
            changes.push(CategoryChange {
                id: epigrid_core::vault::new_id(),
                person_id: p.id,
                from: p.category,
                to: Category::CloseContact,
                at: now,
                by_user: Some(staff.user.id),
                by_username: staff.user.username.clone(),
                reason: format!("{reason} (person:{})", index.id),
            });
        }
        if !crate::persons::under_observation(st, p.id).await? {
            let token = epigrid_core::vault::random_token(16);
            let days = st.cfg.observation_days(Category::CloseContact);
            let worker = crate::persons::closest_grid_worker(&users, &p.area_path);
            observations.push(Observation {
                id: epigrid_core::vault::new_id(),
                person_id: p.id,
                kind: ObservationKind::Home,
                site_id: None,
                start: today,
                planned_end: today + Duration::days(i64::from(days) - 1),
                released_at: None,
                release_reason: None,
                grid_worker_id: worker.map(|u| u.id),
                token_hash: epigrid_core::vault::token_hash(&token),
                token_revoked: false,
                reports_per_day: 1,
                area_path: p.area_path.clone(),
                created_at: now,
                created_by: Some(staff.user.id),
            });
            links.push(json!({"person_id": p.id, "grid_worker_id": worker.map(|u| u.id), "report_url": format!("{}/r/{token}", base.trim_end_matches('/'))}));
        }
    }
    let now = Utc::now();
    let edges: Vec<epigrid_core::trace::ContactRecord> = people
        .iter()
        .map(|p| epigrid_core::trace::ContactRecord {
            index_person_id: index.id,
            contact_person_id: p.id,
            degree: 1,
            kinds: String::new(),
            exposure_s: 0,
            score: 0.0,
            status: "confirmed".into(),
            found_at: now,
        })
        .collect();
    match st.store.classify_many(&changes, &observations).await {
        Err(epigrid_core::store::StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict("err.category.changed_meanwhile"))
        }
        r => r?,
    }
    staff
        .audit(
            st,
            "contacts.confirm",
            &format!("person:{}", index.id),
            &index.area_path,
            &format!(
                "classified={} observations={}",
                changes.len(),
                observations.len()
            ),
        )
        .await;
    st.store.upsert_contacts(&edges).await?;
    Ok((changes.len(), links))
}

// ---------------------------------------------------------------------------------------------
// The trace page: review the contacts found, mark the selected ones close contacts.

use askama::Template;
use axum::body::Bytes;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use epigrid_core::i18n::Lang;

struct TraceRow {
    person_id: String,
    name: String,
    category: Category,
    degree: u64,
    kinds: String,
    minutes: i64,
    score: String,
}

#[derive(Template)]
#[template(path = "trace.html")]
struct TracePage {
    c: crate::staff::Chrome,
    person_id: String,
    name: String,
    from: String,
    to: String,
    degree: u8,
    rows: Vec<TraceRow>,
    error: String,
    links: Vec<(String, String)>,
    /// the local time before which registrations were purged, when the window starts earlier
    purged_before: String,
}

fn rows_of(contacts: &[Value], lang: Lang) -> Vec<TraceRow> {
    contacts
        .iter()
        .map(|c| TraceRow {
            person_id: c["person_id"].as_str().unwrap_or("").to_string(),
            name: c["name"].as_str().unwrap_or("").to_string(),
            category: c["category"]
                .as_str()
                .and_then(Category::parse)
                .unwrap_or(Category::None),
            degree: c["degree"].as_u64().unwrap_or(1),
            kinds: c["kinds"]
                .as_array()
                .map(|k| {
                    k.iter()
                        .filter_map(Value::as_str)
                        .map(|k| epigrid_core::i18n::t(lang, &format!("contact.kind.{k}")))
                        .collect::<Vec<_>>()
                        .join(crate::view::list_separator(lang))
                })
                .unwrap_or_default(),
            minutes: c["exposure_s"].as_i64().unwrap_or(0) / 60,
            score: format!("{:.2}", c["score"].as_f64().unwrap_or(0.0)),
        })
        .collect()
}

/// The person a trace page is about, or the page's "not found".
async fn page_person(
    st: &AppState,
    s: &Staff,
    id: &str,
) -> Result<epigrid_core::person::Person, Box<Response>> {
    match Uuid::parse_str(id).ok() {
        Some(pid) => match st.store.person(pid, &s.scope()).await {
            Ok(Some(p)) => Ok(p),
            _ => Err(Box::new(ApiError::NotFound.into_response())),
        },
        None => Err(Box::new(ApiError::NotFound.into_response())),
    }
}

async fn trace_view(
    st: &AppState,
    s: &Staff,
    lang: Lang,
    id: &str,
    degree: u8,
    error: String,
    links: Vec<(String, String)>,
) -> Response {
    let person = match page_person(st, s, id).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let (from, to, contacts) = match run_trace(st, s, &person, None, None, degree, 0).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let page = TracePage {
        c: crate::staff::chrome(st, s, lang).await,
        person_id: person.id.to_string(),
        name: crate::view::mask_name(&person.name),
        from: crate::view::local(from, st.cfg.tz),
        to: crate::view::local(to, st.cfg.tz),
        degree,
        rows: rows_of(&contacts, lang),
        error,
        links,
        purged_before: purged_before(st, from)
            .map(|t| crate::view::local(t, st.cfg.tz))
            .unwrap_or_default(),
    };
    crate::view::html(StatusCode::OK, page)
}

async fn trace_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: crate::auth::MaybeStaff,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let s = match crate::staff::logged_in_as(staff, lang, epigrid_core::model::Role::classifies) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let degree = if q.get("degree").is_some_and(|d| d == "2") {
        2
    } else {
        1
    };
    trace_view(&st, &s, lang, &id, degree, String::new(), Vec::new()).await
}

async fn trace_confirm_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: crate::auth::MaybeStaff,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    // the trace page itself is only for those who investigate: refused before it is drawn
    let (s, pairs) = match crate::staff::posted_form(
        staff,
        &body,
        lang,
        epigrid_core::model::Role::investigates,
    ) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let get = |k: &str| crate::public::form_value(&pairs, k).unwrap_or_default();
    // every id or none, as the API takes them: one that is not an id refuses the batch
    let ids: Result<Vec<Uuid>, ()> = pairs
        .iter()
        .filter(|(k, _)| k == "person_ids")
        .map(|(_, v)| Uuid::parse_str(v.trim()).map_err(drop))
        .collect();
    let index = match page_person(&st, &s, &id).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let reason = crate::persons::reason(&get("reason"));
    let result = match (ids, reason) {
        (Err(()), _) => Err(ApiError::field("person_ids", "err.id.format")),
        (Ok(ids), _) if ids.is_empty() || ids.len() > 1000 => {
            Err(ApiError::field("person_ids", "err.contacts.list"))
        }
        (Ok(_), Err(e)) => Err(ApiError::Invalid(vec![e])),
        (Ok(ids), Ok(reason)) => {
            confirm(
                &st,
                &s,
                &crate::api::base_url(&st, &headers),
                &index,
                &ids,
                &reason,
            )
            .await
        }
    };
    match result {
        Ok((_, links)) => {
            let links = links
                .iter()
                .map(|l| {
                    (
                        l["person_id"].as_str().unwrap_or("").to_string(),
                        l["report_url"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            trace_view(&st, &s, lang, &id, 1, String::new(), links).await
        }
        Err(e) => {
            let msg = e.messages(lang).join(" ");
            let mut r = trace_view(&st, &s, lang, &id, 1, msg, Vec::new()).await;
            *r.status_mut() = e.status();
            r
        }
    }
}

/// Which people and registrations the caller of a trace may see, each looked up once.
#[derive(Default)]
struct Visible(std::collections::HashMap<(Seen, Uuid), bool>);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Seen {
    Person,
    Registration,
}

impl Visible {
    /// `id` if the caller (of `scope`) may see that person or registration.
    async fn check(
        &mut self,
        st: &AppState,
        scope: &Scope,
        what: Seen,
        id: Option<Uuid>,
    ) -> ApiResult<Option<Uuid>> {
        let Some(id) = id else { return Ok(None) };
        let seen = match self.0.get(&(what, id)) {
            Some(seen) => *seen,
            None => {
                let seen = match what {
                    Seen::Person => st.store.person(id, scope).await?.is_some(),
                    Seen::Registration => st.store.registration(id, scope).await?.is_some(),
                };
                self.0.insert((what, id), seen);
                seen
            }
        };
        Ok(seen.then_some(id))
    }
}
