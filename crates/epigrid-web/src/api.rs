//! `/api/v1/...`: the JSON API. Every route that returns personal data filters by the caller's
//! scope in the store, so out-of-scope records are 404 for them.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use epigrid_core::divisions;
use epigrid_core::model::*;
use epigrid_core::register::{self, Context, RegistrationInput};
use epigrid_core::validate::FieldError;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{self, MaybeStaff, Staff};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::view::{json_bytes_response, json_response, receipt_body, registration_json, site_json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/token", post(create_token))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/me", get(me))
        .route("/api/v1/areas", get(areas))
        .route("/api/v1/divisions", get(division_children))
        .route("/api/v1/sites", get(list_sites).post(create_site))
        .route("/api/v1/sites/{site}", get(get_site).patch(update_site))
        .route("/api/v1/sites/{site}/qr.svg", get(qr_svg))
        .route("/api/v1/sites/{site}/qr.png", get(qr_png))
        .route(
            "/api/v1/sites/{site}/registrations",
            post(post_registration),
        )
        .route("/api/v1/registrations", get(list_registrations))
        .route("/api/v1/registrations/{id}", get(get_registration))
        .route(
            "/api/v1/registrations/{id}/unmask",
            post(unmask_registration),
        )
        .route(
            "/api/v1/registrations/{id}/checkout",
            post(checkout_registration),
        )
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit.csv", get(audit_csv))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}", patch(change_user))
        .route("/api/v1/feed", get(crate::feed::sse))
}

/// A request body read whole, up to [`crate::BODY_LIMIT`]: a larger body, or one cut short,
/// is [`ApiError::TooLarge`] (as axum's `Bytes` extractor's refusal was). A body that comes
/// in one piece (the usual registration) is taken as it is, where `Bytes` boxed the body
/// behind its limit and gathered it into a list first (0.67 → 0.18 µs of a registration in a
/// profile).
pub(crate) struct WholeBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for WholeBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        use futures_util::StreamExt;
        let mut chunks = req.into_body().into_data_stream();
        let (mut first, mut rest) = (Bytes::new(), Vec::new());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| ApiError::TooLarge)?;
            if first.len() + rest.len() + chunk.len() > crate::BODY_LIMIT {
                return Err(ApiError::TooLarge);
            }
            if first.is_empty() {
                first = chunk;
            } else {
                rest.extend_from_slice(&chunk);
            }
        }
        if rest.is_empty() {
            return Ok(WholeBody(first));
        }
        Ok(WholeBody([&first[..], &rest].concat().into()))
    }
}

/// A JSON object body; malformed JSON is a 400 with a field error for `body`, not a panic or
/// an opaque rejection.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge)?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::Invalid(vec![FieldError::new("body", "err.body.json")]))?;
        if !v.is_object() {
            return Err(ApiError::Invalid(vec![FieldError::new(
                "body",
                "err.body.not_object",
            )]));
        }
        // no text the API takes may hold a NUL (nor can PostgreSQL store one)
        if let Some((k, _)) = v
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, v)| k.contains('\0') || holds_nul(v))
        {
            let field = if k.contains('\0') { "body" } else { k.as_str() };
            return Err(ApiError::field(field, "err.text.invalid_chars"));
        }
        Ok(JsonBody(v))
    }
}

fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A field of a JSON body (or a page's form) that must be text: `None` with `err.required`
/// when it is absent, null or blank, `None` with `err.text.format` when it is a number, a
/// list or anything but text.
fn required_text<'a>(v: &'a Value, k: &str, errs: &mut Vec<FieldError>) -> Option<&'a str> {
    match v.get(k) {
        None | Some(Value::Null) => {
            errs.push(FieldError::new(k, "err.required"));
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errs.push(FieldError::new(k, "err.required"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errs.push(FieldError::new(k, "err.text.format"));
            None
        }
    }
}

/// The keys of a JSON object that are none of `known`, each as a field error `key`: a key
/// nobody reads is a mistake, not a no-op.
pub(crate) fn stray_fields(b: &Value, known: &[&str], key: &'static str) -> Vec<FieldError> {
    b.as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| FieldError::new(k.as_str(), key))
        .collect()
}

/// Whether a password is long enough: 10 characters or more, not counting spaces at either
/// end (so a password of spaces only is refused).
pub fn password_long_enough(password: &str) -> bool {
    password.trim().chars().count() >= 10
}

