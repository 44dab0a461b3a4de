//! People under management: search, the person page, categories with history, medical
//! observation with personal daily-report links, lab results, line lists and exports.

use std::collections::HashMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{Duration, NaiveDate, Utc};
use epigrid_core::area::Scope;
use epigrid_core::i18n::Lang;
use epigrid_core::model::{RegistrationFilter, Role};
use epigrid_core::person::*;
use epigrid_core::validate::{
    DocType, Document, FieldError, IdNumber, MobilePhone, Plate, Symptoms, Temperature,
};
use epigrid_core::vault::{new_id, random_token, token_hash};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::{base_url, JsonBody};
use crate::auth::{MaybeStaff, Staff};
use crate::error::{ApiError, ApiResult};
use crate::public::{message, url_decode_pairs, Tr};
use crate::state::AppState;
use crate::view::{local, mask_name, registration_json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/persons", get(search))
        .route(
            "/api/v1/persons/{id}",
            get(person_detail).patch(correct_person),
        )
        .route("/api/v1/persons/{id}/merge", post(merge_person))
        .route("/api/v1/merges/{id}/undo", post(undo_merge))
        .route("/api/v1/persons/{id}/category", post(change_category))
        .route("/api/v1/persons/{id}/observations", post(start_observation))
        .route("/api/v1/persons/{id}/reports", post(report_on_behalf))
        .route("/api/v1/persons/{id}/lab-results", post(add_lab_result))
        .route("/api/v1/observations", get(line_list))
        .route("/api/v1/observations/export.csv", get(export_csv))
        .route("/api/v1/observations/export.xlsx", get(export_xlsx))
        .route(
            "/api/v1/observations/{id}",
            axum::routing::patch(update_observation),
        )
        .route("/api/v1/review", get(review))
        .route("/api/v1/category-counts", get(category_counts))
        .route("/api/v1/reports/{token}", post(report_json))
        .route("/r/{token}", get(report_page).post(report_form))
        .route("/persons", get(persons_page).post(persons_search))
        .route("/persons/{id}", get(person_page))
        .route("/persons/{id}/category", post(person_page_category))
        .route("/persons/{id}/observe", post(person_page_observe))
        .route("/observations", get(observations_page))
}

/// Decides what a search string is: a document, a phone, a plate or (part of) a name.
pub fn interpret_query(st: &AppState, q: &str) -> Result<PersonQuery, ApiError> {
    let q = q.trim();
    if q.is_empty() {
        return Err(ApiError::field("q", "err.search.empty"));
    }
    if q.chars().count() > 40 {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "q",
            "err.text.too_long",
        )
        .with("max", "40")]));
    }
    if let Ok(id) = IdNumber::parse("q", q) {
        let doc = Document::parse("q", DocType::CnId, id.as_str())
            .map_err(|e| ApiError::Invalid(vec![e]))?;
        return Ok(PersonQuery::Document {
            index: st
                .vault
                .blind_index(DocType::CnId.index_purpose(), doc.number()),
            doc_type: DocType::CnId,
        });
    }
    if let Ok(p) = MobilePhone::parse("q", q) {
        return Ok(PersonQuery::Phone(
            st.vault.blind_index("phone", p.as_str()),
        ));
    }
    if let Ok(p) = Plate::parse("q", q) {
        return Ok(PersonQuery::Plate(p.as_str().to_string()));
    }
    let ascii_doc =
        q.chars().all(|c| c.is_ascii_alphanumeric()) && q.chars().any(|c| c.is_ascii_digit());
    if ascii_doc {
        if let Ok(d) = Document::parse("q", DocType::Passport, q) {
            return Ok(PersonQuery::Document {
                index: st
                    .vault
                    .blind_index(DocType::Passport.index_purpose(), d.number()),
                doc_type: DocType::Passport,
            });
        }
    }
    if q.chars().any(|c| c.is_ascii_digit()) {
        return Err(ApiError::field("q", "err.search.number"));
    }
    // as names are stored: `热依拉．艾山` finds 热依拉·艾山
    let name: String = epigrid_core::validate::normalise_name(q)
        .into_iter()
        .collect();
    Ok(PersonQuery::Name(name))
}

/// People in the caller's area that a search finds. An exact lookup by ID or phone number
/// tells whether that number is someone's, so it could unmask a masked number by trying its
/// hidden digits: each is audited (how, and how many were found, never the number), and a
/// user may make at most `LOOKUPS_PER_WINDOW` of them in fifteen minutes.
pub(crate) async fn search_people(
    st: &AppState,
    staff: &Staff,
    query: &PersonQuery,
) -> ApiResult<Vec<Person>> {
    let exact = match query {
        PersonQuery::Document { .. } => Some("id_number"),
        PersonQuery::Phone(_) => Some("phone"),
        _ => None,
    };
    if exact.is_some() && !st.allow_lookup(staff.user.id) {
        return Err(ApiError::TooMany);
    }
    // the lookups the log holds: every server's on a shared database, and those before a
    // restart (the count in memory is this process's since it started)
    if exact.is_some() {
        let window = chrono::Duration::from_std(crate::state::LOOKUP_WINDOW).unwrap_or_default();
        let logged = st
            .store
            .audit_log(
                &Scope::all(),
                &epigrid_core::model::AuditFilter {
                    username: Some(staff.user.username.clone()),
                    action: Some("person.lookup".into()),
                    from: Some(Utc::now() - window),
                    limit: crate::state::LOOKUPS_PER_WINDOW as u32,
                    unplaced: true,
                    ..Default::default()
                },
            )
            .await?;
        if logged.len() >= crate::state::LOOKUPS_PER_WINDOW {
            return Err(ApiError::TooMany);
        }
    }
    let people = st.store.search_persons(&staff.scope(), query, 50).await?;
    if let Some(how) = exact {
        let (subject, area) = match people.first() {
            Some(p) => (format!("person:{}", p.id), p.area_path.clone()),
            None => ("search".to_string(), staff.user.area_path.clone()),
        };
        let detail = format!("by {how}, {} found", people.len());
        staff
            .audit_read(st, "person.lookup", &subject, &area, &detail)
            .await?;
    }
    Ok(people)
}

pub(crate) fn person_json(p: &Person) -> Value {
    json!({
        "id": p.id,
        "name": mask_name(&p.name),
        "category": p.category,
        "category_since": p.category_since,
        "area_code": p.area_code(),
        "id_type": p.doc_type,
        "id_number": p.doc_masked,
        "phone": p.phone_masked,
        "birth_date": p.birth_date.map(|d| d.format("%Y").to_string()),
        "sex": p.sex,
        "provisional": p.provisional,
        "merged_into": p.merged_into,
        "home_area_code": p.home_area_code,
        "last_seen_at": p.last_seen_at,
    })
}

async fn search(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    staff.require(staff.role().sees_people())?;
    let query = interpret_query(&st, q.get("q").map(String::as_str).unwrap_or(""))?;
    let people = search_people(&st, &staff, &query).await?;
    Ok(Json(
        json!({"items": people.iter().map(person_json).collect::<Vec<_>>()}),
    ))
}

pub(crate) async fn person_in_scope(st: &AppState, staff: &Staff, id: &str) -> ApiResult<Person> {
    staff.require(staff.role().sees_people())?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    st.store
        .person(id, &staff.scope())
        .await?
        .ok_or(ApiError::NotFound)
}

/// Whether the person has an observation open today.
pub(crate) async fn under_observation(st: &AppState, person: Uuid) -> ApiResult<bool> {
    let t = today(st);
    Ok(st
        .store
        .observations_of(person)
        .await?
        .iter()
        .any(|o| o.is_open(t)))
}

/// A record merged into another keeps its history but takes no new facts: a category, an
/// observation, a lab result or a notice on it would be counted nowhere (counts and lists
/// follow the kept record). `err.person.merged` (409) names the way to the kept one.
pub(crate) fn takes_new_facts(p: &Person) -> ApiResult<()> {
    match p.merged_into {
        Some(_) => Err(ApiError::Conflict("err.person.merged")),
        None => Ok(()),
    }
}

fn report_url(st: &AppState, headers: &HeaderMap, token: &str) -> String {
    format!("{}/r/{token}", base_url(st, headers))
}

