//! Lists from other agencies, matched against the people epigrid knows (比对): the JSON API,
//! and staff pages to upload a list (with upload progress where JS runs; a plain form post
//! where it does not), see what was wrong in it and work through its matches.

use std::collections::HashMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use epigrid_core::matching::{
    parse_list_mapped, ColumnMap, Decision, MatchDecision, MatchIndex, ParsedList, Passes,
};
use epigrid_core::store::{ListRecord, MatchPage};
use epigrid_core::validate::FieldError;
use epigrid_core::Lang;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{MaybeStaff, Staff};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::view::{local, mask_name};

/// Largest list accepted (a million-row CSV is about 60 MB).
pub const MAX_LIST_BYTES: usize = 256 * 1024 * 1024;
/// Bad rows shown on the page after an upload (the API returns them all).
const ERRORS_SHOWN: usize = 500;
/// Matches shown per page of a list.
const MATCHES_SHOWN: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/lists",
            post(upload).layer(DefaultBodyLimit::max(MAX_LIST_BYTES)),
        )
        .route("/api/v1/lists/{id}/matches", get(matches))
        .route("/api/v1/lists/{id}/decisions", post(decide))
        .route(
            "/lists",
            get(lists_page).post(upload_page.layer(DefaultBodyLimit::max(MAX_LIST_BYTES))),
        )
        .route("/lists/{id}", get(list_page))
        .route("/lists/{id}/decide", post(decide_page))
}

/// UTF-8 (with or without BOM), else GBK as Excel in a Chinese locale saves it.
pub fn decode_text(bytes: &[u8]) -> Option<String> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s.trim_start_matches('\u{feff}').to_string()),
        Err(_) => {
            let (s, _, bad) = encoding_rs::GBK.decode(bytes);
            (!bad).then(|| s.into_owned())
        }
    }
}

/// Most columns read from a spreadsheet (cells further right are ignored).
const MAX_COLUMNS: u32 = 64;
/// Most non-empty cells, and characters in them, read from a spreadsheet: a compressed sheet
/// can hold far more than its upload size suggests.
const MAX_CELLS: usize = 12_000_000;
const MAX_CELL_TEXT: usize = 200 * 1024 * 1024;

/// A spreadsheet cell as the text a person sees in it (dates as `YYYY-MM-DD`).
fn cell_text(c: &calamine::DataRef<'_>) -> String {
    use calamine::DataRef;
    match c {
        DataRef::Int(i) => i.to_string(),
        DataRef::Float(f) => f.to_string(),
        DataRef::String(s) => s.clone(),
        DataRef::SharedString(s) => s.to_string(),
        DataRef::Bool(b) => b.to_string(),
        DataRef::DateTime(d) if d.is_datetime() => {
            let (y, mo, day, h, mi, sec, _) = d.to_ymd_hms_milli();
            if (h, mi, sec) == (0, 0, 0) {
                format!("{y:04}-{mo:02}-{day:02}")
            } else {
                format!("{y:04}-{mo:02}-{day:02} {h:02}:{mi:02}:{sec:02}")
            }
        }
        DataRef::DateTime(d) => d.as_f64().to_string(),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => s.clone(),
        DataRef::Error(_) => "#ERROR".into(),
        DataRef::Empty => String::new(),
    }
}

/// Rows in an Excel sheet (1,048,576): a cell said to lie below them is a broken file.
const XLSX_MAX_ROWS: u32 = 1 << 20;