pub fn base_url(st: &AppState, headers: &HeaderMap) -> String {
    if let Some(b) = &st.cfg.base_url {
        return b.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("127.0.0.1:8080");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// 200 when the database answers; 503 when it does not (whatever the reason), so that a load
/// balancer takes this process out of rotation.
pub async fn readyz(State(st): State<AppState>) -> ApiResult<&'static str> {
    st.store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok("ready")
}

fn user_json(u: &User) -> Value {
    json!({"id": u.id, "username": u.username, "role": u.role, "area_code": u.area_code, "active": u.active})
}

async fn create_token(
    State(st): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    let mut errs = Vec::new();
    let username = required_text(&b, "username", &mut errs);
    let password = required_text(&b, "password", &mut errs);
    let (Some(username), Some(password)) = (username, password) else {
        return Err(ApiError::Invalid(errs));
    };
    let ip = auth::client_ip(&st, &headers, peer.map(|p| p.0 .0));
    let (token, session, user) = auth::login(&st, username, password, true, &ip).await?;
    Ok(Json(
        json!({"token": token, "expires_at": session.expires_at, "user": user_json(&user)}),
    ))
}

async fn logout(State(st): State<AppState>, staff: Staff) -> ApiResult<StatusCode> {
    // a browser session is ended by its own pages only (as every other change it makes)
    staff.check_csrf_header()?;
    st.store.delete_session(&staff.token_hash).await?;
    st.forget_session(&staff.token_hash);
    Ok(StatusCode::NO_CONTENT)
}

async fn me(staff: Staff) -> Json<Value> {
    Json(user_json(&staff.user))
}

async fn areas(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let scope = staff.scope();
    let list = match q.get("parent").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => st
            .store
            .area(&staff.user.area_code)
            .await?
            .into_iter()
            .collect::<Vec<_>>(),
        Some(parent) => {
            // a code that cannot be one is the caller's mistake, not a missing area
            epigrid_core::validate::AreaCode::parse("parent", parent)
                .map_err(|e| ApiError::Invalid(vec![e]))?;
            let Some(p) = st.store.area(parent).await? else {
                return Err(ApiError::NotFound);
            };
            // Visible: the parent is in scope, or is an ancestor of the caller's area.
            if !scope.contains(&p.path) && !scope.path.starts_with(&p.path) {
                return Err(ApiError::NotFound);
            }
            st.store
                .area_children(Some(parent))
                .await?
                .into_iter()
                .filter(|a| scope.contains(&a.path) || scope.path.starts_with(&a.path))
                .collect()
        }
    };
    Ok(Json(json!({"items": list})))
}

/// Province → city → county, for the origin picker (public: no personal data): each with its
/// Chinese name and its English (pinyin) one.
async fn division_children(Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    let item = |d: &divisions::Division, name: &str| json!({"code": d.code, "name": name, "name_en": d.name_en()});
    let items: Vec<Value> = match q.get("parent").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => divisions::provinces()
            .iter()
            .map(|d| item(d, d.name))
            .collect(),
        // a province's (2 digits) or a city's (4) children: anything else is no such parent
        Some(p) if matches!(p.len(), 2 | 4) && p.bytes().all(|b| b.is_ascii_digit()) => {
            divisions::children(p)
                .into_iter()
                .map(|d| item(d, d.display_name()))
                .collect()
        }
        Some(_) => return Err(ApiError::field("parent", "err.division.parent")),
    };
    Ok(Json(json!({ "items": items })))
}

async fn list_sites(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let base = base_url(&st, &headers);
    let sites = st.store.sites(&staff.scope()).await?;
    Ok(Json(
        json!({"items": sites.iter().map(|s| site_json(s, &base)).collect::<Vec<_>>()}),
    ))
}

async fn site_in_scope(st: &AppState, staff: &Staff, id: &str) -> ApiResult<Site> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    st.store
        .site(id, &staff.scope())
        .await?
        .ok_or(ApiError::NotFound)
}

/// Creates a site: `{"kind","name","area_code","default_stay_min"?,"active"?}`.
async fn create_site(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    JsonBody(b): JsonBody,
) -> ApiResult<Response> {
    staff.check_csrf_header()?;
    staff.require(staff.role().manages_sites())?;
    let site = new_site(&st, &staff, &b).await?;
    st.store.insert_site(&site).await?;
    staff
        .audit(
            &st,
            "site.create",
            &format!("site:{}", site.id),
            &site.area_path,
            site.kind.as_str(),
        )
        .await;
    let base = base_url(&st, &headers);
    Ok((StatusCode::CREATED, Json(site_json(&site, &base))).into_response())
}