fn observation_json(o: &Observation, today: NaiveDate) -> Value {
    json!({
        "id": o.id, "person_id": o.person_id, "kind": o.kind, "site_id": o.site_id,
        "start": o.start, "planned_end": o.planned_end, "released_at": o.released_at,
        "release_reason": o.release_reason, "grid_worker_id": o.grid_worker_id,
        "link_revoked": o.token_revoked, "reports_per_day": o.reports_per_day,
        "active": o.is_active(today),
    })
}

fn today(st: &AppState) -> NaiveDate {
    Utc::now().with_timezone(&st.cfg.tz).date_naive()
}

/// Corrects a person's details: `{"name"?, "home_area_code"?}` (audited).
async fn correct_person(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    staff.require(staff.role().follows_up())?;
    let p = person_in_scope(&st, &staff, &id).await?;
    let mut errs = Vec::new();
    let name = match b.get("name") {
        None => Some(p.name.clone()),
        Some(v) => {
            match epigrid_core::validate::PersonName::parse("name", v.as_str().unwrap_or("")) {
                Ok(n) => Some(n.as_str().to_string()),
                Err(e) => {
                    errs.push(e);
                    None
                }
            }
        }
    };
    let home = match b.get("home_area_code") {
        None | Some(Value::Null) => None,
        Some(v) if !v.is_string() => {
            errs.push(FieldError::new("home_area_code", "err.text.format"));
            None
        }
        Some(v) => match st.store.area(v.as_str().unwrap_or("").trim()).await? {
            Some(a) if staff.scope().contains(&a.path) => Some(a),
            _ => {
                errs.push(FieldError::new("home_area_code", "err.area.not_in_scope"));
                None
            }
        },
    };
    // a document or phone number is not corrected here (it is who the person is: a merge
    // joins two records), and a key nobody reads is a mistake, not a no-op
    for k in b.as_object().into_iter().flatten().map(|(k, _)| k) {
        if ["name", "home_area_code"].contains(&k.as_str()) {
            continue;
        }
        let identity = ["id_type", "id_number", "phone", "doc_type", "document"];
        errs.push(FieldError::new(
            k,
            if identity.contains(&k.as_str()) {
                "err.field.unchangeable_person"
            } else {
                "err.field.unknown_person"
            },
        ));
    }
    // nothing to correct is refused, not recorded as a correction: a corrected person is
    // pinned (registrations no longer move them) and kept past the retention period
    if errs.is_empty() && b.get("name").is_none() && home.is_none() {
        errs.push(FieldError::new("", "err.field.nothing_to_change"));
    }
    let Some(name) = name.filter(|_| errs.is_empty()) else {
        return Err(ApiError::Invalid(errs));
    };
    st.store
        .update_person(
            p.id,
            &name,
            home.as_ref().map(|a| (a.code.as_str(), a.path.as_str())),
        )
        .await?;
    // stored: recorded as such whatever happens to the observations after
    st.trace_changed();
    staff
        .audit(
            &st,
            "person.correct",
            &format!("person:{}", p.id),
            &p.area_path,
            if home.is_some() { "name,home" } else { "name" },
        )
        .await;
    if let Some(a) = &home {
        reroute_observations(&st, p.id, &a.path).await?;
    }
    let p = st
        .store
        .person(p.id, &Scope::all())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(person_json(&p)))
}

/// A person whose home moved to `area_path` is followed there: each open observation whose
/// grid worker does not cover that area goes to the active grid worker closest to it (as a
/// marked contact's does), or to nobody named (its area's managers see it), rather than stay
/// with a worker whose line list no longer shows the person.
async fn reroute_observations(st: &AppState, person: Uuid, area_path: &str) -> ApiResult<()> {
    let t = today(st);
    let users = st.store.users(&Scope::all()).await?;
    let closest = closest_grid_worker(&users, area_path).map(|u| u.id);
    let (_, failed) = change_observations(st, person, |before| {
        let mut after = before.clone();
        // every observation belongs where the person now does (the audit of an unmasked
        // export of it goes to that area's admins, not the old one's)
        after.area_path = area_path.to_string();
        // an open one goes to a worker there, unless its own still covers the new home
        let keeps = before
            .grid_worker_id
            .is_some_and(|w| users.iter().any(|u| u.id == w && covers(u, area_path)));
        if before.is_open(t) && !keeps {
            after.grid_worker_id = closest;
        }
        Some(after)
    })
    .await;
    failed.map_or(Ok(()), |e| {
        Err(ApiError::changed_meanwhile(
            "err.observation.changed_meanwhile",
        )(e))
    })
}

/// Writes what `change` makes of each observation of `person` (`None`, or the same: left as it
/// is), each against the observation as read: one changed meanwhile is read and changed again,
/// twice at most. The observations written, and the error of one that still could not be.
async fn change_observations(
    st: &AppState,
    person: Uuid,
    change: impl Fn(&Observation) -> Option<Observation>,
) -> (Vec<Observation>, Option<epigrid_core::store::StoreError>) {
    let mut written = Vec::new();
    let mut failed = None;
    for _ in 0..3 {
        failed = None;
        let all = match st.store.observations_of(person).await {
            Ok(all) => all,
            Err(e) => return (written, Some(e)),
        };
        for before in all {
            let Some(after) = change(&before).filter(|a| *a != before) else {
                continue;
            };
            match st.store.update_observation(&before, &after).await {
                Ok(()) => written.push(after),
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_none() {
            break;
        }
    }
    (written, failed)
}

/// The open observations a grid worker followed up, handed to the active grid worker closest
/// above each person's area (or to nobody, when there is none): a deactivated worker's line
/// list is read by no one. Best effort after the deactivation it follows: one that cannot be
/// handed over (changed meanwhile, a database error) is logged by id and left as it is.
pub(crate) async fn hand_over_observations(st: &AppState, worker: Uuid) {
    let t = today(st);
    let (rows, users) = match (
        st.store
            .observation_rows(&Scope::all(), t, t, Utc::now(), Some(worker))
            .await,
        st.store.users(&Scope::all()).await,
    ) {
        (Ok(r), Ok(u)) => (r, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, %worker, "observations not handed over");
            return;
        }
    };
    for row in rows {
        let before = row.observation;
        // (the rows are the worker's; ended ones among them stay where they are)
        if !before.is_open(t) {
            continue;
        }
        // where the person belongs now (an observation's own area may predate a correction)
        let area = match st.store.person(before.person_id, &Scope::all()).await {
            Ok(Some(p)) => p.area_path,
            _ => before.area_path.clone(),
        };
        let mut after = before.clone();
        after.grid_worker_id = closest_grid_worker(&users, &area).map(|u| u.id);
        if after != before {
            if let Err(e) = st.store.update_observation(&before, &after).await {
                tracing::warn!(error = %e, observation = %before.id, "observation not handed over");
            }
        }
    }
}

/// Whether `u` is an active grid worker whose area holds `area_path`.
fn covers(u: &epigrid_core::model::User, area_path: &str) -> bool {
    u.role == Role::GridWorker && u.active && area_path.starts_with(&u.area_path)
}

/// The grid worker among `users` who looks after `area_path`: the active one whose area
/// holds it most closely.
pub(crate) fn closest_grid_worker<'a>(
    users: &'a [epigrid_core::model::User],
    area_path: &str,
) -> Option<&'a epigrid_core::model::User> {
    users
        .iter()
        .filter(|u| covers(u, area_path))
        .max_by_key(|u| u.area_path.len())
}