/// The first sheet of an XLSX file as numbered rows (line = the spreadsheet's row number),
/// read cell by cell: a sparse sheet costs what its cells cost, not its bounding box.
fn xlsx_rows(bytes: &[u8]) -> Result<Vec<(usize, Vec<String>)>, ApiError> {
    use calamine::Reader;
    let bad = || ApiError::field("file", "err.list.xlsx");
    let mut wb: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(bytes)).map_err(|_| bad())?;
    let name = wb.sheet_names().first().cloned().ok_or_else(bad)?;
    let mut cells = wb.worksheet_cells_reader(&name).map_err(|_| bad())?;
    let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
    let (mut cell_count, mut text_len) = (0usize, 0usize);
    while let Some(cell) = cells.next_cell().map_err(|_| bad())? {
        let (r, c) = cell.get_position();
        if r >= XLSX_MAX_ROWS {
            // beyond any sheet a spreadsheet writes (and beyond a stored line number)
            return Err(bad());
        }
        if c >= MAX_COLUMNS {
            continue;
        }
        let text = cell_text(cell.get_value());
        if text.trim().is_empty() {
            continue;
        }
        cell_count += 1;
        text_len += text.len();
        if cell_count > MAX_CELLS || text_len > MAX_CELL_TEXT {
            return Err(ApiError::field("file", "err.list.too_big"));
        }
        let line = r as usize + 1;
        if rows.last().is_none_or(|(l, _)| *l != line) {
            if rows.len() > epigrid_core::matching::MAX_ROWS {
                return Err(ApiError::Invalid(vec![FieldError::new(
                    "file",
                    "err.list.too_many_rows",
                )
                .with("max", epigrid_core::matching::MAX_ROWS.to_string())]));
            }
            rows.push((line, Vec::new()));
        }
        if let Some((_, row)) = rows.last_mut() {
            let c = c as usize;
            if row.len() <= c {
                row.resize(c + 1, String::new());
            }
            row[c] = text;
        }
    }
    Ok(rows)
}

/// Reads a list file: XLSX (first sheet; every cell as text) or CSV in UTF-8 or GBK. A list
/// with no rows, or whose header is unusable, is refused as a whole.
pub fn read_list(bytes: &[u8], map: &ColumnMap) -> Result<ParsedList, ApiError> {
    let parsed = if bytes.starts_with(b"PK") {
        let mut rows = xlsx_rows(bytes)?.into_iter();
        let header = rows.next().map(|(_, h)| h).unwrap_or_default();
        epigrid_core::matching::parse_rows(header, rows, map)
    } else {
        let text =
            decode_text(bytes).ok_or_else(|| ApiError::field("file", "err.list.encoding"))?;
        parse_list_mapped(&text, map)
    };
    if parsed.rows.is_empty() && parsed.errors.is_empty() {
        return Err(ApiError::field("file", "err.list.no_rows"));
    }
    if parsed.header_error() {
        return Err(ApiError::Invalid(
            parsed.errors.into_iter().map(|(_, e)| e).collect(),
        ));
    }
    Ok(parsed)
}

fn list_name(raw: Option<&str>) -> ApiResult<String> {
    epigrid_core::validate::validate_text("name", raw.unwrap_or_default(), 100, true)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::Invalid(vec![e]))
}

/// What an upload produced.
struct Processed {
    list: ListRecord,
    parsed: ParsedList,
    /// Matches to people in the uploader's area, and how many of them are uncertain.
    matched: usize,
    to_review: usize,
}

/// Validates and matches a list (CPU work off the async threads), stores its matches, audits.
/// One list is read and matched at a time (each holds everyone's match keys in memory).
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