pub(crate) async fn new_site(st: &AppState, staff: &Staff, b: &Value) -> ApiResult<Site> {
    let mut errs = Vec::new();
    let kind = match required_text(b, "kind", &mut errs).map(SiteKind::parse) {
        Some(Some(k)) => Some(k),
        Some(None) => {
            errs.push(FieldError::new("kind", "err.site.kind"));
            None
        }
        None => None,
    };
    let name = match required_text(b, "name", &mut errs)
        .map(|n| epigrid_core::validate::validate_text("name", n, 60, true))
    {
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            errs.push(e);
            None
        }
        None => None,
    };
    let area = match required_text(b, "area_code", &mut errs) {
        None => None,
        Some(code) => match st.store.area(code.trim()).await? {
            Some(a) if staff.scope().contains(&a.path) => Some(a),
            _ => {
                errs.push(FieldError::new("area_code", "err.area.not_in_scope"));
                None
            }
        },
    };
    // a gate is a compound's: its form lists the buildings and units under it
    if let (Some(SiteKind::Gate), Some(a)) = (kind, &area) {
        if a.level < 4 {
            errs.push(FieldError::new("area_code", "err.site.gate_level"));
        }
    }
    let stay = match b.get("default_stay_min") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64().filter(|n| (1..=24 * 60).contains(n)) {
            Some(n) => Some(n as i32),
            None => {
                errs.push(
                    FieldError::new("default_stay_min", "err.int.range")
                        .with("min", "1")
                        .with("max", "1440"),
                );
                None
            }
        },
    };
    // a site may be made ready before it opens
    let active = match b.get("active") {
        None | Some(Value::Null) => true,
        Some(v) => v.as_bool().unwrap_or_else(|| {
            errs.push(FieldError::new("active", "err.bool.format"));
            true
        }),
    };
    match (kind, name, area) {
        (Some(kind), Some(name), Some(area)) if errs.is_empty() => Ok(Site {
            id: Uuid::now_v7(),
            token: epigrid_core::vault::random_token(16),
            kind,
            name,
            area_code: area.code,
            area_path: area.path,
            active,
            default_stay_min: stay.unwrap_or(kind.default_stay_min()),
            created_at: Utc::now(),
        }),
        _ => Err(ApiError::Invalid(errs)),
    }
}

async fn get_site(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let site = site_in_scope(&st, &staff, &id).await?;
    Ok(Json(site_json(&site, &base_url(&st, &headers))))
}

/// Changes a site: `{"name"?, "active"?, "rotate_token"?, "default_stay_min"?}`.
async fn update_site(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    staff.require(staff.role().manages_sites())?;
    let mut site = site_in_scope(&st, &staff, &id).await?;
    let before = site.clone();
    let old_token = site.token.clone();
    let mut errs = Vec::new();
    if let Some(v) = b.get("name") {
        match epigrid_core::validate::validate_text("name", v.as_str().unwrap_or(""), 60, true) {
            Ok(Some(n)) => site.name = n,
            Ok(None) => errs.push(FieldError::new("name", "err.required")),
            Err(e) => errs.push(e),
        }
    }
    if let Some(v) = b.get("active") {
        match v.as_bool() {
            Some(a) => site.active = a,
            None => errs.push(FieldError::new("active", "err.bool.format")),
        }
    }
    if let Some(v) = b.get("default_stay_min") {
        match v.as_i64().filter(|n| (1..=1440).contains(n)) {
            Some(n) => site.default_stay_min = n as i32,
            None => errs.push(
                FieldError::new("default_stay_min", "err.int.range")
                    .with("min", "1")
                    .with("max", "1440"),
            ),
        }
    }
    match b.get("rotate_token") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => site.token = epigrid_core::vault::random_token(16),
        Some(_) => errs.push(FieldError::new("rotate_token", "err.bool.format")),
    }
    // a site's kind and area are what its registrations were made under: not changed here
    for k in b.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !["name", "active", "default_stay_min", "rotate_token"].contains(&k.as_str()) {
            errs.push(FieldError::new(k, "err.field.unchangeable"));
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    st.store
        .update_site(&before, &site)
        .await
        .map_err(ApiError::changed_meanwhile("err.site.changed_meanwhile"))?;
    st.forget_site(&old_token);
    staff
        .audit(
            &st,
            "site.update",
            &format!("site:{}", site.id),
            &site.area_path,
            &format!("active={}", site.active),
        )
        .await;
    Ok(Json(site_json(&site, &base_url(&st, &headers))))
}

async fn qr_svg(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let site = site_in_scope(&st, &staff, &id).await?;
    let url = crate::view::site_url(&base_url(&st, &headers), &site);
    let svg = crate::qr::svg(&url, 320).map_err(ApiError::Internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml".to_string()),
            (header::CONTENT_DISPOSITION, qr_file_name(&site, "svg")),
        ],
        svg,
    )
        .into_response())
}