/// Merges this person into another found to be the same: `{"into", "reason"}` (audited,
/// reversible through `POST /api/v1/merges/{id}/undo`).
async fn merge_person(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    staff.require(staff.role().investigates())?;
    let from = person_in_scope(&st, &staff, &id).await?;
    let mut errs = Vec::new();
    let into = match b
        .get("into")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
    {
        Some(i) => st.store.person(i, &staff.scope()).await?,
        None => None,
    };
    if into.is_none() {
        errs.push(FieldError::new("into", "err.person.not_found"));
    }
    let reason =
        reason(b.get("reason").and_then(Value::as_str).unwrap_or("")).unwrap_or_else(|e| {
            errs.push(e);
            String::new()
        });
    let Some(into) = into.filter(|_| errs.is_empty()) else {
        return Err(ApiError::Invalid(errs));
    };
    if into.id == from.id {
        return Err(ApiError::field("into", "err.merge.self"));
    }
    // the record merged away must not take a category or an open observation with it: the
    // kept one would not have it and every count would lose it
    if from.category != Category::None && from.category != into.category {
        return Err(ApiError::Conflict("err.merge.from_has_more"));
    }
    if under_observation(&st, from.id).await? {
        // both observed: the merged-away record's observation would go on taking reports
        // (its link still works) that no line list shows, as it lists only kept records
        return Err(ApiError::Conflict(
            if under_observation(&st, into.id).await? {
                "err.merge.both_observed"
            } else {
                "err.merge.from_has_more"
            },
        ));
    }
    let m = PersonMerge {
        id: new_id(),
        from_person: from.id,
        into_person: into.id,
        at: Utc::now(),
        by_user: Some(staff.user.id),
        by_username: staff.user.username.clone(),
        reason,
        undone_at: None,
    };
    match st.store.merge_persons(&m).await {
        Err(epigrid_core::store::StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict("err.merge.already"))
        }
        r => r?,
    }
    st.trace_changed();
    staff
        .audit(
            &st,
            "person.merge",
            &format!("person:{}", from.id),
            &from.area_path,
            &format!("into person:{} merge:{}", into.id, m.id),
        )
        .await;
    Ok(Json(
        json!({"merge_id": m.id, "from": from.id, "into": into.id}),
    ))
}

async fn undo_merge(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    staff.require(staff.role().investigates())?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let m = match st.store.undo_merge(id, &staff.scope(), Utc::now()).await {
        Err(epigrid_core::store::StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict("err.merge.undo_later_first"))
        }
        r => r?,
    };
    st.trace_changed();
    // audited where the people are, for that area's admins
    let area = match st.store.person(m.into_person, &staff.scope()).await? {
        Some(p) => p.area_path,
        None => staff.user.area_path.clone(),
    };
    staff
        .audit(
            &st,
            "person.unmerge",
            &format!("person:{}", m.from_person),
            &area,
            &format!("merge:{}", m.id),
        )
        .await;
    Ok(Json(
        json!({"merge_id": m.id, "from": m.from_person, "into": m.into_person, "undone_at": m.undone_at}),
    ))
}

async fn person_detail(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = person_in_scope(&st, &staff, &id).await?;
    let history = st.store.category_history(p.id).await?;
    let observations = st.store.observations_of(p.id).await?;
    let reports = st.store.reports_of(p.id).await?;
    let labs = st.store.lab_results_of(p.id).await?;
    let regs = st
        .store
        .registrations(
            &Scope::all(),
            &RegistrationFilter {
                person_id: Some(p.id),
                limit: 200,
                ..Default::default()
            },
        )
        .await?;
    let scope = staff.scope();
    let t = today(&st);
    let mut v = person_json(&p);
    v["category_history"] = json!(history);
    v["observations"] = json!(observations
        .iter()
        .map(|o| observation_json(o, t))
        .collect::<Vec<_>>());
    v["reports"] = json!(reports.iter().map(report_json_value).collect::<Vec<_>>());
    v["lab_results"] = json!(labs);
    v["lists"] = json!(st
        .store
        .lists_of(p.id, &staff.scope())
        .await?
        .iter()
        .map(|(l, m)| json!({"list_id": l.id, "name": l.name, "created_at": l.created_at, "line": m.line, "method": m.method, "confidence": m.confidence, "review": m.review, "decision": m.decision}))
        .collect::<Vec<_>>());
    // The timeline shows where the person registered; places outside the caller's area are
    // shown without detail.
    v["registrations"] = json!(regs
        .iter()
        .map(|r| if scope.contains(&r.area_path) {
            serde_json::to_value(registration_json(r, st.cfg.tz)).unwrap_or(Value::Null)
        } else {
            // no id: it would open the registration's public confirmation page to whoever
            // holds the site's poster link
            json!({"at": r.at, "kind": r.kind, "outside_scope": true})
        })
        .collect::<Vec<_>>());
    Ok(Json(v))
}

/// The `reason` staff give for what they do: required, one line of at most 500 characters.
/// It goes into the audit log and the person's history, so it may not hold an ID or phone
/// number (seven digits or more in a row): those are on record already, and the log keeps no
/// one's numbers.
pub(crate) fn reason(raw: &str) -> Result<String, FieldError> {
    let text = epigrid_core::validate::validate_text("reason", raw, 500, true)?
        .ok_or_else(|| FieldError::new("reason", "err.required"))?;
    let mut run = 0;
    for c in text.chars().map(epigrid_core::validate::fold_width) {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 7 {
            return Err(FieldError::new("reason", "err.reason.numbers"));
        }
    }
    Ok(text)
}

/// Nobody reports for the dead: every observation of theirs not yet released (open, or past
/// its end and never released, which an extension could reopen) is released with the reason
/// given, so its link stops and no line list flags them as not reported. After the category
/// change it follows, which stands either way: one that cannot be released is logged by id.
async fn release_for_the_dead(st: &AppState, staff: &Staff, person: Uuid, reason: &str) {
    let (released, failed) = change_observations(st, person, |before| {
        before.released_at.is_none().then(|| Observation {
            released_at: Some(Utc::now()),
            release_reason: Some(reason.to_string()),
            ..before.clone()
        })
    })
    .await;
    for o in released {
        staff
            .audit(
                st,
                "observation.update",
                &format!("observation:{}", o.id),
                &o.area_path,
                "released: deceased",
            )
            .await;
    }
    if let Some(e) = failed {
        tracing::warn!(error = %e, %person, "observations of a deceased person not released");
    }
}

pub(crate) async fn apply_category(
    st: &AppState,
    staff: &Staff,
    p: &Person,
    to_raw: &str,
    reason_raw: &str,
) -> ApiResult<Person> {
    staff.require(staff.role().classifies())?;
    takes_new_facts(p)?;
    let mut errs = Vec::new();
    let to = Category::parse(to_raw.trim());
    if to.is_none() {
        errs.push(FieldError::new("category", "err.category.unknown"));
    }
    let reason = reason(reason_raw).unwrap_or_else(|e| {
        errs.push(e);
        String::new()
    });
    let Some(to) = to.filter(|_| errs.is_empty()) else {
        return Err(ApiError::Invalid(errs));
    };
    check_transition(p.category, to).map_err(ApiError::Conflict)?;
    let change = CategoryChange {
        id: new_id(),
        person_id: p.id,
        from: p.category,
        to,
        at: Utc::now(),
        by_user: Some(staff.user.id),
        by_username: staff.user.username.clone(),
        reason: reason.to_string(),
    };
    if !st.store.change_category(&change).await? {
        return Err(ApiError::Conflict("err.category.changed_meanwhile"));
    }
    staff
        .audit(
            st,
            "category.change",
            &format!("person:{}", p.id),
            &p.area_path,
            &format!("{} -> {}", p.category, to),
        )
        .await;
    if to == Category::Deceased {
        release_for_the_dead(st, staff, p.id, &reason).await;
    }
    st.store
        .person(p.id, &Scope::all())
        .await?
        .ok_or(ApiError::NotFound)
}

async fn change_category(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    let p = person_in_scope(&st, &staff, &id).await?;
    let to = b.get("category").and_then(Value::as_str).unwrap_or("");
    let reason = b.get("reason").and_then(Value::as_str).unwrap_or("");
    let p = apply_category(&st, &staff, &p, to, reason).await?;
    Ok(Json(person_json(&p)))
}

/// Parsed request to start an observation.
struct ObservationRequest {
    kind: ObservationKind,
    start: NaiveDate,
    days: u32,
    site_id: Option<Uuid>,
    grid_worker: Option<Uuid>,
    per_day: u8,
}