async fn process(
    st: &AppState,
    staff: &Staff,
    name: &str,
    map: ColumnMap,
    body: Bytes,
) -> ApiResult<Processed> {
    // the permit goes with the work: if the client goes away, the blocking work still
    // holds it until it ends
    let turn = UPLOADS
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // (a panic's message is not passed on to the log: it may hold what the file held)
    let join = |e: tokio::task::JoinError| {
        ApiError::Internal(if e.is_panic() {
            "matching a list panicked".into()
        } else {
            e.to_string()
        })
    };
    // a panic inside the spreadsheet reader (on a crafted file) is the file's error, not
    // the server's
    let (parsed, turn) = tokio::task::spawn_blocking(move || (read_list(&body, &map), turn))
        .await
        .map_err(|e| {
            tracing::error!(panicked = e.is_panic(), "reading an uploaded list failed");
            ApiError::field("file", "err.list.xlsx")
        })?;
    let parsed = parsed?;
    let index = MatchIndex::load(st.store.as_ref()).await?;
    let vault = st.vault.clone();
    let (parsed, found) = tokio::task::spawn_blocking(move || {
        let found = index.match_rows(&vault, &parsed.rows, Passes::All, &|_| {});
        drop((index, turn));
        (parsed, found)
    })
    .await
    .map_err(join)?;
    let list = parsed.record(name, Some(staff.user.id), &staff.user.area_path);
    st.store
        .insert_list(&list, &parsed.kept_errors(), &found)
        .await?;
    drop(found);
    // what the uploader learns is about people in their area only (the list was matched
    // against everyone, so that other areas see their own people on it)
    let (matched, to_review) = st.store.list_match_counts(list.id, &staff.scope()).await?;
    staff
        .audit(
            st,
            "list.match",
            &format!("list:{}", list.id),
            &staff.user.area_path,
            &format!("rows={} matches_in_scope={matched}", parsed.rows.len()),
        )
        .await;
    Ok(Processed {
        list,
        parsed,
        matched,
        to_review,
    })
}

/// `POST /api/v1/lists?name=NAME[&col_id_number=HEADING…]` with the CSV or XLSX file as the body: validates every row
/// (bad rows are listed with their line and reason), matches the good ones, stores the matches.
async fn upload(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    // refused (role, CSRF, name) before the upload, up to 256 MB, is read
    staff.check_csrf_header()?;
    staff.require(staff.role().investigates())?;
    let name = list_name(q.get("name").map(String::as_str))?;
    let map = ColumnMap::from_pairs(q.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let body = axum::body::to_bytes(body, MAX_LIST_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge)?;
    let p = process(&st, &staff, &name, map, body).await?;
    let lang = crate::error::current_lang();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": p.list.id,
            "name": p.list.name,
            "rows": p.parsed.rows.len(),
            "bad_rows": p.list.bad_rows,
            "errors": p.parsed.errors.iter().take(epigrid_core::matching::MAX_ERRORS_KEPT).map(|(l, e)| json!({"line": l, "field": e.field, "message": e.message(lang)})).collect::<Vec<_>>(),
            "errors_total": p.parsed.errors.len(),
            "matched": p.matched,
            "to_review": p.to_review,
        })),
    )
        .into_response())
}

/// `GET /api/v1/lists/{id}/matches[?review=1][&limit=N][&offset=N]`: a page of the list's
/// matches to people in the caller's area (1,000 by default, at most 10,000), with totals.
async fn matches(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    staff.require(staff.role().sees_people())?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let mut errs = Vec::new();
    let review_only = match q.get("review").map(|v| v.trim()) {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(_) => {
            errs.push(FieldError::new("review", "err.bool.format"));
            false
        }
    };
    let mut number =
        |k: &str, default: u32, max: u32| match q.get(k).map(|v| v.trim().parse::<i64>()) {
            None => default,
            Some(Ok(n)) if (0..=i64::from(max)).contains(&n) => n as u32,
            Some(Err(_)) => {
                errs.push(FieldError::new(k, "err.int.format"));
                default
            }
            Some(Ok(_)) => {
                errs.push(
                    FieldError::new(k, "err.int.range")
                        .with("min", "0")
                        .with("max", max.to_string()),
                );
                default
            }
        };
    let page = MatchPage {
        review_only,
        limit: number("limit", 1000, 10_000),
        offset: number("offset", 0, u32::MAX),
    };
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let (list, rows) = st
        .store
        .list_matches(id, &staff.scope(), &page)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (matched, to_review) = st.store.list_match_counts(id, &staff.scope()).await?;
    Ok(Json(json!({
        "list": list,
        "matched": matched,
        "to_review": to_review,
        "items": rows.iter().map(|(m, p)| json!({
            "line": m.line, "method": m.method, "confidence": m.confidence, "review": m.review, "decision": m.decision,
            "person": crate::persons::person_json(p),
        })).collect::<Vec<_>>(),
    })))
}