/// A QR download's file name, one per site (`qr-checkpoint-150802001-9f3c2a71.png`): a
/// desk printing twenty posters can tell them apart. The site's name is not in it, since a
/// header value is ASCII.
fn qr_file_name(site: &Site, ext: &str) -> String {
    let id = site.id.simple().to_string();
    format!(
        "inline; filename=\"qr-{}-{}-{}.{ext}\"",
        site.kind.as_str(),
        site.area_code,
        // the id's random end (its start is a timestamp, shared by sites made together)
        &id[id.len() - 8..]
    )
}

async fn qr_png(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let site = site_in_scope(&st, &staff, &id).await?;
    let url = crate::view::site_url(&base_url(&st, &headers), &site);
    let png = crate::qr::png(&url, 10).map_err(ApiError::Internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (header::CONTENT_DISPOSITION, qr_file_name(&site, "png")),
        ],
        png,
    )
        .into_response())
}

/// What [`submit`] tells its caller about a registration it stored: what a receipt shows
/// (the stored record, where a caller may see it, is read back from the store).
pub(crate) struct Submitted {
    pub id: uuid::Uuid,
    pub verification_code: String,
    pub at: DateTime<Utc>,
    pub fever: bool,
}

/// The registration path shared by the JSON API and the HTML form: validate for the site's
/// kind, check what needs the store, seal, store, and wake the live feeds.
pub(crate) async fn submit(
    st: &AppState,
    site: &Site,
    input: &RegistrationInput<'_>,
    staff: Option<&Staff>,
) -> ApiResult<Submitted> {
    if !site.active {
        return Err(ApiError::Gone("err.site.inactive"));
    }
    let (channel, by_user) = match staff {
        Some(s) => {
            s.require(s.role().registers_for_others() && s.scope().contains(&site.area_path))?;
            (Channel::Staff, Some(s.user.id))
        }
        None => (Channel::SelfService, None),
    };
    let ctx = Context {
        site,
        channel,
        by_user,
        now: Utc::now(),
        tz: st.cfg.tz,
    };
    let valid = match register::validate(input, &ctx) {
        Ok(v) => v,
        Err(e) => {
            st.metrics
                .registrations_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(ApiError::Invalid(e));
        }
    };
    // Checks that need the area hierarchy.
    let mut errs = Vec::new();
    if let Some(unit) = &valid.fields.unit_code {
        match st.store.area(unit).await? {
            Some(a) if a.path.starts_with(&site.area_path) && a.level >= 5 => {}
            _ => errs.push(FieldError::new("unit_code", "err.unit.not_here")),
        }
    }
    if let Some(res) = &valid.fields.residence_code {
        if st.store.area(res).await?.is_none() {
            errs.push(FieldError::new("residence_code", "err.area.unknown"));
        }
    }
    if !errs.is_empty() {
        st.metrics
            .registrations_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ApiError::Invalid(errs));
    }
    let new = register::seal(valid, &ctx, &st.vault);
    let submitted = Submitted {
        id: new.id,
        verification_code: new.verification_code.clone(),
        at: new.at,
        fever: epigrid_core::store::is_fever(&new.fields),
    };
    let named_companions = new.companion_list.iter().any(|c| c.person.is_some());
    let seq = st.store.insert_registration(new).await?;
    if named_companions {
        // companions are not added to a loaded trace index incrementally
        st.trace_changed();
    }
    st.metrics
        .registrations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Only when a feed is open: a send takes the channel's lock, which every worker shares.
    // (A feed that opens meanwhile misses nothing: it reads by sequence number, at the
    // latest every 2 s, as it does for other processes' registrations.)
    if st
        .metrics
        .live_clients
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        let _ = st.live.send(seq);
    }
    Ok(submitted)
}

async fn post_registration(
    State(st): State<AppState>,
    MaybeStaff(staff): MaybeStaff,
    Path(token): Path<String>,
    WholeBody(body): WholeBody,
) -> ApiResult<Response> {
    // The work in a box of its own: the router's layers move this future several times
    // before it first runs, and a registration's state (about 2.5 KB) was copied with it
    // every time.
    Box::pin(register_json(st, staff, token, body)).await
}