async fn parse_observation(
    st: &AppState,
    staff: &Staff,
    p: &Person,
    get: &(dyn Fn(&str) -> Option<String> + Sync),
) -> ApiResult<ObservationRequest> {
    let mut errs = Vec::new();
    let kind = match get("kind").as_deref().map(str::trim) {
        None | Some("") => Some(ObservationKind::Home),
        Some(k) => ObservationKind::parse(k).or_else(|| {
            errs.push(FieldError::new("kind", "err.observation.kind"));
            None
        }),
    };
    let t = today(st);
    let start = match get("start").as_deref().map(str::trim) {
        None | Some("") => Some(t),
        Some(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            // an observation starts within two months back and one month ahead
            Ok(d) if d > t + Duration::days(30) || d < t - Duration::days(60) => {
                errs.push(
                    FieldError::new("start", "err.date.range")
                        .with("min", (t - Duration::days(60)).to_string())
                        .with("max", (t + Duration::days(30)).to_string()),
                );
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                errs.push(FieldError::new("start", "err.date.format"));
                None
            }
        },
    };
    let days = match get("days").as_deref().map(str::trim) {
        None | Some("") => Some(st.cfg.observation_days(p.category)),
        Some(d) => match epigrid_core::validate::whole_number(d) {
            Some(n) if (1..=90).contains(&n) => Some(n as u32),
            Some(_) => {
                errs.push(
                    FieldError::new("days", "err.int.range")
                        .with("min", "1")
                        .with("max", "90"),
                );
                None
            }
            None => {
                errs.push(FieldError::new("days", "err.int.format"));
                None
            }
        },
    };
    let per_day = match get("reports_per_day").as_deref().map(str::trim) {
        None | Some("") | Some("1") => 1,
        Some("2") => 2,
        Some(_) => {
            errs.push(
                FieldError::new("reports_per_day", "err.int.range")
                    .with("min", "1")
                    .with("max", "2"),
            );
            1
        }
    };
    let site_id = match get("site_id")
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => match Uuid::parse_str(s).ok() {
            Some(id) => match st.store.site(id, &staff.scope()).await? {
                // people are observed where they stay (a quarantine hotel is a venue), not
                // at a road checkpoint, a gate or an arrival desk
                Some(site) if site.kind == epigrid_core::model::SiteKind::Venue => Some(id),
                Some(_) => {
                    errs.push(FieldError::new("site_id", "err.observation.site_kind"));
                    None
                }
                None => {
                    errs.push(FieldError::new("site_id", "err.site.not_found"));
                    None
                }
            },
            None => {
                errs.push(FieldError::new("site_id", "err.site.not_found"));
                None
            }
        },
    };
    if kind == Some(ObservationKind::Central)
        && site_id.is_none()
        && !errs.iter().any(|e| e.field == "site_id")
    {
        errs.push(FieldError::new("site_id", "err.observation.central_site"));
    }
    let grid_worker = match get("grid_worker")
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => match Uuid::parse_str(s).ok() {
            // an active grid worker over the person's area (a deactivated one follows no one up)
            Some(id) => match st.store.user(id).await? {
                Some(u) if covers(&u, &p.area_path) => Some(id),
                _ => {
                    errs.push(FieldError::new("grid_worker", "err.grid_worker.not_here"));
                    None
                }
            },
            None => {
                errs.push(FieldError::new("grid_worker", "err.id.format"));
                None
            }
        },
    };
    match (kind, start, days) {
        (Some(kind), Some(start), Some(days)) if errs.is_empty() => Ok(ObservationRequest {
            kind,
            start,
            days,
            site_id,
            grid_worker,
            per_day,
        }),
        _ => Err(ApiError::Invalid(errs)),
    }
}

/// Starts an observation; returns it with the personal report link (shown once).
async fn open_observation(
    st: &AppState,
    staff: &Staff,
    p: &Person,
    req: ObservationRequest,
) -> ApiResult<(Observation, String)> {
    staff.require(staff.role().follows_up())?;
    takes_new_facts(p)?;
    // nobody reports their temperature for the dead
    if p.category == Category::Deceased {
        return Err(ApiError::Conflict("err.observation.deceased"));
    }
    if under_observation(st, p.id).await? {
        return Err(ApiError::Conflict("err.observation.already_open"));
    }
    let token = random_token(16);
    let o = Observation {
        id: new_id(),
        person_id: p.id,
        kind: req.kind,
        site_id: req.site_id,
        start: req.start,
        planned_end: req.start + Duration::days(i64::from(req.days) - 1),
        released_at: None,
        release_reason: None,
        grid_worker_id: match req.grid_worker {
            Some(w) => Some(w),
            // a grid worker who opens one without naming whose it is follows it up themself
            // (their line list shows their own observations)
            None if staff.role() == Role::GridWorker => Some(staff.user.id),
            // anyone else's goes to the grid worker closest above the person's area, as a
            // marked contact's does: an observation nobody follows up is on no worker's list
            None => {
                let users = st.store.users(&Scope::all()).await?;
                closest_grid_worker(&users, &p.area_path).map(|u| u.id)
            }
        },
        token_hash: token_hash(&token),
        token_revoked: false,
        reports_per_day: req.per_day,
        area_path: p.area_path.clone(),
        created_at: Utc::now(),
        created_by: Some(staff.user.id),
    };
    match st.store.insert_observation(&o).await {
        // another start for this person won the race
        Err(epigrid_core::store::StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict("err.observation.already_open"))
        }
        r => r?,
    }
    staff
        .audit(
            st,
            "observation.start",
            &format!("person:{}", p.id),
            &p.area_path,
            &format!("{} {} days", o.kind, req.days),
        )
        .await;
    Ok((o, token))
}