/// A reviewer's decision on one match, from JSON or the page's form.
fn read_decision(
    get: impl Fn(&str) -> Option<String>,
) -> Result<(usize, Uuid, Decision), Vec<FieldError>> {
    let mut errs = Vec::new();
    let line = get("line").and_then(|l| l.trim().parse::<usize>().ok());
    if line.is_none() {
        errs.push(FieldError::new("line", "err.int.format"));
    }
    let person = get("person_id").and_then(|p| Uuid::parse_str(p.trim()).ok());
    if person.is_none() {
        errs.push(FieldError::new("person_id", "err.id.format"));
    }
    let decision = get("decision").and_then(|d| Decision::parse(d.trim()));
    if decision.is_none() {
        errs.push(FieldError::new("decision", "err.list.decision"));
    }
    match (line, person, decision) {
        (Some(l), Some(p), Some(d)) => Ok((l, p, d)),
        _ => Err(errs),
    }
}

/// Records the decision (audited); not found when the match is not an undecided one in scope.
async fn apply_decision(
    st: &AppState,
    staff: &Staff,
    list_id: &str,
    (line, person_id, decision): (usize, Uuid, Decision),
) -> ApiResult<()> {
    staff.require(staff.role().investigates())?;
    let list_id = Uuid::parse_str(list_id).map_err(|_| ApiError::NotFound)?;
    let done = st
        .store
        .decide_list_match(
            &MatchDecision {
                list_id,
                line,
                person_id,
                decision,
                by: staff.user.id,
                at: chrono::Utc::now(),
            },
            &staff.scope(),
        )
        .await?;
    if !done {
        // a match the reader can see that was decided already, or is certain, is not "not
        // found": say why it takes no decision (a match to someone outside the reader's area
        // is not seen, even on their own list: it is 404, as if the person were not on it)
        let seen = st.store.person(person_id, &staff.scope()).await?.is_some()
            && st
                .store
                .lists_of(person_id, &staff.scope())
                .await?
                .iter()
                .any(|(l, m)| {
                    l.id == list_id && m.line == line && staff.scope().contains(&l.area_path)
                });
        return Err(if seen {
            ApiError::Conflict("err.list.not_to_review")
        } else {
            ApiError::NotFound
        });
    }
    staff
        .audit(
            st,
            "list.decide",
            &format!("list:{list_id}"),
            &staff.user.area_path,
            &format!("line={line} person={person_id} {}", decision.as_str()),
        )
        .await;
    Ok(())
}

/// `POST /api/v1/lists/{id}/decisions {"line", "person_id", "decision": "confirmed"|"rejected"}`.
async fn decide(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    crate::api::JsonBody(b): crate::api::JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    let get = crate::persons::json_get(&b);
    let d = read_decision(get).map_err(ApiError::Invalid)?;
    apply_decision(&st, &staff, &id, d).await?;
    Ok(Json(
        json!({"line": d.0, "person_id": d.1, "decision": d.2}),
    ))
}

/// The page's confirm / reject buttons.
async fn decide_page(
    State(st): State<AppState>,
    staff: MaybeStaff,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let s = match crate::staff::logged_in(staff) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let pairs = crate::public::url_decode_pairs(&body);
    let get = |k: &str| crate::public::form_value(&pairs, k);
    if let Err(e) = s.check_csrf(get("csrf").as_deref()) {
        return e.into_response();
    }
    let result = match read_decision(get) {
        Ok(d) => apply_decision(&st, &s, &id, d).await,
        Err(e) => Err(ApiError::Invalid(e)),
    };
    match result {
        Ok(()) => axum::response::Redirect::to(&format!("/lists/{id}?review=1")).into_response(),
        Err(e) => e.into_response(),
    }
}