/// [`post_registration`]'s work.
async fn register_json(
    st: AppState,
    staff: Option<Staff>,
    token: String,
    body: Bytes,
) -> ApiResult<Response> {
    let site = st.site_by_token(&token).await?.ok_or(ApiError::NotFound)?;
    if let Some(s) = &staff {
        s.check_csrf_header()?;
    }
    // read straight into text fields: the hot path of the whole system
    let input =
        RegistrationInput::from_json_slice(&body).map_err(|e| ApiError::Invalid(vec![e]))?;
    let reg = submit(&st, &site, &input, staff.as_ref()).await?;
    // An anonymous caller gets a receipt, not the masked record: whoever holds a site's link
    // learns nothing back about the person (not even the person id) beyond what they typed.
    if let Some(s) = &staff {
        // as stored: the person it counts for may be one the typed record was merged into
        if let Some(stored) = st.store.registration(reg.id, &s.scope()).await? {
            return Ok(json_response(
                StatusCode::CREATED,
                &registration_json(&stored, st.cfg.tz),
            ));
        }
    }
    Ok(json_bytes_response(
        StatusCode::CREATED,
        receipt_body(&reg, &site, st.cfg.tz),
    ))
}

/// `from`/`to` as RFC 3339 or a local date. A time span's `to` is exclusive, so a local date
/// there means the end of that day (`from=2026-11-28&to=2026-11-28` is that whole day); in any
/// other field it means the start of the day.
pub(crate) fn parse_time(
    st: &AppState,
    field: &str,
    raw: &str,
) -> Result<DateTime<Utc>, FieldError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        // the bounds are local days, as a date typed in the field would be
        check_date(field, t.with_timezone(&st.cfg.tz).date_naive())?;
        return Ok(t.with_timezone(&Utc));
    }
    // a time must say its offset; a date alone is a local day
    let d = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| FieldError::new(field, "err.time.format"))?;
    check_date(field, d)?;
    Some(d)
        .and_then(|d| if field == "to" { d.succ_opt() } else { Some(d) })
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|dt| st.cfg.tz.from_local_datetime(&dt).single())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| FieldError::new(field, "err.date.format"))
}

/// The dates epigrid deals in: none before 2000 or after 2100.
pub(crate) fn check_date(field: &str, d: NaiveDate) -> Result<NaiveDate, FieldError> {
    const EARLIEST: (i32, &str) = (2000, "2000-01-01");
    const LATEST: (i32, &str) = (2100, "2100-12-31");
    if (EARLIEST.0..=LATEST.0).contains(&chrono::Datelike::year(&d)) {
        Ok(d)
    } else {
        Err(FieldError::new(field, "err.date.range")
            .with("min", EARLIEST.1)
            .with("max", LATEST.1))
    }
}

/// A query's values that are not blank, trimmed, by name (so that its errors come in the
/// same order every time).
fn filled(q: &HashMap<String, String>) -> impl Iterator<Item = (&String, &str)> {
    let mut v: Vec<(&String, &str)> = q
        .iter()
        .map(|(k, v)| (k, v.trim()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    v.sort_unstable_by_key(|(k, _)| k.as_str());
    v.into_iter()
}

/// The query values list filters share: a time span (`from`, `to`) and a page (`before`,
/// `limit`).
#[derive(Default)]
struct Span {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    before: Option<i64>,
    limit: Option<u32>,
}

impl Span {
    /// Reads `k=v` if it is one of the span's (a `limit` of 1 to `max_limit`); any other key
    /// is not the span's and is left alone.
    fn read(
        &mut self,
        st: &AppState,
        k: &str,
        v: &str,
        max_limit: u32,
        errs: &mut Vec<FieldError>,
    ) {
        match k {
            "from" | "to" => match parse_time(st, k, v) {
                Ok(t) if k == "from" => self.from = Some(t),
                Ok(t) => self.to = Some(t),
                Err(e) => errs.push(e),
            },
            "before" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => self.before = Some(n),
                Ok(_) => errs.push(FieldError::new("before", "err.int.min").with("min", "0")),
                Err(_) => errs.push(FieldError::new("before", "err.int.format")),
            },
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=i64::from(max_limit)).contains(&n) => self.limit = Some(n as u32),
                Ok(_) => errs.push(
                    FieldError::new("limit", "err.int.range")
                        .with("min", "1")
                        .with("max", max_limit.to_string()),
                ),
                Err(_) => errs.push(FieldError::new("limit", "err.int.format")),
            },
            _ => {}
        }
    }

    /// The span, once the filter's other values had no error (`errs`) and the span ends after
    /// it starts (an error on `to`: `from=2026-11-30&to=2026-11-29` holds no time at all).
    fn done(self, mut errs: Vec<FieldError>) -> Result<Span, Vec<FieldError>> {
        if let (Some(a), Some(b)) = (self.from, self.to) {
            if a >= b {
                errs.push(FieldError::new("to", "err.date.before_start"));
            }
        }
        if errs.is_empty() {
            Ok(self)
        } else {
            Err(errs)
        }
    }
}