async fn start_observation(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Response> {
    staff.check_csrf_header()?;
    let p = person_in_scope(&st, &staff, &id).await?;
    let get = json_get(&b);
    let req = parse_observation(&st, &staff, &p, &get).await?;
    let (o, token) = open_observation(&st, &staff, &p, req).await?;
    let mut v = observation_json(&o, today(&st));
    v["report_url"] = json!(report_url(&st, &headers, &token));
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn update_observation(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    staff.require(staff.role().follows_up())?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let mut o = st
        .store
        .observation(id, &staff.scope())
        .await?
        .ok_or(ApiError::NotFound)?;
    if o.released_at.is_some() {
        return Err(ApiError::Conflict("err.observation.released"));
    }
    // as read: the change is made from this, or not at all
    let before = o.clone();
    let mut errs = Vec::new();
    // a change names what it changes: an empty or misspelt request is not a change (and is
    // not audited as one)
    const CHANGES: [&str; 6] = [
        "extend_days",
        "release_reason",
        "early_release",
        "revoke_link",
        "new_link",
        "reports_per_day",
    ];
    errs.extend(crate::api::stray_fields(
        &b,
        &CHANGES,
        "err.field.unknown_observation",
    ));
    if errs.is_empty() && !CHANGES.iter().any(|k| b.get(k).is_some()) {
        errs.push(FieldError::new("", "err.field.nothing_to_change"));
    }
    let mut new_link = None;
    if let Some(v) = b.get("extend_days") {
        match v.as_i64().filter(|n| (1..=60).contains(n)) {
            Some(n) => o.planned_end += Duration::days(n),
            None => errs.push(
                FieldError::new("extend_days", "err.int.range")
                    .with("min", "1")
                    .with("max", "60"),
            ),
        }
    }
    if let Some(v) = b.get("release_reason") {
        // one line of text, as every other reason (no control characters)
        let text = match v.as_str() {
            Some(s) => epigrid_core::validate::validate_text("release_reason", s, 200, true),
            None => Err(FieldError::new("release_reason", "err.text.format")),
        };
        match text {
            Err(e) => errs.push(e),
            Ok(None) => errs.push(FieldError::new("release_reason", "err.required")),
            Ok(Some(r)) => {
                let early = o.planned_end > today(&st);
                if early && b.get("early_release").and_then(Value::as_bool) != Some(true) {
                    errs.push(FieldError::new("early_release", "err.observation.early"));
                }
                if early {
                    // Early release needs a negative test since the start.
                    let negative = st
                        .store
                        .lab_results_of(o.person_id)
                        .await?
                        .iter()
                        .any(|l| l.result == TestResult::Negative && l.sample_date >= o.start);
                    if !negative {
                        errs.push(FieldError::new(
                            "early_release",
                            "err.observation.needs_negative",
                        ));
                    }
                }
                o.released_at = Some(Utc::now());
                o.release_reason = Some(r);
            }
        }
    }
    if b.get("revoke_link").and_then(Value::as_bool) == Some(true) {
        o.token_revoked = true;
    }
    if b.get("new_link").and_then(Value::as_bool) == Some(true) {
        let t = random_token(16);
        o.token_hash = token_hash(&t);
        o.token_revoked = false;
        new_link = Some(t);
    }
    if let Some(v) = b.get("reports_per_day") {
        match v.as_u64() {
            Some(n @ 1..=2) => o.reports_per_day = n as u8,
            _ => errs.push(
                FieldError::new("reports_per_day", "err.int.range")
                    .with("min", "1")
                    .with("max", "2"),
            ),
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    // an observation that ran past its end, extended, is open again: not while another one
    // is (one observation at a time; its link, line list and reports would be doubled)
    let t = today(&st);
    if !before.is_open(t) && o.is_open(t) {
        let others = st.store.observations_of(o.person_id).await?;
        if others.iter().any(|x| x.id != o.id && x.is_open(t)) {
            return Err(ApiError::Conflict("err.observation.already_open"));
        }
        // nor for the dead, as a new one is not
        let person = st.store.person(o.person_id, &Scope::all()).await?;
        if person.is_some_and(|p| p.category == Category::Deceased) {
            return Err(ApiError::Conflict("err.observation.deceased"));
        }
    }
    st.store
        .update_observation(&before, &o)
        .await
        .map_err(ApiError::changed_meanwhile(
            "err.observation.changed_meanwhile",
        ))?;
    staff
        .audit(
            &st,
            "observation.update",
            &format!("observation:{}", o.id),
            &o.area_path,
            "",
        )
        .await;
    let mut v = observation_json(&o, today(&st));
    if let Some(t) = new_link {
        v["report_url"] = json!(report_url(&st, &headers, &t));
    }
    Ok(Json(v))
}

/// Validates a health report's fields.
fn parse_report(
    get: &dyn Fn(&str) -> Option<String>,
    symptoms: &[String],
) -> Result<(Option<i16>, u8, Option<String>), ApiError> {
    let mut errs = Vec::new();
    let temperature = match get("temperature")
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => {
            errs.push(FieldError::new("temperature", "err.required"));
            None
        }
        Some(t) => match Temperature::parse("temperature", t) {
            Ok(t) => Some(t.tenths()),
            Err(e) => {
                errs.push(e);
                None
            }
        },
    };
    let symptoms = match Symptoms::parse("symptoms", symptoms) {
        Ok(s) => s.bits(),
        Err(e) => {
            errs.push(e);
            0
        }
    };
    let note = match epigrid_core::validate::validate_text(
        "note",
        get("note").as_deref().unwrap_or(""),
        300,
        false,
    ) {
        Ok(n) => n,
        Err(e) => {
            errs.push(e);
            None
        }
    };
    if errs.is_empty() {
        Ok((temperature, symptoms, note))
    } else {
        Err(ApiError::Invalid(errs))
    }
}

/// Stores a report for the current slot of an open observation.
async fn file_report(
    st: &AppState,
    o: &Observation,
    fields: (Option<i16>, u8, Option<String>),
    by_user: Option<Uuid>,
) -> ApiResult<HealthReport> {
    let now = Utc::now();
    let t = today(st);
    if !o.is_open(t) {
        return Err(ApiError::Gone("err.report.ended"));
    }
    if t < o.start {
        return Err(ApiError::Conflict("err.report.not_started"));
    }
    let (day, slot) = report_slot(now, st.cfg.tz, o.reports_per_day);
    let r = HealthReport {
        id: new_id(),
        observation_id: o.id,
        person_id: o.person_id,
        day,
        slot,
        at: now,
        temperature: fields.0,
        symptoms: fields.1,
        note: fields.2,
        by_user,
    };
    match st.store.insert_report(&r).await {
        Err(epigrid_core::store::StoreError::Conflict(_)) => {
            Err(ApiError::Conflict("err.report.slot_taken"))
        }
        other => other.map(|_| r).map_err(ApiError::from),
    }
}

async fn observation_for_token(st: &AppState, token: &str) -> ApiResult<Observation> {
    let o = st
        .store
        .observation_by_token(&token_hash(token))
        .await?
        .ok_or(ApiError::NotFound)?;
    if o.token_revoked {
        return Err(ApiError::Gone("err.report.revoked"));
    }
    Ok(o)
}

/// Fields of a JSON object as text (numbers written out; other shapes as JSON, which then
/// fails validation); absent or null is `None`.
pub(crate) fn json_get(b: &Value) -> impl Fn(&str) -> Option<String> + '_ {
    move |k: &str| {
        b.get(k).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Null => None,
            other => Some(other.to_string()),
        })
    }
}

fn json_symptoms(b: &Value) -> Vec<String> {
    match b.get("symptoms") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn report_json_value(r: &HealthReport) -> Value {
    json!({"id": r.id, "observation_id": r.observation_id, "day": r.day, "slot": r.slot, "at": r.at,
           "temperature": crate::view::temperature(r.temperature),
           "symptoms": Symptoms::from_bits(r.symptoms).names(), "note": r.note,
           "on_behalf": r.by_user.is_some()})
}

/// `POST /api/v1/reports/{token}`: the person's own report.
async fn report_json(
    State(st): State<AppState>,
    Path(token): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Response> {
    let o = observation_for_token(&st, &token).await?;
    let fields = parse_report(&json_get(&b), &json_symptoms(&b))?;
    let r = file_report(&st, &o, fields, None).await?;
    Ok((StatusCode::CREATED, Json(report_json_value(&r))).into_response())
}

/// A grid worker enters a report on the person's behalf (marked and audited).
async fn report_on_behalf(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Response> {
    staff.check_csrf_header()?;
    staff.require(staff.role().follows_up())?;
    let p = person_in_scope(&st, &staff, &id).await?;
    let o = st
        .store
        .observations_of(p.id)
        .await?
        .into_iter()
        .find(|o| o.released_at.is_none())
        .ok_or(ApiError::Conflict("err.report.no_observation"))?;
    let fields = parse_report(&json_get(&b), &json_symptoms(&b))?;
    let r = file_report(&st, &o, fields, Some(staff.user.id)).await?;
    staff
        .audit(
            &st,
            "report.on_behalf",
            &format!("person:{}", p.id),
            &p.area_path,
            "",
        )
        .await;
    Ok((StatusCode::CREATED, Json(report_json_value(&r))).into_response())
}

async fn add_lab_result(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Response> {
    staff.check_csrf_header()?;
    staff.require(staff.role().classifies())?;
    let p = person_in_scope(&st, &staff, &id).await?;
    takes_new_facts(&p)?;
    let get = json_get(&b);
    let mut errs = Vec::new();
    let test = get("test").and_then(|t| TestKind::parse(t.trim()));
    if test.is_none() {
        errs.push(FieldError::new("test", "err.lab.test"));
    }
    let result = get("result").and_then(|t| TestResult::parse(t.trim()));
    if result.is_none() {
        errs.push(FieldError::new("result", "err.lab.result"));
    }
    let t = today(&st);
    let date = |k: &str, required: bool, errs: &mut Vec<FieldError>| -> Option<NaiveDate> {
        match get(k).as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => {
                if required {
                    errs.push(FieldError::new(k, "err.required"));
                }
                None
            }
            Some(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                Ok(d) if d > t => {
                    errs.push(FieldError::new(k, "err.date.future"));
                    None
                }
                Ok(d) => crate::api::check_date(k, d).map_err(|e| errs.push(e)).ok(),
                Err(_) => {
                    errs.push(FieldError::new(k, "err.date.format"));
                    None
                }
            },
        }
    };
    let sample = date("sample_date", true, &mut errs);
    let result_date = date("result_date", false, &mut errs);
    if let (Some(s), Some(r)) = (sample, result_date) {
        if r < s {
            errs.push(FieldError::new(
                "result_date",
                "err.lab.result_before_sample",
            ));
        }
    }
    let (Some(test), Some(result), Some(sample_date)) = (test, result, sample) else {
        return Err(ApiError::Invalid(errs));
    };
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let l = LabResult {
        id: new_id(),
        person_id: p.id,
        test,
        sample_date,
        result_date,
        result,
        entered_by: Some(staff.user.id),
        created_at: Utc::now(),
    };
    st.store.insert_lab_result(&l).await?;
    staff
        .audit(
            &st,
            "lab.add",
            &format!("person:{}", p.id),
            &p.area_path,
            result.as_str(),
        )
        .await;
    let review = result == TestResult::Positive
        && !matches!(
            p.category,
            Category::Confirmed | Category::Recovered | Category::Deceased
        );
    let mut v = json!(l);
    v["needs_review"] = json!(review);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn review(State(st): State<AppState>, staff: Staff) -> ApiResult<Json<Value>> {
    staff.require(staff.role().sees_people())?;
    let rows = st.store.review_list(&staff.scope()).await?;
    Ok(Json(
        json!({"items": rows.iter().map(|(p, l)| json!({"person": person_json(p), "lab_result": l})).collect::<Vec<_>>()}),
    ))
}

/// Counts of people per category in the scope, with small cells hidden for analysts.
async fn category_counts(State(st): State<AppState>, staff: Staff) -> ApiResult<Json<Value>> {
    let rows = st.store.category_counts(&staff.scope()).await?;
    // Aggregates only (site staff, analysts): a count under five is not given (null), zero
    // included, so that null does not mean "one to four"; an area's cell under five is left
    // out altogether, since a listed cell would say there is at least one; and a category's
    // total is not given when a cell of it is left out, since the total less the cells shown
    // would be the cell left out.
    let suppress = !staff.role().sees_people();
    let small = |n: i64| suppress && n < 5;
    let mut totals: HashMap<Category, (i64, bool)> = HashMap::new();
    for (_, c, n) in &rows {
        let t = totals.entry(*c).or_default();
        t.0 += n;
        t.1 |= small(*n);
    }
    let total = |c: &Category| match totals.get(c).copied().unwrap_or_default() {
        (n, false) if !small(n) => json!(n),
        _ => Value::Null,
    };
    Ok(Json(json!({
        "totals": Category::FOUR.iter().map(|c| json!({"category": c, "count": total(c)})).collect::<Vec<_>>(),
        "by_area": rows.iter().filter(|(_, _, n)| !small(*n)).map(|(path, c, n)| json!({"area_code": epigrid_core::store::path_leaf(path), "category": c, "count": n})).collect::<Vec<_>>(),
        "small_cells_suppressed": suppress,
    })))
}

/// Line lists: `?status=reported_today|not_reported|overdue|symptomatic|ending_soon|ended&grid_worker=ID`.
async fn rows_for(
    st: &AppState,
    staff: &Staff,
    q: &HashMap<String, String>,
) -> ApiResult<Vec<(ObservationRow, Vec<LineStatus>)>> {
    staff.require(staff.role().sees_people())?;
    let status = match q.get("status").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            LineStatus::parse(s).ok_or_else(|| ApiError::field("status", "err.status.unknown"))?,
        ),
    };
    let grid_worker = match q
        .get("grid_worker")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None if staff.role() == Role::GridWorker && q.get("all").is_none() => Some(staff.user.id),
        None => None,
        Some(g) => {
            Some(Uuid::parse_str(g).map_err(|_| ApiError::field("grid_worker", "err.id.format"))?)
        }
    };
    let now = Utc::now();
    let t = today(st);
    // a week of ended ones: from local midnight seven days back (not UTC's)
    let since = t - Duration::days(7);
    let released_since = since
        .and_hms_opt(0, 0, 0)
        .and_then(|d| d.and_local_timezone(st.cfg.tz).single())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or(now);
    let rows = st
        .store
        .observation_rows(&staff.scope(), t, since, released_since, grid_worker)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let s = line_statuses(&r, now, st.cfg.tz, st.cfg.overdue_hours);
            (r, s)
        })
        .filter(|(_, s)| status.is_none_or(|x| s.contains(&x)))
        .collect())
}