// ---- pages ----

struct ListLine {
    id: String,
    name: String,
    at: String,
    rows: i32,
    bad_rows: i32,
}

#[derive(Template)]
#[template(path = "lists.html")]
struct ListsPage {
    c: crate::staff::Chrome,
    lists: Vec<ListLine>,
    may_upload: bool,
    max_mb: usize,
    name: String,
    errors: Vec<(String, String)>,
    targets: Vec<&'static str>,
}

struct BadRow {
    line: usize,
    field: String,
    message: String,
}

struct MatchLine {
    line: usize,
    person_id: String,
    name: String,
    doc: String,
    area: String,
    category: epigrid_core::person::Category,
    method: &'static str,
    confidence: String,
    review: bool,
    decision: &'static str,
}

#[derive(Template)]
#[template(path = "list.html")]
struct ListPage {
    c: crate::staff::Chrome,
    list: ListLine,
    /// Just uploaded (says it is done).
    uploaded: bool,
    bad: Vec<BadRow>,
    bad_more: bool,
    review_only: bool,
    counts: (usize, usize),
    items: Vec<MatchLine>,
    items_more: usize,
    may_decide: bool,
}

fn list_line(st: &AppState, l: &ListRecord) -> ListLine {
    ListLine {
        id: l.id.to_string(),
        name: l.name.clone(),
        at: local(l.created_at, st.cfg.tz),
        rows: l.rows,
        bad_rows: l.bad_rows,
    }
}

async fn render_lists(
    st: &AppState,
    s: &Staff,
    lang: Lang,
    status: StatusCode,
    name: String,
    errors: Vec<FieldError>,
) -> Response {
    let lists = match st.store.lists(&s.scope(), 200).await {
        Ok(l) => l,
        Err(e) => return ApiError::from(e).into_response(),
    };
    crate::view::html(
        status,
        ListsPage {
            c: crate::staff::chrome(st, s, lang).await,
            lists: lists.iter().map(|l| list_line(st, l)).collect(),
            may_upload: s.role().investigates(),
            max_mb: MAX_LIST_BYTES / (1024 * 1024),
            name,
            targets: epigrid_core::matching::TARGETS.to_vec(),
            errors: errors
                .into_iter()
                .map(|e| (e.field.clone(), e.message(lang)))
                .collect(),
        },
    )
}

async fn lists_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
) -> Response {
    // lists hold people's records: not for site staff or aggregates-only analysts
    let s = match crate::staff::logged_in_as(staff, lang, epigrid_core::model::Role::sees_people) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    render_lists(&st, &s, lang, StatusCode::OK, String::new(), Vec::new()).await
}

/// The upload form's fields: `csrf`, `name`, the `file` and `col_<target>` headings.
struct UploadForm {
    csrf: String,
    name: String,
    file: Bytes,
    columns: Vec<(String, String)>,
}

async fn read_form(mut form: Multipart) -> Result<UploadForm, FieldError> {
    let mut f = UploadForm {
        csrf: String::new(),
        name: String::new(),
        file: Bytes::new(),
        columns: Vec::new(),
    };
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return Err(FieldError::new("file", "err.list.upload")),
        };
        let key = field.name().unwrap_or_default().to_string();
        let data = field
            .bytes()
            .await
            .map_err(|_| FieldError::new("file", "err.list.upload"))?;
        match key.as_str() {
            "csrf" => f.csrf = String::from_utf8_lossy(&data).into_owned(),
            "name" => f.name = String::from_utf8_lossy(&data).into_owned(),
            "file" => f.file = data,
            k if k.starts_with("col_") && data.len() <= 200 => f
                .columns
                .push((key.clone(), String::from_utf8_lossy(&data).into_owned())),
            _ => {}
        }
    }
    Ok(f)
}

