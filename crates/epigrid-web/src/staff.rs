//! Staff pages: server-rendered HTML over the same core and store as the API. Every page shows
//! the caller's area breadcrumb; every list is scoped to their subtree; unmasking is a POST
//! that is audited.

use std::collections::HashMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{Duration, Utc};
use epigrid_core::area::{Area, Scope};
use epigrid_core::i18n::Lang;
use epigrid_core::model::{AuditEntry, Registration, Role, Site, SiteKind, User};
use epigrid_core::store::{metric, StoreResult};
use serde_json::Value;

use crate::api::{base_url, new_site, registration_filter, registration_in_scope, unmask};
use crate::auth::{self, MaybeStaff, Staff};
use crate::error::ApiError;
use crate::public::{url_decode_pairs, Tr};
use crate::state::AppState;
use crate::view::{detail_pairs, kind_key, local, mask_name, row_view, site_url, RowView};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout))
        .route("/sites", get(sites_page).post(sites_create))
        .route("/sites/{id}", get(site_page))
        .route("/sites/{id}/toggle", post(site_toggle))
        .route("/sites/{id}/rotate", post(site_rotate))
        .route("/sites/{id}/poster", get(poster))
        .route("/registrations", get(registrations_page))
        .route("/registrations/{id}", get(registration_page))
        .route("/registrations/{id}/unmask", post(registration_unmask))
        .route("/feed", get(feed_page))
        .route("/audit", get(audit_page))
        .route("/users", get(users_page).post(users_create))
        .route("/users/{id}/active", post(users_active))
}

const STAFF_CSS: &str = include_str!("../assets/staff.css");

pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "staff.css" => (
            [
                (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            STAFF_CSS,
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// What every staff page shows at the top.
pub struct Chrome {
    pub tr: Tr,
    pub username: String,
    pub role: Role,
    pub crumbs: Vec<Area>,
    pub csrf: String,
    pub is_admin: bool,
    /// The page's query without its language, for the language links (`site=…&`).
    pub kept_query: String,
}

pub(crate) async fn chrome(st: &AppState, s: &Staff, lang: Lang) -> Chrome {
    let mut crumbs = Vec::new();
    for code in s.user.area_path.split('/').filter(|c| !c.is_empty()) {
        if let Ok(Some(a)) = st.store.area(code).await {
            crumbs.push(a);
        }
    }
    Chrome {
        tr: Tr(lang),
        username: s.user.username.clone(),
        role: s.user.role,
        crumbs,
        csrf: s.session.csrf.clone(),
        is_admin: s.user.role == Role::Admin,
        kept_query: crate::error::kept_query(),
    }
}

/// Staff pages need a browser session; anything else goes to the login page.
pub(crate) fn logged_in(s: MaybeStaff) -> Result<Staff, Box<Response>> {
    match s.0 {
        Some(s) if s.by_cookie => Ok(s),
        _ => Err(Box::new(Redirect::to("/login").into_response())),
    }
}

/// The value of a store read, or the page's answer: the error as a page (a database out of
/// reach is a 503 page saying so), never a page of zeros and empty lists.
macro_rules! read_or_answer {
    ($read:expr) => {
        match $read {
            Ok(v) => v,
            Err(e) => return crate::error::ApiError::from(e).into_response(),
        }
    };
}
pub(crate) use read_or_answer;

fn page<T: Template>(t: T) -> Response {
    crate::view::html(StatusCode::OK, t)
}

/// A logged-in user whose role `may` open the page; else the login page or a 403 page.
pub(crate) fn logged_in_as(
    s: MaybeStaff,
    lang: Lang,
    may: fn(Role) -> bool,
) -> Result<Staff, Box<Response>> {
    let s = logged_in(s)?;
    if !may(s.role()) {
        return Err(Box::new(forbidden(lang)));
    }
    Ok(s)
}

/// A form's field errors as lines that name each field by its label on the form (`labels`:
/// field → label key; any other field: `other`).
fn labelled(
    errs: &[epigrid_core::validate::FieldError],
    lang: Lang,
    labels: &[(&str, &'static str)],
    other: &'static str,
) -> Vec<String> {
    let tr = Tr(lang);
    errs.iter()
        .map(|e| {
            let key = labels
                .iter()
                .find(|(f, _)| *f == e.field)
                .map_or(other, |(_, k)| k);
            format!("{}: {}", tr.t(key), e.message(lang))
        })
        .collect()
}

/// A posted form's fields, in order (keys may repeat).
type FormPairs = Vec<(String, String)>;

/// A form posted by a logged-in user whose role `may` post it, its CSRF token checked; else
/// the login page or a 403 page (saying the page is out of date when the token is wrong).
pub(crate) fn posted_form(
    staff: MaybeStaff,
    body: &[u8],
    lang: Lang,
    may: impl Fn(Role) -> bool,
) -> Result<(Staff, FormPairs), Box<Response>> {
    let s = logged_in(staff)?;
    let pairs = url_decode_pairs(body);
    if s.check_csrf(csrf_of(&pairs)).is_err() {
        return Err(Box::new(stale_form(lang)));
    }
    if !may(s.role()) {
        return Err(Box::new(forbidden(lang)));
    }
    Ok((s, pairs))
}

/// The 403 page for a form posted with a CSRF value that is not its session's: the page it
/// came from is out of date (not a lack of rights).
pub(crate) fn stale_form(lang: Lang) -> Response {
    crate::public::message(lang, StatusCode::FORBIDDEN, "err.csrf.title", "err.csrf")
}

pub(crate) fn forbidden(lang: Lang) -> Response {
    crate::public::message(
        lang,
        StatusCode::FORBIDDEN,
        "err.forbidden.title",
        "err.forbidden",
    )
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    tr: Tr,
    error: &'static str,
    username: String,
    /// the page to go on to after logging in (one asked for before)
    next: String,
    /// the same, encoded for the language links' query
    next_q: String,
}

async fn login_page(
    Extension(lang): Extension<Lang>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = q
        .get("next")
        .and_then(|n| crate::error::safe_next(n))
        .unwrap_or_default()
        .to_string();
    page(LoginPage {
        tr: Tr(lang),
        error: "",
        username: String::new(),
        next_q: crate::error::encode(&next),
        next,
    })
}

async fn login_submit(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Login CSRF: a page elsewhere must not log the browser into someone else's account. A
    // browser says where a form was sent from (Origin, Sec-Fetch-Site); other clients say
    // nothing and are not browsers.
    if cross_site(&st, &headers) {
        return forbidden(lang);
    }
    let pairs = url_decode_pairs(&body);
    let get = |k: &str| crate::public::form_value(&pairs, k).unwrap_or_default();
    let (username, password) = (get("username"), get("password"));
    let next = get("next");
    let next = crate::error::safe_next(&next)
        .unwrap_or_default()
        .to_string();
    let ip = auth::client_ip(&st, &headers, peer.map(|p| p.0 .0));
    match auth::login(&st, &username, &password, false, &ip).await {
        Ok((token, _, _)) => {
            let cookie = auth::session_cookie(&st, &token, st.cfg.session_hours * 3600);
            let to = if next.is_empty() { "/" } else { next.as_str() };
            ([(header::SET_COOKIE, cookie)], Redirect::to(to)).into_response()
        }
        Err(e) => {
            // a database out of reach is not a wrong password
            let error = match &e {
                ApiError::TooMany => "login.locked",
                ApiError::BadLogin => "login.failed",
                other => other.key(),
            };
            let status = e.status();
            // the answer's headers (Retry-After) and its log line
            let said = e.into_response();
            let mut res = page(LoginPage {
                tr: Tr(lang),
                error,
                username,
                next_q: crate::error::encode(&next),
                next,
            });
            *res.status_mut() = status;
            if let Some(v) = said.headers().get(header::RETRY_AFTER) {
                res.headers_mut().insert(header::RETRY_AFTER, v.clone());
            }
            res
        }
    }
}

/// Whether a browser sent this request from anywhere but this site's own pages.
/// `Sec-Fetch-Site` says so where the browser sends it (whatever proxies do to `Host`);
/// otherwise an `Origin` that is neither the request's host (`Host`, the first
/// `X-Forwarded-Host`) nor the configured base URL's, compared without case.
fn cross_site(st: &AppState, headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        // "same-site" is a sibling host, which may be somebody else's
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = text("origin") else {
        return false;
    };
    let host_of = |url: &str| {
        url.split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .map(str::to_string)
    };
    let Some(from) = host_of(origin) else {
        return true;
    };
    let configured = st.cfg.base_url.as_deref().and_then(host_of);
    let forwarded = text("x-forwarded-host").and_then(|h| h.split(',').next());
    ![text("host"), forwarded]
        .into_iter()
        .flatten()
        .map(|h| h.trim().to_string())
        .chain(configured)
        .any(|h| h.eq_ignore_ascii_case(&from))
}

async fn logout(State(st): State<AppState>, staff: MaybeStaff, body: Bytes) -> Response {
    if let Some(s) = staff.0 {
        let pairs = url_decode_pairs(&body);
        if s.check_csrf(csrf_of(&pairs)).is_ok() {
            let _ = st.store.delete_session(&s.token_hash).await;
            st.forget_session(&s.token_hash);
        }
    }
    (
        [(header::SET_COOKIE, auth::session_cookie(&st, "", 0))],
        Redirect::to("/login"),
    )
        .into_response()
}

/// The CSRF value a posted form carries.
pub(crate) fn csrf_of(pairs: &[(String, String)]) -> Option<&str> {
    pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    c: Chrome,
    /// (label, count as shown)
    today: Vec<(&'static str, String)>,
    /// (day, bar height, count as shown)
    week: Vec<(String, i64, String)>,
    week_max: i64,
    sites: usize,
}

async fn home(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
) -> Response {
    let s = match logged_in(staff) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let scope = s.scope();
    let today =
        (Utc::now() + Duration::seconds(i64::from(st.cfg.tz.local_minus_utc()))).date_naive();
    let mut counts = Vec::new();
    for (label, m) in [
        ("home.reg_today", metric::REG_ALL),
        ("home.fever_today", metric::REG_FEVER),
        ("home.symptomatic_today", metric::REG_SYMPTOMATIC),
        ("home.high_risk_today", metric::REG_HIGH_RISK),
    ] {
        let n = read_or_answer!(st.store.rollup_series(&scope, m, today, today).await)
            .first()
            .map(|x| x.1)
            .unwrap_or(0);
        counts.push((label, n));
    }
    // Aggregates only (analysts): a count under five, zero included, is shown as "<5", as
    // category counts are, so a small area's one fever case is not singled out.
    let small = !s.role().sees_personal_data();
    let shown = |n: i64| {
        if small && n < 5 {
            "<5".to_string()
        } else {
            n.to_string()
        }
    };
    let bar = |n: i64| if small && n < 5 { 0 } else { n };
    let series = read_or_answer!(
        st.store
            .rollup_series(&scope, metric::REG_ALL, today - Duration::days(6), today)
            .await
    );
    let week: Vec<(String, i64, String)> = (0..7)
        .map(|i| {
            let d = today - Duration::days(6 - i);
            let n = series.iter().find(|x| x.0 == d).map(|x| x.1).unwrap_or(0);
            (d.format("%m-%d").to_string(), bar(n), shown(n))
        })
        .collect();
    let week_max = week.iter().map(|x| x.1).max().unwrap_or(0).max(1);
    let sites = read_or_answer!(st.store.sites(&scope).await).len();
    page(HomePage {
        c: chrome(&st, &s, lang).await,
        today: counts.into_iter().map(|(l, n)| (l, shown(n))).collect(),
        week,
        week_max,
        sites,
    })
}

struct SiteRow {
    site: Site,
    kind_label: &'static str,
    area_name: String,
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesPage {
    c: Chrome,
    rows: Vec<SiteRow>,
    can_manage: bool,
    areas: Vec<Area>,
    errors: Vec<String>,
    /// what was typed into the form (kind, name, area), kept when it comes back
    typed: (String, String, String),
    kinds: Vec<(&'static str, &'static str)>,
}

async fn sites_view(
    st: &AppState,
    s: &Staff,
    lang: Lang,
    errors: Vec<String>,
    typed: (String, String, String),
) -> Response {
    let scope = s.scope();
    let sites = read_or_answer!(st.store.sites(&scope).await);
    let areas = read_or_answer!(st.store.areas_in(&scope, 4).await);
    let names: HashMap<&str, &str> = areas
        .iter()
        .map(|a| (a.code.as_str(), a.name.as_str()))
        .collect();
    let rows = sites
        .into_iter()
        .map(|site| SiteRow {
            kind_label: kind_key(site.kind),
            area_name: names
                .get(site.area_code.as_str())
                .map(|s| s.to_string())
                .unwrap_or_else(|| site.area_code.clone()),
            site,
        })
        .collect();
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut res = page(SitesPage {
        c: chrome(st, s, lang).await,
        rows,
        can_manage: s.role().manages_sites(),
        areas,
        errors,
        typed,
        kinds: SiteKind::ALL
            .iter()
            .map(|k| (k.as_str(), kind_key(*k)))
            .collect(),
    });
    *res.status_mut() = status;
    res
}

async fn sites_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
) -> Response {
    match logged_in(staff) {
        Ok(s) => sites_view(&st, &s, lang, Vec::new(), Default::default()).await,
        Err(r) => *r,
    }
}

async fn sites_create(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    body: Bytes,
) -> Response {
    let (s, pairs) = match posted_form(staff, &body, lang, Role::manages_sites) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let mut obj = serde_json::Map::new();
    for (k, v) in &pairs {
        if ["kind", "name", "area_code"].contains(&k.as_str()) {
            obj.insert(k.clone(), Value::String(v.clone()));
        }
    }
    match new_site(&st, &s, &Value::Object(obj)).await {
        Ok(site) => {
            if let Err(e) = st.store.insert_site(&site).await {
                return ApiError::from(e).into_response();
            }
            s.audit(
                &st,
                "site.create",
                &format!("site:{}", site.id),
                &site.area_path,
                site.kind.as_str(),
            )
            .await;
            Redirect::to(&format!("/sites/{}", site.id)).into_response()
        }
        Err(ApiError::Invalid(errs)) => {
            let get = |k: &str| crate::public::form_value(&pairs, k).unwrap_or_default();
            let labels = [("kind", "sites.kind"), ("name", "sites.name")];
            sites_view(
                &st,
                &s,
                lang,
                labelled(&errs, lang, &labels, "sites.area"),
                (get("kind"), get("name"), get("area_code")),
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}

/// The site with this id in the caller's area (`None`: no such site for them).
async fn load_site(st: &AppState, s: &Staff, id: &str) -> StoreResult<Option<Site>> {
    let Ok(id) = uuid::Uuid::parse_str(id) else {
        return Ok(None);
    };
    st.store.site(id, &s.scope()).await
}

#[derive(Template)]
#[template(path = "site.html")]
struct SitePage {
    c: Chrome,
    site: Site,
    kind_label: &'static str,
    url: String,
    qr: String,
    can_manage: bool,
    /// `None` for a role that sees aggregates only
    recent: Option<Vec<RowView>>,
}

async fn site_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match logged_in(staff) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(site) = read_or_answer!(load_site(&st, &s, &id).await) else {
        return ApiError::NotFound.into_response();
    };
    let url = site_url(&base_url(&st, &headers), &site);
    let qr = crate::qr::svg(&url, 240).unwrap_or_default();
    let qr = qr
        .split_once("?>")
        .map(|(_, svg)| svg.to_string())
        .unwrap_or(qr);
    let f = epigrid_core::model::RegistrationFilter {
        site_id: Some(site.id),
        limit: 20,
        ..Default::default()
    };
    // an analyst sees aggregates only: the site, not who registered there
    let recent = if s.role().sees_personal_data() {
        let rows = read_or_answer!(st.store.registrations(&s.scope(), &f).await);
        Some(rows.iter().map(|r| row_view(r, st.cfg.tz, lang)).collect())
    } else {
        None
    };
    page(SitePage {
        c: chrome(&st, &s, lang).await,
        kind_label: kind_key(site.kind),
        url,
        qr,
        can_manage: s.role().manages_sites(),
        recent,
        site,
    })
}

async fn site_change(
    st: AppState,
    lang: Lang,
    staff: MaybeStaff,
    id: String,
    body: Bytes,
    rotate: bool,
) -> Response {
    let (s, _) = match posted_form(staff, &body, lang, Role::manages_sites) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(mut site) = read_or_answer!(load_site(&st, &s, &id).await) else {
        return ApiError::NotFound.into_response();
    };
    let old = site.token.clone();
    let before = site.clone();
    if rotate {
        site.token = epigrid_core::vault::random_token(16);
    } else {
        site.active = !site.active;
    }
    if let Err(e) = st.store.update_site(&before, &site).await {
        return ApiError::changed_meanwhile("err.site.changed_meanwhile")(e).into_response();
    }
    st.forget_site(&old);
    let what = if rotate { "site.rotate" } else { "site.update" };
    s.audit(
        &st,
        what,
        &format!("site:{}", site.id),
        &site.area_path,
        &format!("active={}", site.active),
    )
    .await;
    Redirect::to(&format!("/sites/{}", site.id)).into_response()
}

async fn site_toggle(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    site_change(st, lang, staff, id, body, false).await
}

async fn site_rotate(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    site_change(st, lang, staff, id, body, true).await
}

#[derive(Template)]
#[template(path = "poster.html")]
struct PosterPage {
    tr: Tr,
    site: Site,
    kind_label: &'static str,
    url: String,
    qr: String,
    area: String,
}

async fn poster(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match logged_in(staff) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(site) = read_or_answer!(load_site(&st, &s, &id).await) else {
        return ApiError::NotFound.into_response();
    };
    let url = site_url(&base_url(&st, &headers), &site);
    let qr = crate::qr::svg(&url, 600).unwrap_or_default();
    let qr = qr
        .split_once("?>")
        .map(|(_, svg)| svg.to_string())
        .unwrap_or(qr);
    let area = st
        .store
        .area(&site.area_code)
        .await
        .ok()
        .flatten()
        .map(|a| a.name)
        .unwrap_or_default();
    page(PosterPage {
        tr: Tr(lang),
        kind_label: kind_key(site.kind),
        url,
        qr,
        area,
        site,
    })
}

#[derive(Template)]
#[template(path = "registrations.html")]
struct RegistrationsPage {
    c: Chrome,
    rows: Vec<RowView>,
    sites: Vec<Site>,
    q: HashMap<String, String>,
    errors: Vec<String>,
    next: String,
    kinds: Vec<(&'static str, &'static str)>,
}

impl RegistrationsPage {
    fn qv(&self, k: &str) -> &str {
        self.q.get(k).map(|s| s.as_str()).unwrap_or("")
    }
}

async fn registrations_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match logged_in_as(staff, lang, Role::sees_personal_data) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let scope = s.scope();
    let (rows, errors, next) = match registration_filter(&st, &q) {
        Ok(f) => {
            let rows = read_or_answer!(st.store.registrations(&scope, &f).await);
            let next = match rows.last() {
                Some(last) if rows.len() as u32 == f.limit => {
                    older_link("/registrations", &q, last.seq)
                }
                _ => String::new(),
            };
            (rows, Vec::new(), next)
        }
        Err(errs) => {
            let labels = [
                ("site", "detail.site"),
                ("kind", "sites.kind"),
                ("from", "filter.from"),
                ("to", "filter.to"),
                ("before", "filter.before"),
                ("limit", "filter.limit"),
            ];
            (
                Vec::new(),
                labelled(&errs, lang, &labels, "nav.registrations"),
                String::new(),
            )
        }
    };
    let sites = read_or_answer!(st.store.sites(&scope).await);
    page(RegistrationsPage {
        c: chrome(&st, &s, lang).await,
        rows: rows.iter().map(|r| row_view(r, st.cfg.tz, lang)).collect(),
        sites,
        q,
        errors,
        next,
        kinds: SiteKind::ALL
            .iter()
            .map(|k| (k.as_str(), kind_key(*k)))
            .collect(),
    })
}

/// The same page with the same filters, one page further back (`before=seq`).
fn older_link(path: &str, q: &HashMap<String, String>, seq: i64) -> String {
    let mut q = q.clone();
    q.insert("before".into(), seq.to_string());
    with_query(path, &q)
}

/// `path` with the query `q` (in a stable order; `before` last).
fn with_query(path: &str, q: &HashMap<String, String>) -> String {
    let mut nq: Vec<(&String, &String)> = q.iter().filter(|(k, _)| k.as_str() != "lang").collect();
    nq.sort_by_key(|(k, _)| (k.as_str() == "before", k.as_str()));
    let nq: Vec<String> = nq.iter().map(|(k, v)| format!("{k}={}", pct(v))).collect();
    if nq.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", nq.join("&"))
    }
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "registration.html")]
struct RegistrationPage {
    c: Chrome,
    reg: Registration,
    pairs: Vec<(&'static str, String)>,
    unmasked: Option<(String, String, String)>,
    can_unmask: bool,
    name: String,
    /// why an unmask was refused (a missing reason)
    unmask_error: String,
}

/// An area as staff read it: its name, a unit's with its building's (`1号楼 2单元`); `None`
/// for an unknown code.
pub(crate) async fn area_label(
    st: &AppState,
    code: &str,
) -> epigrid_core::store::StoreResult<Option<String>> {
    let Some(area) = st.store.area(code).await? else {
        return Ok(None);
    };
    if area.level >= 6 {
        if let Some(parent) = area.parent_code.as_deref() {
            if let Some(b) = st.store.area(parent).await? {
                return Ok(Some(format!("{} {}", b.name, area.name)));
            }
        }
    }
    Ok(Some(area.name))
}

async fn registration_view(
    st: &AppState,
    s: &Staff,
    lang: Lang,
    id: &str,
    unmasked: Option<Value>,
    unmask_error: String,
) -> Response {
    let reg = match registration_in_scope(st, s, id).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut pairs = detail_pairs(&reg, st.cfg.tz, lang);
    // areas by name (a unit with its building), not by code
    for (key, code) in [
        ("form.unit", reg.fields.unit_code.as_deref()),
        ("detail.residence", reg.fields.residence_code.as_deref()),
    ] {
        let Some(code) = code else { continue };
        let Some(name) = read_or_answer!(area_label(st, code).await) else {
            continue;
        };
        if let Some(p) = pairs.iter_mut().find(|p| p.0 == key) {
            p.1 = name;
        }
    }
    // who travelled with them, by name (masked) and whether a document was given
    let companions = match st.store.registration_companions(reg.id, &s.scope()).await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let tr = Tr(lang);
    let listed: Vec<String> = companions
        .iter()
        .filter(|(name, _)| name.is_some())
        .map(|(name, document)| {
            let name = mask_name(name.as_deref().unwrap_or_default());
            if *document {
                format!("{name} ({})", tr.t("detail.companion_document"))
            } else {
                name
            }
        })
        .collect();
    if !listed.is_empty() {
        pairs.push((
            "detail.companions",
            listed.join(crate::view::list_separator(lang)),
        ));
    }
    let unmasked = unmasked.map(|v| {
        let g = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        // the address in full, where the masked one was
        if let Some(p) = pairs.iter_mut().find(|p| p.0 == "form.address") {
            p.1 = g("address");
        }
        (g("name"), g("id_number"), g("phone"))
    });
    page(RegistrationPage {
        c: chrome(st, s, lang).await,
        pairs,
        name: mask_name(&reg.name),
        can_unmask: s.role().may_unmask(),
        unmasked,
        unmask_error,
        reg,
    })
}

async fn registration_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(id): Path<String>,
) -> Response {
    match logged_in(staff) {
        Ok(s) => registration_view(&st, &s, lang, &id, None, String::new()).await,
        Err(r) => *r,
    }
}

async fn registration_unmask(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, pairs) = match posted_form(staff, &body, lang, |_| true) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let reason: String = pairs
        .iter()
        .find(|(k, _)| k == "reason")
        .map(|(_, v)| v.chars().take(200).collect())
        .unwrap_or_default();
    let reg = match registration_in_scope(&st, &s, &id).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match unmask(&st, &s, &reg, &reason).await {
        Ok(v) => registration_view(&st, &s, lang, &id, Some(v), String::new()).await,
        Err(ApiError::Forbidden) => forbidden(lang),
        // a missing reason: the same page, saying so by the reason box
        Err(ApiError::Invalid(errs)) => {
            let msg = errs.iter().map(|e| e.message(lang)).collect::<Vec<_>>();
            let mut res = registration_view(&st, &s, lang, &id, None, msg.join(" ")).await;
            *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            res
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Template)]
#[template(path = "feed.html")]
struct FeedPage {
    c: Chrome,
    sites: Vec<Site>,
    site: String,
    initial: Vec<RowView>,
}

async fn feed_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match logged_in_as(staff, lang, Role::sees_personal_data) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let scope: Scope = s.scope();
    let sites = read_or_answer!(st.store.sites(&scope).await);
    let site = q.get("site").cloned().unwrap_or_default();
    let f = epigrid_core::model::RegistrationFilter {
        site_id: uuid::Uuid::parse_str(&site).ok(),
        limit: 30,
        ..Default::default()
    };
    let initial = read_or_answer!(st.store.registrations(&scope, &f).await);
    page(FeedPage {
        c: chrome(&st, &s, lang).await,
        sites,
        site,
        initial: initial
            .iter()
            .map(|r| row_view(r, st.cfg.tz, lang))
            .collect(),
    })
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    c: Chrome,
    /// (local time, what was done in words, the entry, its detail in words)
    rows: Vec<(String, String, AuditEntry, String)>,
    /// every action the log may hold: (code, in words)
    actions: Vec<(String, String)>,
    q: HashMap<String, String>,
    errors: Vec<String>,
    next: String,
    /// the same entries as a CSV download
    csv: String,
}

impl AuditPage {
    fn qv(&self, k: &str) -> &str {
        self.q.get(k).map(|s| s.as_str()).unwrap_or("")
    }

    /// A value for a link's query.
    fn enc(&self, v: &str) -> String {
        pct(v)
    }
}

/// An audit entry's detail as the page shows it. Stored as compact English (`fields=name,phone
/// reason=…`, `by phone, 2 found`, `home 14 days`) so that the log and its CSV read the same
/// for everyone; shown word by word in the reader's language where the catalogue has the
/// word (`audit.word.*`), ids, numbers and free text (a reason) as they are.
pub(crate) fn detail_words(lang: Lang, action: &str, detail: &str) -> String {
    if lang == Lang::En {
        return detail.to_string();
    }
    // a category change's words are categories (`none -> confirmed`)
    let families: &[&str] = if action == "category.change" {
        &["category", "audit.word"]
    } else {
        &["audit.word"]
    };
    // `lookup`, not `t`: the words come from stored text (ids, numbers, reasons), and `t`
    // keeps every unknown key it is asked for
    let word = |w: &str| -> Option<&'static str> {
        families
            .iter()
            .find_map(|f| epigrid_core::i18n::lookup(lang, &format!("{f}.{w}")))
    };
    let said = |w: &str| word(w).map_or_else(|| w.to_string(), str::to_string);
    // an exact lookup: `by phone, 2 found`
    if let Some((how, n)) = detail
        .strip_prefix("by ")
        .and_then(|r| r.split_once(", "))
        .and_then(|(how, n)| Some((how, n.strip_suffix(" found")?)))
    {
        return epigrid_core::i18n::tf(lang, "audit.lookup", &[("how", &said(how)), ("n", n)]);
    }
    let (head, reason) = match detail.find("reason=") {
        Some(i) => (&detail[..i], Some(&detail[i + "reason=".len()..])),
        None => (detail, None),
    };
    let mut out: Vec<String> = head
        .split_whitespace()
        .map(|tok| match tok.split_once('=') {
            Some((k, v)) => {
                let values: Vec<String> = v.split(',').map(said).collect();
                format!("{}：{}", said(k), values.join("、"))
            }
            None => match tok.strip_suffix(':') {
                Some(w) => format!("{}：", said(w)),
                None => said(tok),
            },
        })
        .collect();
    if let Some(r) = reason {
        out.push(format!("{}：{r}", said("reason")));
    }
    out.join(" ")
}

/// An action in the reader's language, its code when the catalogue has none.
fn action_words(lang: Lang, action: &str) -> String {
    epigrid_core::i18n::lookup(lang, &format!("audit.action.{action}"))
        .map_or_else(|| action.to_string(), str::to_string)
}

async fn audit_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match logged_in_as(staff, lang, |r| r == Role::Admin) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (rows, errors, next) = match crate::api::audit_filter(&st, &s, &q, 200) {
        Ok(f) => {
            let rows = read_or_answer!(st.store.audit_log(&s.scope(), &f).await);
            let next = crate::api::audit_next(&rows, &f)
                .map(|seq| older_link("/audit", &q, seq))
                .unwrap_or_default();
            (rows, Vec::new(), next)
        }
        Err(errs) => {
            let labels = [
                ("user", "audit.user"),
                ("action", "audit.action"),
                ("subject", "audit.subject"),
                ("from", "filter.from"),
                ("to", "filter.to"),
                ("before", "filter.before"),
                ("limit", "filter.limit"),
            ];
            (
                Vec::new(),
                labelled(&errs, lang, &labels, "nav.audit"),
                String::new(),
            )
        }
    };
    let mut actions: Vec<(String, String)> = epigrid_core::i18n::keys(lang)
        .iter()
        .filter_map(|k| {
            let a = k.strip_prefix("audit.action.")?;
            Some((a.to_string(), epigrid_core::i18n::t(lang, k).to_string()))
        })
        .collect();
    actions.sort_by(|a, b| a.1.cmp(&b.1));
    page(AuditPage {
        c: chrome(&st, &s, lang).await,
        rows: rows
            .into_iter()
            .map(|e| {
                let detail = detail_words(lang, &e.action, &e.detail);
                (
                    local(e.at, st.cfg.tz),
                    action_words(lang, &e.action),
                    e,
                    detail,
                )
            })
            .collect(),
        actions,
        csv: with_query("/api/v1/audit.csv", &q),
        q,
        errors,
        next,
    })
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    c: Chrome,
    users: Vec<User>,
    can_create: bool,
    areas: Vec<Area>,
    roles: Vec<Role>,
    /// what was typed into the form (username, role, area), kept when it comes back
    typed: (String, String, String),
    errors: Vec<String>,
    created: String,
}

impl UsersPage {
    /// An account's area by name, when it is among the page's areas; else its code.
    fn area_name<'a>(&'a self, code: &'a str) -> &'a str {
        self.areas
            .iter()
            .find(|a| a.code == code)
            .map_or(code, |a| a.name.as_str())
    }
}

/// Staff accounts in the caller's area (admins and managers); admins create them here.
async fn users_page(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match logged_in(staff) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let created = q.get("created").cloned().unwrap_or_default();
    users_view(&st, &s, lang, Default::default(), Vec::new(), created).await
}

async fn users_view(
    st: &AppState,
    s: &Staff,
    lang: Lang,
    typed: (String, String, String),
    errors: Vec<String>,
    created: String,
) -> Response {
    if !matches!(s.role(), Role::Admin | Role::Manager) {
        return forbidden(lang);
    }
    let scope = s.scope();
    let users = match st.store.users(&scope).await {
        Ok(u) => u,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let areas = read_or_answer!(st.store.areas_in(&scope, 4).await);
    // "added" only for an account that is there (the name comes from the address)
    let created = if users.iter().any(|u| u.username == created) {
        created
    } else {
        String::new()
    };
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut res = page(UsersPage {
        c: chrome(st, s, lang).await,
        users,
        can_create: s.role() == Role::Admin,
        areas,
        roles: Role::ALL.to_vec(),
        typed,
        errors,
        created,
    });
    *res.status_mut() = status;
    res
}

/// `POST /users/{id}/active` (`active=0|1`): an admin deactivates or reactivates an account.
async fn users_active(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, pairs) = match posted_form(staff, &body, lang, |r| r == Role::Admin) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    // anything but 0 or 1 is refused, not read as "deactivate"
    let active = match crate::public::form_value(&pairs, "active").as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => return ApiError::field("active", "err.bool.format").into_response(),
    };
    match crate::api::set_user_active(&st, &s, &id, active).await {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn users_create(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    body: Bytes,
) -> Response {
    let (s, pairs) = match posted_form(staff, &body, lang, |r| r == Role::Admin) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let get = |k: &str| crate::public::form_value(&pairs, k).unwrap_or_default();
    let b = serde_json::json!({
        "username": get("username"), "password": get("password"),
        "role": get("role"), "area_code": get("area_code"),
    });
    match crate::api::add_user(&st, &s, &b).await {
        Ok(u) => Redirect::to(&format!("/users?created={}", u.username)).into_response(),
        Err(ApiError::Invalid(errs)) => {
            let labels = [
                ("username", "login.username"),
                ("password", "login.password"),
                ("role", "users.role"),
            ];
            let errors = labelled(&errs, lang, &labels, "sites.area");
            // the password is not sent back
            let typed = (get("username"), get("role"), get("area_code"));
            users_view(&st, &s, lang, typed, errors, String::new()).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::detail_words;
    use epigrid_core::Lang;

    #[test]
    fn audit_details_read_in_chinese_and_keep_ids_and_reasons() {
        let zh = |action, d| detail_words(Lang::Zh, action, d);
        assert_eq!(
            zh("person.lookup", "by phone, 2 found"),
            "按手机号查找，找到 2 人"
        );
        assert_eq!(
            zh(
                "unmask",
                "person:0191 fields=name,id_number reason=复核 home address"
            ),
            "person:0191 字段：姓名、证件号码 事由：复核 home address"
        );
        assert_eq!(zh("observation.start", "home 14 days"), "居家 14 天");
        assert_eq!(zh("category.change", "none -> confirmed"), "无 -> 确诊病例");
        assert_eq!(
            zh("list.decide", "line=3 person=p1 confirmed"),
            "行：3 人员：p1 确认"
        );
        assert_eq!(zh("site.update", "active=false"), "启用：否");
        assert_eq!(zh("login", "browser"), "浏览器");
        // English is what is stored
        assert_eq!(
            detail_words(Lang::En, "person.lookup", "by phone, 2 found"),
            "by phone, 2 found"
        );
    }
}