pub(crate) fn registration_filter(
    st: &AppState,
    q: &HashMap<String, String>,
) -> Result<RegistrationFilter, Vec<FieldError>> {
    let mut f = RegistrationFilter {
        limit: 100,
        ..Default::default()
    };
    let mut span = Span::default();
    let mut errs = Vec::new();
    for (k, v) in filled(q) {
        match k.as_str() {
            "site" => match Uuid::parse_str(v) {
                Ok(id) => f.site_id = Some(id),
                Err(_) => errs.push(FieldError::new("site", "err.id.format")),
            },
            "kind" => match SiteKind::parse(v) {
                Some(kind) => f.kind = Some(kind),
                None => errs.push(FieldError::new("kind", "err.site.kind")),
            },
            "person" => match Uuid::parse_str(v) {
                Ok(id) => f.person_id = Some(id),
                Err(_) => errs.push(FieldError::new("person", "err.id.format")),
            },
            "after" => match v.parse::<i64>() {
                Ok(n) => f.after_seq = Some(n),
                Err(_) => errs.push(FieldError::new("after", "err.int.format")),
            },
            _ => span.read(st, k, v, 1000, &mut errs),
        }
    }
    let span = span.done(errs)?;
    (f.from, f.to, f.before_seq) = (span.from, span.to, span.before);
    f.limit = span.limit.unwrap_or(f.limit);
    Ok(f)
}

