//! Lists from other agencies, matched against the people epigrid knows (比对).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use epigrid_core::matching::{match_rows, parse_list};
use epigrid_core::store::ListRecord;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::Staff;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/lists", post(upload))
        .route("/api/v1/lists/{id}/matches", get(matches))
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

/// `POST /api/v1/lists?name=NAME` with the CSV as the body: validates every row (bad rows are
/// listed with their line and reason), matches the good ones, stores the matches.
async fn upload(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Response> {
    staff.check_csrf_header(&headers)?;
    staff.require(staff.role().investigates())?;
    let name = q
        .get("name")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && s.chars().count() <= 100)
        .ok_or_else(|| ApiError::field("name", "err.required"))?;
    let parsed = read_list(&body)?;
    if parsed.rows.is_empty() && parsed.errors.iter().any(|(_, e)| e.field == "header") {
        return Err(ApiError::Invalid(
            parsed.errors.into_iter().map(|(_, e)| e).collect(),
        ));
    }
    let found = match_rows(st.store.as_ref(), &st.vault, &parsed.rows, &mut |_| {}).await?;
    let list = ListRecord {
        id: epigrid_core::vault::new_id(),
        name: name.to_string(),
        uploaded_by: Some(staff.user.id),
        area_path: staff.user.area_path.clone(),
        created_at: Utc::now(),
        rows: (parsed.rows.len() + parsed.errors.len()) as i32,
        bad_rows: parsed
            .errors
            .iter()
            .map(|(l, _)| *l)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as i32,
    };
    st.store.insert_list(&list, &found).await?;
    staff
        .audit(
            &st,
            "list.match",
            &format!("list:{}", list.id),
            &staff.user.area_path,
            &format!("rows={} matches={}", parsed.rows.len(), found.len()),
        )
        .await;
    let lang = crate::error::current_lang();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": list.id,
            "name": list.name,
            "rows": parsed.rows.len(),
            "bad_rows": list.bad_rows,
            "errors": parsed.errors.iter().map(|(l, e)| json!({"line": l, "field": e.field, "message": e.message(lang)})).collect::<Vec<_>>(),
            "matched": found.len(),
            "to_review": found.iter().filter(|m| m.review).count(),
        })),
    )
        .into_response())
}

async fn matches(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    staff.require(staff.role().sees_personal_data())?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let (list, rows) = st
        .store
        .list_matches(id, &staff.scope())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(json!({
        "list": list,
        "items": rows.iter().map(|(m, p)| json!({
            "line": m.line, "method": m.method, "confidence": m.confidence, "review": m.review,
            "person": crate::persons::person_json(p),
        })).collect::<Vec<_>>(),
    })))
}

/// Reads a list file: XLSX (first sheet; every cell as text) or CSV in UTF-8 or GBK.
pub fn read_list(bytes: &[u8]) -> Result<epigrid_core::matching::ParsedList, ApiError> {
    use calamine::Reader;
    if bytes.starts_with(b"PK") {
        let mut wb: calamine::Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec()))
                .map_err(|_| ApiError::field("body", "err.list.xlsx"))?;
        let range = wb
            .worksheet_range_at(0)
            .ok_or_else(|| ApiError::field("body", "err.list.xlsx"))?
            .map_err(|_| ApiError::field("body", "err.list.xlsx"))?;
        let mut rows = range
            .rows()
            .map(|r| r.iter().map(|c| c.to_string()).collect::<Vec<String>>());
        let header = rows.next().unwrap_or_default();
        return Ok(epigrid_core::matching::parse_rows(header, rows));
    }
    let text = decode_text(bytes).ok_or_else(|| ApiError::field("body", "err.list.encoding"))?;
    Ok(parse_list(&text))
}