fn line_json(r: &ObservationRow, s: &[LineStatus], today: NaiveDate) -> Value {
    json!({
        "observation": observation_json(&r.observation, today),
        "person_id": r.observation.person_id,
        "name": mask_name(&r.person_name),
        "category": r.category,
        "last_report_at": r.last_report_at,
        "last_temperature": crate::view::temperature(r.last_temperature),
        "last_symptoms": Symptoms::from_bits(r.last_symptoms).names(),
        "reports_today": r.reports_today,
        "statuses": s,
    })
}

async fn line_list(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let rows = rows_for(&st, &staff, &q).await?;
    let t = today(&st);
    Ok(Json(
        json!({"items": rows.iter().map(|(r, s)| line_json(r, s, t)).collect::<Vec<_>>()}),
    ))
}

/// The line list as a table (header + rows) for export; `unmask` shows full names, documents
/// and phones (roles that may only). Every export is audited.
async fn export_table(
    st: &AppState,
    staff: &Staff,
    q: &HashMap<String, String>,
    format: &str,
) -> ApiResult<(Vec<String>, Vec<Vec<String>>)> {
    let rows = rows_for(st, staff, q).await?;
    let unmask = match q.get("unmask").map(|v| v.trim()) {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(_) => return Err(ApiError::field("unmask", "err.bool.format")),
    };
    // an unmasked export is as many unmasks as it has people: it needs a reason, as one
    // unmask does, and each person it shows is in the audit log
    let why = if unmask {
        staff.require(staff.role().may_unmask())?;
        // a GET that reveals: from a browser session only with the session's CSRF token (a
        // link on another page of the site cannot make it), as every unmask on the pages
        staff.check_csrf_header()?;
        Some(
            reason(q.get("reason").map(String::as_str).unwrap_or(""))
                .map_err(|e| ApiError::Invalid(vec![e]))?,
        )
    } else {
        None
    };
    let lang = crate::error::current_lang();
    let t = |k: &str| epigrid_core::i18n::t(lang, k);
    let header: Vec<String> = [
        "form.name",
        "form.id_number",
        "form.phone",
        "person.category",
        "obs.start",
        "obs.end",
        "obs.last_report",
        "form.temperature",
        "detail.symptoms",
        "obs.status",
    ]
    .iter()
    .map(|k| t(k).to_string())
    .collect();
    let mut out = Vec::with_capacity(rows.len());
    for (r, s) in &rows {
        let pid = r.observation.person_id;
        let (name, doc, phone) = if let Some(why) = &why {
            let secrets = st.store.person_secrets(pid, &staff.scope()).await?;
            staff
                .audit_read(
                    st,
                    "unmask",
                    &format!("person:{pid}"),
                    &r.observation.area_path,
                    &format!("export {format}: {why}"),
                )
                .await?;
            let open = |col: &str, c: Option<&Vec<u8>>| {
                c.and_then(|c| st.vault.open(&format!("persons.{col}:{pid}"), c).ok())
                    .unwrap_or_default()
            };
            let s = secrets.as_ref();
            (
                r.person_name.clone(),
                open("doc", s.and_then(|s| s.doc_cipher.as_ref())),
                open("phone", s.and_then(|s| s.phone_cipher.as_ref())),
            )
        } else {
            let p = st.store.person(pid, &Scope::all()).await?;
            (
                mask_name(&r.person_name),
                p.as_ref()
                    .and_then(|p| p.doc_masked.clone())
                    .unwrap_or_default(),
                p.and_then(|p| p.phone_masked).unwrap_or_default(),
            )
        };
        out.push(vec![
            name,
            doc,
            phone,
            t(r.category.label_key()).to_string(),
            r.observation.start.to_string(),
            r.observation.planned_end.to_string(),
            r.last_report_at
                .map(|x| local(x, st.cfg.tz))
                .unwrap_or_default(),
            crate::view::temperature_text(r.last_temperature),
            crate::view::symptom_labels(r.last_symptoms, lang),
            s.iter()
                .map(|x| t(&x.label_key()))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    staff
        .audit_read(
            st,
            "export",
            "observations",
            &staff.user.area_path,
            &format!(
                "{format} rows={} unmasked={unmask} status={}{}",
                out.len(),
                q.get("status").cloned().unwrap_or_default(),
                why.as_ref()
                    .map(|w| format!(" reason={w}"))
                    .unwrap_or_default()
            ),
        )
        .await?;
    Ok((header, out))
}

/// A CSV cell: quoted, and neutralised if a spreadsheet would read it as a formula.
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The line list as CSV: UTF-8 with a BOM so that Excel in a Chinese locale reads it right.
async fn export_csv(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (header, rows) = export_table(&st, &staff, &q, "csv").await?;
    Ok(csv_download("observations.csv", &header, &rows))
}

/// A CSV download: UTF-8 with a BOM so that Excel in a Chinese locale reads it right, every
/// cell quoted and none read as a formula.
pub(crate) fn csv_download(file: &str, header: &[String], rows: &[Vec<String>]) -> Response {
    let mut out = String::from("\u{feff}");
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        out.push_str(
            &row.iter()
                .map(|c| csv_cell(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        out,
    )
        .into_response()
}

/// The line list as XLSX; every cell is written as text (ID numbers keep their digits, and
/// nothing is ever evaluated as a formula).
async fn export_xlsx(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (header, rows) = export_table(&st, &staff, &q, "xlsx").await?;
    let xerr = |e: rust_xlsxwriter::XlsxError| ApiError::Internal(e.to_string());
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    let bold = rust_xlsxwriter::Format::new().set_bold();
    for (c, h) in header.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, h, &bold)
            .map_err(xerr)?;
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            ws.write_string(r as u32 + 1, c as u16, v).map_err(xerr)?;
        }
    }
    let bytes = wb.save_to_buffer().map_err(xerr)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"observations.xlsx\"",
            ),
        ],
        bytes,
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// The personal daily-report page

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage {
    tr: Tr,
    action: String,
    name: String,
    errors: Vec<String>,
    done: bool,
    ended: bool,
    slot_taken: bool,
    temperature: String,
    symptoms: Vec<(&'static str, &'static str, bool)>,
    note: String,
    end: String,
}

fn report_page_html(
    lang: Lang,
    o: &Observation,
    name: &str,
    token: &str,
    errors: Vec<String>,
    values: &[(String, String)],
    state: (bool, bool, bool),
) -> ReportPage {
    let chosen: Vec<&str> = values
        .iter()
        .filter(|(k, _)| k == "symptoms")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut symptoms: Vec<(&'static str, &'static str, bool)> =
        epigrid_core::validate::Symptom::ALL
            .iter()
            .map(|s| (s.as_str(), s.label_key(), chosen.contains(&s.as_str())))
            .collect();
    symptoms.push(("none", "symptom.none", chosen.contains(&"none")));
    let get = |k: &str| crate::public::form_value(values, k).unwrap_or_default();
    ReportPage {
        tr: Tr(lang),
        action: format!("/r/{token}"),
        name: mask_name(name),
        errors,
        done: state.0,
        ended: state.1,
        slot_taken: state.2,
        temperature: get("temperature"),
        symptoms,
        note: get("note"),
        end: o.planned_end.to_string(),
    }
}

use crate::view::html as render;

/// The observation behind a personal report link and the person's name, or the page that says
/// why the link does not work.
async fn report_target(
    st: &AppState,
    lang: Lang,
    token: &str,
) -> Result<(Observation, String), Box<Response>> {
    let o = match observation_for_token(st, token).await {
        Ok(o) => o,
        Err(ApiError::Gone(_)) => {
            return Err(Box::new(message(
                lang,
                StatusCode::GONE,
                "report.revoked.title",
                "report.revoked.text",
            )))
        }
        Err(_) => {
            return Err(Box::new(message(
                lang,
                StatusCode::NOT_FOUND,
                "report.unknown.title",
                "report.unknown.text",
            )))
        }
    };
    let name = st
        .store
        .person(o.person_id, &Scope::all())
        .await
        .ok()
        .flatten()
        .map(|p| p.name)
        .unwrap_or_default();
    Ok((o, name))
}

async fn report_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    Path(token): Path<String>,
) -> Response {
    let (o, name) = match report_target(&st, lang, &token).await {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let ended = !o.is_open(today(&st));
    // an ended observation's link says so, as a revoked one does (and as a report sent to
    // it is answered)
    let status = if ended {
        StatusCode::GONE
    } else {
        StatusCode::OK
    };
    render(
        status,
        report_page_html(lang, &o, &name, &token, vec![], &[], (false, ended, false)),
    )
}

async fn report_form(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (o, name) = match report_target(&st, lang, &token).await {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let pairs = url_decode_pairs(&body);
    let get = |k: &str| crate::public::form_value(&pairs, k);
    let symptoms: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "symptoms")
        .map(|(_, v)| v.clone())
        .collect();
    let result = match parse_report(&get, &symptoms) {
        Ok(fields) => file_report(&st, &o, fields, None).await.map(|_| ()),
        Err(e) => Err(e),
    };
    // the report page again: what it says, the typed values kept, and (done, ended, slot taken)
    let page = |status, msgs, kept: &[(String, String)], flags| {
        render(
            status,
            report_page_html(lang, &o, &name, &token, msgs, kept, flags),
        )
    };
    match result {
        Ok(()) => page(StatusCode::OK, vec![], &[], (true, false, false)),
        Err(ApiError::Invalid(errs)) => page(
            StatusCode::UNPROCESSABLE_ENTITY,
            errs.iter().map(|e| e.message(lang)).collect(),
            &pairs,
            (false, false, false),
        ),
        Err(ApiError::Conflict("err.report.slot_taken")) => {
            page(StatusCode::CONFLICT, vec![], &pairs, (false, false, true))
        }
        // not begun yet: the form stays, with why (not the page for an ended observation,
        // which would tell the person to stop reporting)
        Err(ApiError::Conflict(key @ "err.report.not_started")) => page(
            StatusCode::CONFLICT,
            vec![FieldError::new("", key).message(lang)],
            &pairs,
            (false, false, false),
        ),
        Err(ApiError::Gone(_)) | Err(ApiError::Conflict(_)) => {
            page(StatusCode::GONE, vec![], &pairs, (false, true, false))
        }
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Staff pages

struct PersonRow {
    id: String,
    name: String,
    category: Category,
    doc: String,
    phone: String,
    area: String,
}

fn person_row(p: &Person) -> PersonRow {
    PersonRow {
        id: p.id.to_string(),
        name: mask_name(&p.name),
        category: p.category,
        doc: p.doc_masked.clone().unwrap_or_default(),
        phone: p.phone_masked.clone().unwrap_or_default(),
        area: p.area_code().to_string(),
    }
}

#[derive(Template)]
#[template(path = "persons.html")]
struct PersonsPage {
    c: crate::staff::Chrome,
    q: String,
    rows: Vec<PersonRow>,
    error: String,
    counts: Vec<(Category, i64)>,
    review: Vec<(PersonRow, String)>,
}

async fn persons_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match crate::staff::logged_in_as(staff, lang, Role::sees_people) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    persons_view(&st, &s, lang, q.get("q").cloned().unwrap_or_default()).await
}

/// `POST /persons`: the page's search, sent in the body so that an ID or phone number typed
/// into it stays out of the address (the browser's history on a shared phone, proxies' logs).
async fn persons_search(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    body: Bytes,
) -> Response {
    let (s, pairs) = match crate::staff::posted_form(staff, &body, lang, Role::sees_people) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let q = crate::public::form_value(&pairs, "q").unwrap_or_default();
    persons_view(&st, &s, lang, q).await
}

async fn persons_view(st: &AppState, s: &Staff, lang: Lang, text: String) -> Response {
    let (mut rows, error) = if text.trim().is_empty() {
        (Vec::new(), String::new())
    } else {
        match interpret_query(st, &text) {
            Ok(query) => match search_people(st, s, &query).await {
                Ok(people) => (people.iter().map(person_row).collect(), String::new()),
                Err(e) => (Vec::new(), e.messages(lang).join(" ")),
            },
            Err(ApiError::Invalid(e)) => (
                Vec::new(),
                e.first().map(|e| e.message(lang)).unwrap_or_default(),
            ),
            Err(_) => (Vec::new(), String::new()),
        }
    };
    let mut totals: HashMap<Category, i64> = HashMap::new();
    for (_, c, n) in crate::staff::read_or_answer!(st.store.category_counts(&s.scope()).await) {
        *totals.entry(c).or_default() += n;
    }
    let mut review: Vec<(PersonRow, String)> =
        crate::staff::read_or_answer!(st.store.review_list(&s.scope()).await)
            .iter()
            .map(|(p, l)| (person_row(p), format!("{} {}", l.test, l.sample_date)))
            .collect();
    // areas by name, each looked up once
    let mut names: HashMap<String, String> = HashMap::new();
    for row in rows.iter_mut().chain(review.iter_mut().map(|(r, _)| r)) {
        if !names.contains_key(&row.area) {
            let name = crate::staff::read_or_answer!(crate::staff::area_label(st, &row.area).await)
                .unwrap_or_else(|| row.area.clone());
            names.insert(row.area.clone(), name);
        }
        row.area = names[&row.area].clone();
    }
    render(
        StatusCode::OK,
        PersonsPage {
            c: crate::staff::chrome(st, s, lang).await,
            q: text,
            rows,
            error,
            counts: Category::FOUR
                .iter()
                .map(|c| (*c, *totals.get(c).unwrap_or(&0)))
                .collect(),
            review,
        },
    )
}

/// A list the person was matched on, as the person page shows it.
struct ListLine {
    /// Empty for a list uploaded outside the reader's area (they see that the person is on
    /// it, not the list itself).
    id: String,
    name: String,
    at: String,
    method: &'static str,
    confidence: String,
    /// Message key of the match's state (confirmed, rejected, to review), or empty.
    state: String,
}

#[derive(Template)]
#[template(path = "person.html")]
struct PersonPage {
    c: crate::staff::Chrome,
    p: Person,
    name: String,
    history: Vec<(String, CategoryChange)>,
    observations: Vec<Observation>,
    reports: Vec<(String, String, String, bool)>,
    labs: Vec<LabResult>,
    lists: Vec<ListLine>,
    timeline: Vec<crate::view::RowView>,
    categories: Vec<Category>,
    /// The form on the page that was sent back with an error ("category" or "observe"), the
    /// error, and what was typed into it.
    said: Said,
    link: String,
    link_qr: String,
    default_days: u32,
    /// Where a centralised observation can be: the active venues in the reader's area.
    venues: Vec<(String, String)>,
    can_classify: bool,
    /// The person's area by name (its code when unknown).
    area_name: String,
}

/// A person-page form sent back: which one, why, and what was typed into it.
#[derive(Default)]
struct Said {
    form: &'static str,
    error: String,
    typed: Vec<(String, String)>,
}

impl Said {
    fn new(form: &'static str, e: &ApiError, lang: Lang, typed: &[(String, String)]) -> Said {
        Said {
            form,
            error: e.messages(lang).join(" "),
            typed: typed.to_vec(),
        }
    }
}

impl PersonPage {
    /// What was typed into `field` of the form sent back, if it was `form`.
    fn typed(&self, form: &str, field: &str) -> String {
        if self.said.form != form {
            return String::new();
        }
        crate::public::form_value(&self.said.typed, field).unwrap_or_default()
    }
}

async fn person_view(
    st: &AppState,
    s: &Staff,
    lang: Lang,
    id: &str,
    said: Said,
    link: String,
) -> Response {
    let p = match person_in_scope(st, s, id).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let history = crate::staff::read_or_answer!(st.store.category_history(p.id).await);
    let observations = crate::staff::read_or_answer!(st.store.observations_of(p.id).await);
    let reports = crate::staff::read_or_answer!(st.store.reports_of(p.id).await);
    let labs = crate::staff::read_or_answer!(st.store.lab_results_of(p.id).await);
    let lists = crate::staff::read_or_answer!(st.store.lists_of(p.id, &s.scope()).await);
    let venues = crate::staff::read_or_answer!(st.store.sites(&s.scope()).await)
        .into_iter()
        .filter(|v| v.kind == epigrid_core::model::SiteKind::Venue && v.active)
        .map(|v| (v.id.to_string(), v.name))
        .collect();
    let regs = crate::staff::read_or_answer!(
        st.store
            .registrations(
                &s.scope(),
                &RegistrationFilter {
                    person_id: Some(p.id),
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
    );
    let area_name =
        crate::staff::read_or_answer!(crate::staff::area_label(st, p.area_code()).await)
            .unwrap_or_else(|| p.area_code().to_string());
    let tz = st.cfg.tz;
    render(
        if said.error.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        },
        PersonPage {
            c: crate::staff::chrome(st, s, lang).await,
            name: mask_name(&p.name),
            history: history.into_iter().map(|h| (local(h.at, tz), h)).collect(),
            observations,
            reports: reports
                .iter()
                .map(|r| {
                    (
                        local(r.at, tz),
                        crate::view::temperature_text(r.temperature),
                        crate::view::symptom_labels(r.symptoms, lang),
                        r.by_user.is_some(),
                    )
                })
                .collect(),
            labs,
            lists: lists
                .iter()
                .map(|(l, m)| ListLine {
                    id: if s.scope().contains(&l.area_path) {
                        l.id.to_string()
                    } else {
                        String::new()
                    },
                    name: l.name.clone(),
                    at: local(l.created_at, tz),
                    method: m.method,
                    confidence: format!("{:.2}", m.confidence),
                    state: match (m.decision, m.review) {
                        (Some(d), _) => format!("lists.decision.{}", d.as_str()),
                        (None, true) => "lists.review".into(),
                        (None, false) => String::new(),
                    },
                })
                .collect(),
            timeline: regs
                .iter()
                .map(|r| crate::view::row_view(r, tz, lang))
                .collect(),
            categories: Category::ALL
                .iter()
                .copied()
                .filter(|c| check_transition(p.category, *c).is_ok())
                .collect(),
            said,
            link_qr: if link.is_empty() {
                String::new()
            } else {
                let svg = crate::qr::svg(&link, 200).unwrap_or_default();
                svg.split_once("?>")
                    .map(|(_, s)| s.to_string())
                    .unwrap_or(svg)
            },
            link,
            default_days: st.cfg.observation_days(p.category),
            venues,
            can_classify: s.role().classifies(),
            area_name,
            p,
        },
    )
}

async fn person_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(id): Path<String>,
) -> Response {
    match crate::staff::logged_in(staff) {
        Ok(s) => person_view(&st, &s, lang, &id, Said::default(), String::new()).await,
        Err(r) => *r,
    }
}

async fn person_page_category(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, pairs) = match crate::staff::posted_form(staff, &body, lang, |_| true) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let get = |k: &str| crate::public::form_value(&pairs, k).unwrap_or_default();
    let p = match person_in_scope(&st, &s, &id).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match apply_category(&st, &s, &p, &get("category"), &get("reason")).await {
        Ok(_) => Redirect::to(&format!("/persons/{}", p.id)).into_response(),
        Err(e) => {
            let said = Said::new("category", &e, lang, &pairs);
            person_view(&st, &s, lang, &id, said, String::new()).await
        }
    }
}

async fn person_page_observe(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, pairs) = match crate::staff::posted_form(staff, &body, lang, |_| true) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let get = |k: &str| crate::public::form_value(&pairs, k);
    let p = match person_in_scope(&st, &s, &id).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let opened = match parse_observation(&st, &s, &p, &get).await {
        Ok(req) => open_observation(&st, &s, &p, req).await,
        Err(e) => Err(e),
    };
    let (said, link) = match opened {
        Ok((_, token)) => (Said::default(), report_url(&st, &headers, &token)),
        Err(e) => (Said::new("observe", &e, lang, &pairs), String::new()),
    };
    person_view(&st, &s, lang, &id, said, link).await
}