/// `POST /lists` (multipart form): the page flow of the upload.
async fn upload_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    form: Multipart,
) -> Response {
    // refused before the upload is read
    let s = match crate::staff::logged_in_as(staff, lang, epigrid_core::model::Role::investigates) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let UploadForm {
        csrf,
        name,
        file,
        columns,
    } = match read_form(form).await {
        Ok(f) => f,
        Err(e) => {
            return render_lists(
                &st,
                &s,
                lang,
                StatusCode::UNPROCESSABLE_ENTITY,
                String::new(),
                vec![e],
            )
            .await
        }
    };
    if let Err(e) = s.check_csrf(Some(&csrf)) {
        return e.into_response();
    }
    let mut errors = Vec::new();
    let checked = list_name(Some(&name));
    if let Err(ApiError::Invalid(e)) = &checked {
        errors.extend(e.iter().cloned());
    }
    if file.is_empty() {
        errors.push(FieldError::new("file", "err.list.empty"));
    }
    if !errors.is_empty() {
        return render_lists(
            &st,
            &s,
            lang,
            StatusCode::UNPROCESSABLE_ENTITY,
            name,
            errors,
        )
        .await;
    }
    let map = ColumnMap::from_pairs(columns.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match process(&st, &s, name.trim(), map, file).await {
        // post, redirect, get: a reload of the result does not upload the list again
        Ok(p) => axum::response::Redirect::to(&format!("/lists/{}?uploaded=1", p.list.id))
            .into_response(),
        Err(ApiError::Invalid(e)) => {
            render_lists(&st, &s, lang, StatusCode::UNPROCESSABLE_ENTITY, name, e).await
        }
        Err(e) => e.into_response(),
    }
}

async fn render_list(
    st: &AppState,
    s: &Staff,
    lang: Lang,
    id: Uuid,
    review_only: bool,
    uploaded: bool,
) -> Response {
    let page = MatchPage {
        review_only,
        limit: MATCHES_SHOWN as u32,
        offset: 0,
    };
    let (list, rows) = match st.store.list_matches(id, &s.scope(), &page).await {
        Ok(Some(x)) => x,
        Ok(None) => return ApiError::NotFound.into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let counts = match st.store.list_match_counts(id, &s.scope()).await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut bad = match st.store.list_errors(id, ERRORS_SHOWN as u32 + 1).await {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let bad_more = bad.len() > ERRORS_SHOWN;
    bad.truncate(ERRORS_SHOWN);
    let items = rows
        .iter()
        .map(|(m, p)| MatchLine {
            line: m.line,
            person_id: p.id.to_string(),
            name: mask_name(&p.name),
            doc: p.doc_masked.clone().unwrap_or_default(),
            area: p.area_code().to_string(),
            category: p.category,
            method: m.method,
            confidence: format!("{:.2}", m.confidence),
            review: m.review,
            decision: m.decision.map_or("", Decision::as_str),
        })
        .collect();
    crate::view::html(
        StatusCode::OK,
        ListPage {
            c: crate::staff::chrome(st, s, lang).await,
            list: list_line(st, &list),
            uploaded,
            bad: bad
                .iter()
                .map(|e| BadRow {
                    line: e.line,
                    field: e.field.clone(),
                    message: e.message(lang),
                })
                .collect(),
            bad_more,
            review_only,
            counts,
            items,
            items_more: (if review_only { counts.1 } else { counts.0 })
                .saturating_sub(MATCHES_SHOWN),
            may_decide: s.role().investigates(),
        },
    )
}

async fn list_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // lists hold people's records: not for site staff or aggregates-only analysts
    let s = match crate::staff::logged_in_as(staff, lang, epigrid_core::model::Role::sees_people) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return ApiError::NotFound.into_response();
    };
    let review_only = q.get("review").is_some_and(|v| v == "1");
    let uploaded = q.get("uploaded").is_some_and(|v| v == "1");
    render_list(&st, &s, lang, id, review_only, uploaded).await
}