async fn list_registrations(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    staff.require(staff.role().sees_personal_data())?;
    let f = registration_filter(&st, &q).map_err(ApiError::Invalid)?;
    let rows = st.store.registrations(&staff.scope(), &f).await?;
    let next = rows
        .last()
        .map(|r| r.seq)
        .filter(|_| rows.len() as u32 == f.limit && f.after_seq.is_none());
    Ok(Json(json!({
        "items": rows.iter().map(|r| registration_json(r, st.cfg.tz)).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

pub(crate) async fn registration_in_scope(
    st: &AppState,
    staff: &Staff,
    id: &str,
) -> ApiResult<Registration> {
    staff.require(staff.role().sees_personal_data())?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    st.store
        .registration(id, &staff.scope())
        .await?
        .ok_or(ApiError::NotFound)
}

async fn get_registration(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let r = registration_in_scope(&st, &staff, &id).await?;
    let mut v = serde_json::to_value(registration_json(&r, st.cfg.tz))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // who travelled with them: names masked, as the person's own
    v["companion_list"] = st
        .store
        .registration_companions(r.id, &staff.scope())
        .await?
        .into_iter()
        .map(|(name, document)| {
            json!({"name": name.as_deref().map(crate::view::mask_name), "document": document})
        })
        .collect();
    Ok(Json(v).into_response())
}

/// Reveals a registration's name, document and phone number: allowed roles only, audited.
pub(crate) async fn unmask(
    st: &AppState,
    staff: &Staff,
    r: &Registration,
    reason: &str,
) -> ApiResult<Value> {
    staff.require(staff.role().may_unmask())?;
    // every unmasked read says why, in the audit log
    let reason = crate::persons::reason(reason).map_err(|e| ApiError::Invalid(vec![e]))?;
    // What was typed into this registration, sealed for the person it came in as: its own
    // phone number, and that person's document, not those of a record it was merged into.
    // Typing someone's ID number at a site must not read back what their record holds.
    let secrets = st
        .store
        .registration_secrets(r.id, &staff.scope())
        .await?
        .ok_or(ApiError::NotFound)?;
    let open = |col: &str, c: Option<&Vec<u8>>| -> ApiResult<Option<String>> {
        c.map(|c| {
            st.vault
                .open(&format!("persons.{col}:{}", secrets.came_in_as), c)
                .map_err(|e| ApiError::Internal(e.to_string()))
        })
        .transpose()
    };
    let doc = open("doc", secrets.doc_cipher.as_ref())?;
    let phone = open("phone", secrets.phone_cipher.as_ref())?;
    staff
        .audit_read(
            st,
            "unmask",
            &format!("registration:{}", r.id),
            &r.area_path,
            &format!(
                "person:{} fields=name,id_number,phone,address reason={}",
                r.person_id, reason
            ),
        )
        .await?;
    st.metrics
        .unmasks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(
        json!({"id": r.id, "person_id": r.person_id, "name": r.name, "id_type": secrets.doc_type, "id_number": doc, "phone": phone, "address": r.fields.address}),
    )
}

async fn unmask_registration(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    let r = registration_in_scope(&st, &staff, &id).await?;
    // `{"reason": "..."}`; without a body (or a reason) the reason is missing, and a body
    // that is not such an object says so
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.is_object() => Some(v),
            Ok(_) => return Err(ApiError::field("body", "err.body.not_object")),
            Err(_) => return Err(ApiError::field("body", "err.body.json")),
        }
    };
    let reason = match body.as_ref().and_then(|b| b.get("reason")) {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::field("reason", "err.text.format")),
    };
    Ok(Json(unmask(&st, &staff, &r, reason).await?))
}

async fn checkout_registration(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    staff.check_csrf_header()?;
    let r = registration_in_scope(&st, &staff, &id).await?;
    // only a venue's check-in lasts until the person leaves
    if r.kind != SiteKind::Venue {
        return Err(ApiError::Conflict("err.checkout.kind"));
    }
    if !st.store.check_out(r.id, r.site_id, Utc::now()).await? {
        return Err(ApiError::Conflict("err.checkout.done"));
    }
    st.trace_changed();
    let r = registration_in_scope(&st, &staff, &id).await?;
    Ok(Json(registration_json(&r, st.cfg.tz)).into_response())
}

/// The audit log's filters from a query: `user`, `action`, `subject` (exact), `from`/`to`
/// (as in the registration filters), `before` (a `seq`, the next page back) and `limit`.
pub(crate) fn audit_filter(
    st: &AppState,
    staff: &Staff,
    q: &HashMap<String, String>,
    default_limit: u32,
) -> Result<AuditFilter, Vec<FieldError>> {
    let mut f = AuditFilter {
        limit: default_limit,
        unplaced: staff.top_level(),
        ..Default::default()
    };
    let mut span = Span::default();
    let mut errs = Vec::new();
    for (k, v) in filled(q) {
        let mut text =
            |field: &str| match epigrid_core::validate::validate_text(field, v, 200, false) {
                Ok(t) => t,
                Err(e) => {
                    errs.push(e);
                    None
                }
            };
        match k.as_str() {
            "user" => f.username = text("user"),
            "action" => f.action = text("action"),
            "subject" => f.subject = text("subject"),
            _ => span.read(st, k, v, 10_000, &mut errs),
        }
    }
    let span = span.done(errs)?;
    (f.from, f.to, f.before_seq) = (span.from, span.to, span.before);
    f.limit = span.limit.unwrap_or(f.limit);
    Ok(f)
}

/// The seq to page back from when `rows` filled the page, else `None`.
pub(crate) fn audit_next(rows: &[AuditEntry], f: &AuditFilter) -> Option<i64> {
    rows.last()
        .map(|e| e.seq)
        .filter(|_| rows.len() as u32 == f.limit)
}

async fn audit(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    staff.require(staff.role() == Role::Admin)?;
    let f = audit_filter(&st, &staff, &q, 200).map_err(ApiError::Invalid)?;
    let rows = st.store.audit_log(&staff.scope(), &f).await?;
    Ok(Json(
        json!({"next_before": audit_next(&rows, &f), "items": rows}),
    ))
}

/// The audit log as CSV, with the same filters (up to 10,000 entries unless `limit` says
/// fewer); the export is itself audited.
async fn audit_csv(
    State(st): State<AppState>,
    staff: Staff,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    staff.require(staff.role() == Role::Admin)?;
    let f = audit_filter(&st, &staff, &q, 10_000).map_err(ApiError::Invalid)?;
    let rows = st.store.audit_log(&staff.scope(), &f).await?;
    let header = [
        "seq",
        "at",
        "username",
        "action",
        "subject",
        "area_path",
        "ip",
        "detail",
    ]
    .map(String::from);
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.at.to_rfc3339(),
                e.username.clone(),
                e.action.clone(),
                e.subject.clone(),
                e.area_path.clone(),
                e.ip.clone(),
                e.detail.clone(),
            ]
        })
        .collect();
    staff
        .audit_read(
            &st,
            "export",
            "audit.csv",
            &staff.user.area_path,
            &format!("rows={}", lines.len()),
        )
        .await?;
    Ok(crate::persons::csv_download("audit.csv", &header, &lines))
}

async fn list_users(State(st): State<AppState>, staff: Staff) -> ApiResult<Json<Value>> {
    staff.require(matches!(staff.role(), Role::Admin | Role::Manager))?;
    let users = st.store.users(&staff.scope()).await?;
    Ok(Json(
        json!({"items": users.iter().map(user_json).collect::<Vec<_>>()}),
    ))
}