struct LineRow {
    person_id: String,
    name: String,
    category: Category,
    start: String,
    end: String,
    last: String,
    temperature: String,
    statuses: Vec<LineStatus>,
}

#[derive(Template)]
#[template(path = "observations.html")]
struct ObservationsPage {
    c: crate::staff::Chrome,
    status: String,
    rows: Vec<LineRow>,
    counts: Vec<(LineStatus, usize)>,
}

async fn observations_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match crate::staff::logged_in(staff) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut all_q = q.clone();
    all_q.remove("status");
    let all = match rows_for(&st, &s, &all_q).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let status = q.get("status").and_then(|s| LineStatus::parse(s));
    let counts = LineStatus::ALL
        .iter()
        .map(|x| (*x, all.iter().filter(|(_, s)| s.contains(x)).count()))
        .collect();
    let rows = all
        .iter()
        .filter(|(_, s)| status.is_none_or(|x| s.contains(&x)))
        .map(|(r, s)| LineRow {
            person_id: r.observation.person_id.to_string(),
            name: mask_name(&r.person_name),
            category: r.category,
            start: r.observation.start.to_string(),
            end: r.observation.planned_end.to_string(),
            last: r
                .last_report_at
                .map(|t| local(t, st.cfg.tz))
                .unwrap_or_default(),
            temperature: crate::view::temperature_text(r.last_temperature),
            statuses: s.clone(),
        })
        .collect();
    render(
        StatusCode::OK,
        ObservationsPage {
            c: crate::staff::chrome(&st, &s, lang).await,
            status: status.map(|s| s.as_str().to_string()).unwrap_or_default(),
            rows,
            counts,
        },
    )
}
