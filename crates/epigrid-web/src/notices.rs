//! Contact-search notices (协查通告): from a case's registrations, the places and time spans
//! they visited, published with no personal data as a printable public page with an "I was
//! there" form that records the person and a pending contact for review.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use epigrid_core::area::Scope;
use epigrid_core::i18n::{t, Lang};
use epigrid_core::model::RegistrationFilter;
use epigrid_core::trace::{notice_spans, Notice, NoticeEntry, PendingContact};
use epigrid_core::validate::{DocType, Document, Errors, MobilePhone, PersonName};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::JsonBody;
use crate::auth::Staff;
use crate::error::{ApiError, ApiResult};
use crate::public::{message, url_decode_pairs, Tr};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/persons/{id}/notices", post(create))
        .route("/api/v1/notices/{id}", get(detail))
        .route("/n/{token}", get(public_page).post(came_forward))
}

/// Registrations a notice is made from at most: past this the window is too wide to publish
/// (a clear refusal, not a notice missing its first places).
const NOTICE_MAX_VISITS: usize = 50_000;

/// Visits closer together than this at one place are one span on the notice.
const MERGE_GAP_S: i64 = 1800;

fn notice_url(st: &AppState, headers: &HeaderMap, n: &Notice) -> String {
    format!("{}/n/{}", crate::api::base_url(st, headers), n.public_token)
}

fn notice_json(st: &AppState, n: &Notice, url: &str) -> Value {
    json!({
        "id": n.id, "url": url, "created_at": n.created_at,
        "entries": n.entries.iter().map(|e| json!({
            "position": e.position, "site_id": e.site_id, "place": e.place, "area": e.area_name,
            "from": e.from, "to": e.to,
            "from_local": crate::view::local(e.from, st.cfg.tz), "to_local": crate::view::local(e.to, st.cfg.tz),
        })).collect::<Vec<_>>(),
    })
}