/// Deactivates or reactivates a staff account in the admin's subtree: `{"active": false}`.
/// A deactivated account's sessions and tokens stop working (every request checks the
/// account), and it cannot log in; an admin cannot lock themselves out.
async fn change_user(
    State(st): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> ApiResult<Json<Value>> {
    staff.check_csrf_header()?;
    staff.require(staff.role() == Role::Admin)?;
    let mut errs = stray_fields(&b, &["active"], "err.field.unknown_user");
    let active = match b.get("active") {
        Some(Value::Bool(a)) => Some(*a),
        Some(_) => {
            errs.push(FieldError::new("active", "err.bool.format"));
            None
        }
        None => {
            errs.push(FieldError::new("active", "err.required"));
            None
        }
    };
    let Some(active) = active.filter(|_| errs.is_empty()) else {
        return Err(ApiError::Invalid(errs));
    };
    let user = set_user_active(&st, &staff, &id, active).await?;
    Ok(Json(user_json(&user)))
}

/// Deactivates (ending their sessions) or reactivates an account in an admin's subtree,
/// audited. Not the admin's own deactivation.
pub(crate) async fn set_user_active(
    st: &AppState,
    staff: &Staff,
    id: &str,
    active: bool,
) -> ApiResult<User> {
    staff.require(staff.role() == Role::Admin)?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    let mut user = st
        .store
        .user(id)
        .await?
        .filter(|u| staff.scope().contains(&u.area_path))
        .ok_or(ApiError::NotFound)?;
    if user.id == staff.user.id && !active {
        return Err(ApiError::Conflict("err.user.self"));
    }
    user.active = active;
    st.store.update_user(&user).await?;
    st.forget_sessions_of(user.id);
    staff
        .audit(
            st,
            if active {
                "user.activate"
            } else {
                "user.deactivate"
            },
            &format!("user:{}", user.id),
            &user.area_path,
            &user.username,
        )
        .await;
    if !active && user.role == Role::GridWorker {
        // the account is deactivated (and audited) whatever happens here
        crate::persons::hand_over_observations(st, user.id).await;
    }
    Ok(user)
}

/// Creates a staff account in the admin's subtree: `{"username","password","role","area_code"}`.
async fn create_user(
    State(st): State<AppState>,
    staff: Staff,
    JsonBody(b): JsonBody,
) -> ApiResult<Response> {
    staff.check_csrf_header()?;
    let user = add_user(&st, &staff, &b).await?;
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

/// Creates a staff account in the admin's subtree from `{"username","password","role",
/// "area_code"}` (the API's body, or a page's form), audited.
pub(crate) async fn add_user(st: &AppState, staff: &Staff, b: &Value) -> ApiResult<User> {
    staff.require(staff.role() == Role::Admin)?;
    let mut errs = Vec::new();
    let username = required_text(b, "username", &mut errs).map(|u| u.trim().to_string());
    if username.as_deref().is_some_and(|u| !valid_username(u)) {
        errs.push(FieldError::new("username", "err.username.format"));
    }
    let password = required_text(b, "password", &mut errs).unwrap_or("");
    if errs.iter().all(|e| e.field != "password") && !password_long_enough(password) {
        errs.push(FieldError::new("password", "err.password.short").with("min", "10"));
    }
    let role = match required_text(b, "role", &mut errs).map(Role::parse) {
        Some(None) => {
            errs.push(FieldError::new("role", "err.role.unknown"));
            None
        }
        r => r.flatten(),
    };
    let area = match required_text(b, "area_code", &mut errs) {
        Some(c) => {
            let a = st
                .store
                .area(c.trim())
                .await?
                .filter(|a| staff.scope().contains(&a.path));
            if a.is_none() {
                errs.push(FieldError::new("area_code", "err.area.not_in_scope"));
            }
            a
        }
        None => None,
    };
    let Some(username) = username else {
        return Err(ApiError::Invalid(errs));
    };
    let (Some(role), Some(area)) = (role, area) else {
        return Err(ApiError::Invalid(errs));
    };
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&pw))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)?;
    let user = User {
        id: Uuid::now_v7(),
        username,
        password_hash: hash,
        role,
        area_code: area.code,
        area_path: area.path,
        active: true,
        created_at: Utc::now(),
    };
    match st.store.insert_user(&user).await {
        Err(epigrid_core::store::StoreError::Conflict(_)) => {
            return Err(ApiError::field("username", "err.username.taken"))
        }
        r => r?,
    }
    staff
        .audit(
            st,
            "user.create",
            &format!("user:{}", user.id),
            &user.area_path,
            user.role.as_str(),
        )
        .await;
    Ok(user)
}

pub fn valid_username(u: &str) -> bool {
    (3..=40).contains(&u.chars().count())
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}