/// `POST /api/v1/persons/{id}/notices {"from"?, "to"?}`: builds and publishes a notice from the
/// case's registrations in the window (default: the infectious window).
async fn create(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Response> {
    staff.check_csrf_header()?;
    staff.require(staff.role().classifies())?;
    let person = crate::persons::person_in_scope(&st, &staff, &id).await?;
    crate::persons::takes_new_facts(&person)?;
    // the public page says a confirmed or suspected case was at these places: someone who is
    // one, or was one before they recovered or died
    use epigrid_core::person::Category::{Confirmed, Deceased, Recovered, Suspected};
    let a_case = match person.category {
        Confirmed | Suspected => true,
        Recovered | Deceased => st
            .store
            .category_history(person.id)
            .await?
            .iter()
            .any(|h| matches!(h.to, Confirmed | Suspected)),
        _ => false,
    };
    if !a_case {
        return Err(ApiError::Conflict("err.notice.not_a_case"));
    }
    let (dfrom, dto) = crate::contacts::default_window(&st, &person).await?;
    let mut errs = Vec::new();
    // RFC 3339, or a local date (`to`: the end of that day), as the error message asks
    let mut when =
        |k: &str, d| match crate::contacts::parse_time(&st, k, b.get(k).unwrap_or(&Value::Null)) {
            Ok(t) => t.unwrap_or(d),
            Err(e) => {
                errs.push(e);
                d
            }
        };
    let (from, to) = (when("from", dfrom), when("to", dto));
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    if from >= to {
        return Err(ApiError::field("to", "err.date.before_start"));
    }
    // only places in the caller's area: a notice must not publish what they may not see.
    // Newest first, page by page, the whole window: a courier may check in thousands of
    // times, and a notice that left out the first places would miss whoever was there then.
    let mut regs = Vec::new();
    let filter = RegistrationFilter {
        person_id: Some(person.id),
        from: Some(from),
        to: Some(to),
        ..Default::default()
    };
    // one page past the most a notice is made from, to tell "exactly that many" from "more"
    let pages = NOTICE_MAX_VISITS / crate::contacts::PAGE as usize + 1;
    let complete =
        crate::contacts::each_registration_page(&st, &staff.scope(), filter, pages, |page| {
            regs.extend(page)
        })
        .await?;
    if !complete || regs.len() > NOTICE_MAX_VISITS {
        return Err(ApiError::Conflict("err.notice.too_many_visits"));
    }
    let mut names = std::collections::HashMap::new();
    let visits: Vec<(Uuid, i64, i64)> = regs
        .iter()
        .map(|r| {
            names
                .entry(r.site_id)
                .or_insert((r.site_name.clone(), r.area_code.clone()));
            let start = r.at.timestamp();
            let end = r
                .left_at
                .map(|l| l.timestamp())
                .filter(|e| *e > start)
                .unwrap_or(start + i64::from(r.kind.default_stay_min()) * 60);
            (r.site_id, start, end)
        })
        .collect();
    if visits.is_empty() {
        return Err(ApiError::Conflict("err.notice.no_visits"));
    }
    let mut entries = Vec::new();
    for (i, (site, s, e)) in notice_spans(&visits, MERGE_GAP_S).into_iter().enumerate() {
        let (place, area_code) = names.get(&site).cloned().unwrap_or_default();
        let area_name = st
            .store
            .area(&area_code)
            .await?
            .map(|a| a.name)
            .unwrap_or_default();
        entries.push(NoticeEntry {
            position: i as i32,
            site_id: site,
            place,
            area_name,
            from: chrono::DateTime::from_timestamp(s, 0).unwrap_or(from),
            to: chrono::DateTime::from_timestamp(e, 0).unwrap_or(to),
        });
    }
    let n = Notice {
        id: epigrid_core::vault::new_id(),
        case_person_id: person.id,
        public_token: epigrid_core::vault::random_token(12),
        area_path: person.area_path.clone(),
        created_by: Some(staff.user.id),
        created_at: Utc::now(),
        entries,
    };
    st.store.insert_notice(&n).await?;
    staff
        .audit(
            &st,
            "notice.publish",
            &format!("person:{}", person.id),
            &person.area_path,
            &format!("notice:{} entries={}", n.id, n.entries.len()),
        )
        .await;
    let url = notice_url(&st, &headers, &n);
    Ok((StatusCode::CREATED, Json(notice_json(&st, &n, &url))).into_response())
}

/// A notice and the people who came forward (masked), for staff of the case's area.
async fn detail(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    staff.require(staff.role().sees_people())?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let n = st
        .store
        .notice(id, &staff.scope())
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut pending = Vec::new();
    for pc in st.store.pending_contacts(n.id).await? {
        // someone whose record is outside the caller's area is counted, not shown: not even
        // which place they named or when (their area's staff follow them up)
        match st.store.person(pc.person_id, &staff.scope()).await? {
            Some(p) => pending.push(json!({
                "id": pc.id, "position": pc.position, "reported_at": pc.reported_at, "status": pc.status,
                "outside_scope": false,
                "person": crate::persons::person_json(&p),
            })),
            None => pending.push(json!({"outside_scope": true})),
        }
    }
    let url = notice_url(&st, &headers, &n);
    let mut v = notice_json(&st, &n, &url);
    v["came_forward"] = json!(pending);
    Ok(Json(v))
}

#[derive(Template)]
#[template(path = "notice.html")]
struct NoticePage {
    tr: Tr,
    action: String,
    entries: Vec<(i32, String, String, String, String)>,
    errors: Vec<String>,
    done: bool,
    name: String,
    id_number: String,
    phone: String,
}

fn page(
    lang: Lang,
    st: &AppState,
    n: &Notice,
    errors: Vec<String>,
    done: bool,
    values: &[(String, String)],
) -> Response {
    let get = |k: &str| crate::public::form_value(values, k).unwrap_or_default();
    let p = NoticePage {
        tr: Tr(lang),
        action: format!("/n/{}", n.public_token),
        entries: n
            .entries
            .iter()
            .map(|e| {
                (
                    e.position,
                    e.place.clone(),
                    e.area_name.clone(),
                    crate::view::local(e.from, st.cfg.tz),
                    crate::view::local(e.to, st.cfg.tz),
                )
            })
            .collect(),
        errors,
        done,
        name: get("name"),
        id_number: get("id_number"),
        phone: get("phone"),
    };
    crate::view::html(StatusCode::OK, p)
}

async fn public_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    Path(token): Path<String>,
) -> Response {
    match st.store.notice_by_token(&token).await {
        Ok(Some(n)) => page(lang, &st, &n, Vec::new(), false, &[]),
        Ok(None) => message(
            lang,
            StatusCode::NOT_FOUND,
            "notice.unknown.title",
            "notice.unknown.text",
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// "I was there": the person identifies themselves and says which place; recorded as a
/// pending contact of the case for staff to review.
async fn came_forward(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let n = match st.store.notice_by_token(&token).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return message(
                lang,
                StatusCode::NOT_FOUND,
                "notice.unknown.title",
                "notice.unknown.text",
            )
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let pairs = url_decode_pairs(&body);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let mut errs = Errors::default();
    // in the form's order: the place, then the person
    let entry = get("entry")
        .parse::<i32>()
        .ok()
        .and_then(|p| n.entries.iter().find(|e| e.position == p));
    if entry.is_none() {
        errs.push(epigrid_core::validate::FieldError::new(
            "entry",
            "err.notice.entry",
        ));
    }
    let name = errs.check(PersonName::parse("name", &get("name")));
    // one box for a document: a traveller's passport as well as a mainland ID number
    let typed = get("id_number");
    let doc_type = if epigrid_core::register::looks_like_passport(&typed) {
        DocType::Passport
    } else {
        DocType::CnId
    };
    let doc = errs.check(Document::parse("id_number", doc_type, &typed));
    let phone = errs.check(MobilePhone::parse("phone", &get("phone")));
    let (Some(name), Some(doc), Some(phone), Some(entry)) = (name, doc, phone, entry) else {
        // each message under the name of its field, as the form labels it
        let label = |field: &str| match field {
            "entry" => "notice.which",
            "name" => "form.name",
            "id_number" => "form.id_number",
            _ => "form.phone",
        };
        let msgs = errs
            .0
            .iter()
            .map(|e| format!("{}: {}", t(lang, label(&e.field)), e.message(lang)))
            .collect();
        let mut r = page(lang, &st, &n, msgs, false, &pairs);
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        return r;
    };
    let person =
        epigrid_core::register::seal_person(&st.vault, name.as_str(), Some(&doc), Some(&phone));
    let area_path = match st.store.site(entry.site_id, &Scope::all()).await {
        Ok(Some(s)) => s.area_path,
        _ => n.area_path.clone(),
    };
    // the case themselves has nothing to report here; the page reads the same, or it would
    // tell anyone who types an ID number whether that person is the case (someone who came
    // forward already is thanked again and recorded once: the store keeps one per place)
    if person.id == n.case_person_id {
        return page(lang, &st, &n, Vec::new(), true, &[]);
    }
    let pc = PendingContact {
        id: epigrid_core::vault::new_id(),
        notice_id: n.id,
        position: entry.position,
        index_person_id: n.case_person_id,
        person_id: person.id,
        reported_at: Utc::now(),
        status: "pending".into(),
    };
    if let Err(e) = st
        .store
        .insert_pending_contact(&pc, &person, &area_path)
        .await
    {
        return ApiError::from(e).into_response();
    }
    page(lang, &st, &n, Vec::new(), true, &[])
}
