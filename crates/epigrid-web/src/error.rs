//! The error policy: every failure becomes a clear, localised response; nothing panics and no
//! internal detail (or personal data) reaches the client. 5xx are logged with the route only.

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use epigrid_core::i18n::{t, Lang};
use epigrid_core::store::StoreError;
use epigrid_core::validate::FieldError;
use serde_json::json;

tokio::task_local! {
    /// The language of the request being handled (for error messages).
    pub static LANG: Lang;
    /// The page's query without its `lang`, each pair followed by `&` (`site=…&`): the
    /// language links of a staff page keep the page's filters.
    pub static KEPT_QUERY: String;
}

/// The request's language: `?lang=`, then the `lang` cookie, then `Accept-Language`.
pub fn lang_of(headers: &HeaderMap, query: Option<&str>) -> Lang {
    if let Some(l) = query_lang(query) {
        return l;
    }
    if let Some(c) = cookie(headers, "lang") {
        if let Some(l) = Lang::from_tag(&c) {
            return l;
        }
    }
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .map(Lang::from_accept_language)
        .unwrap_or_default()
}

/// A language chosen in the address (`?lang=en`).
fn query_lang(query: Option<&str>) -> Option<Lang> {
    query?
        .split('&')
        .filter_map(|p| p.strip_prefix("lang="))
        .find_map(Lang::from_tag)
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}

/// Middleware: runs the request with its language in [`LANG`] and as an extension.
pub async fn with_lang(mut req: Request, next: Next) -> Response {
    let lang = lang_of(req.headers(), req.uri().query());
    let api = req.uri().path().starts_with("/api/");
    // the public forms and personal links: their users have no staff pages to go back to
    let public = ["/s/", "/r/", "/n/"]
        .iter()
        .any(|p| req.uri().path().starts_with(p));
    // a language chosen on a page (`?lang=en`) sticks for the pages after it
    let chosen = if api {
        None
    } else {
        query_lang(req.uri().query())
    };
    // a page asked for before logging in, to return to after it (kept as the shared URI; a
    // string is made only for a redirect to the login)
    let asked = (!api && req.method() == axum::http::Method::GET).then(|| req.uri().clone());
    req.extensions_mut().insert(lang);
    // (staff pages only: `staff::chrome` draws the language links that keep it; the API and
    // the public pages have none)
    let kept: String = req
        .uri()
        .query()
        .filter(|_| !api && !public)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("lang="))
        .map(|p| format!("{p}&"))
        .collect();
    let res = LANG
        .scope(
            lang,
            KEPT_QUERY.scope(kept, async move {
                match nul_in_uri(req.uri()) {
                    Some(e) => e.into_response(),
                    None => next.run(req).await,
                }
            }),
        )
        .await;
    let res = localise_rejection(res, lang, api);
    if api {
        return res;
    }
    let mut res = error_page(res, lang, !public).await;
    let to_login = res
        .headers()
        .get(header::LOCATION)
        .is_some_and(|l| l == "/login");
    if let Some(to) = asked
        .filter(|_| to_login)
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
        .filter(|p| p != "/" && !p.starts_with("/login"))
    {
        if let Ok(v) = header::HeaderValue::from_str(&format!("/login?next={}", encode(&to))) {
            res.headers_mut().insert(header::LOCATION, v);
        }
    }
    if let Some(l) = chosen {
        if let Ok(v) = header::HeaderValue::from_str(&format!(
            "lang={}; Path=/; Max-Age=31536000; SameSite=Lax",
            l.code()
        )) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

/// Percent-encodes a path and query for use as one query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a login may send the browser on: a page of this site (a path, not `//host` or a
/// scheme), never back to the login.
pub(crate) fn safe_next(next: &str) -> Option<&str> {
    (next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/login")
        && !next.contains('\\')
        && !next.chars().any(char::is_control))
    .then_some(next)
}

/// A NUL byte (`%00`) in the address: no path or value holds one (PostgreSQL cannot even
/// store it), so a path with one names nothing (404) and a query value with one is a field
/// error, before any handler or store sees them.
fn nul_in_uri(uri: &axum::http::Uri) -> Option<ApiError> {
    if uri.path().contains("%00") {
        return Some(ApiError::NotFound);
    }
    let pair = uri.query()?.split('&').find(|p| p.contains("%00"))?;
    let key = pair
        .split('=')
        .next()
        .filter(|k| !k.contains("%00") && !k.is_empty());
    Some(ApiError::field(
        key.unwrap_or("query"),
        "err.text.invalid_chars",
    ))
}

/// A page, not JSON, for an error on a staff page or a form: some page handlers end early
/// with an [`ApiError`] (out of scope, forbidden), which answers JSON. The page says the
/// error's own message(s), already in the user's language.
async fn error_page(res: Response, lang: Lang, home: bool) -> Response {
    let status = res.status();
    if !content_type_is(&res, "application/json")
        || !(status.is_client_error() || status.is_server_error())
    {
        return res;
    }
    let (parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let messages: Vec<String> = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["errors"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    if messages.is_empty() {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let title = match status {
        StatusCode::UNAUTHORIZED => "err.unauthorized",
        StatusCode::FORBIDDEN => "err.forbidden.title",
        StatusCode::NOT_FOUND => "err.not_found",
        StatusCode::UNPROCESSABLE_ENTITY => "err.invalid",
        StatusCode::TOO_MANY_REQUESTS => "err.too_many",
        StatusCode::SERVICE_UNAVAILABLE => "err.unavailable.title",
        StatusCode::INTERNAL_SERVER_ERROR => "err.internal.title",
        _ => "err.request.bad",
    };
    let sep = if lang == Lang::Zh { "" } else { " " };
    crate::public::page_text(lang, status, title, &messages.join(sep), home)
}

fn content_type_is(res: &Response, mime: &str) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(mime.as_bytes()))
}

/// A request refused by an extractor before any handler ran (a path segment that is not UTF-8
/// or not a number, a body over the limit, a form that is not a form) comes back from axum as
/// English plain text. It is answered like every other error instead: in the user's language,
/// as JSON for the API and as a page for everything else. (None of epigrid's own 4xx
/// responses is plain text.)
fn localise_rejection(res: Response, lang: Lang, api: bool) -> Response {
    let status = res.status();
    // a method a route does not take: the router answers with no body at all
    let no_method = status == StatusCode::METHOD_NOT_ALLOWED
        && res.headers().get(header::CONTENT_TYPE).is_none();
    if !no_method && (!content_type_is(&res, "text/plain") || !status.is_client_error()) {
        return res;
    }
    let key = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "err.body.too_large"
    } else if no_method {
        "err.method"
    } else {
        "err.request.bad"
    };
    let allow = res.headers().get(header::ALLOW).cloned();
    let mut res = localised(status, lang, key, api);
    if let Some(a) = allow {
        res.headers_mut().insert(header::ALLOW, a);
    }
    res
}

fn localised(status: StatusCode, lang: Lang, key: &'static str, api: bool) -> Response {
    if api {
        (status, axum::Json(general_error(lang, key))).into_response()
    } else {
        crate::public::message(lang, status, key, key)
    }
}

pub fn current_lang() -> Lang {
    LANG.try_with(|l| *l).unwrap_or_default()
}

/// [`KEPT_QUERY`] of the request being answered.
pub fn kept_query() -> String {
    KEPT_QUERY.try_with(|q| q.clone()).unwrap_or_default()
}

#[derive(Debug)]
pub enum ApiError {
    /// 401: no or bad credentials.
    Unauthorized,
    /// 403: logged in, but the role may not do this.
    Forbidden,
    /// 404: absent, or outside the caller's scope (indistinguishable on purpose).
    NotFound,
    /// 410: the site was deactivated, the link revoked.
    Gone(&'static str),
    /// 413: the request body is over the limit.
    TooLarge,
    /// 409: a uniqueness or state rule.
    Conflict(&'static str),
    /// 409: a state rule that one field's value breaks (one of many people chosen, say),
    /// named like a field error so the caller can tell which.
    ConflictAt(FieldError),
    /// 422: field-level validation errors.
    Invalid(Vec<FieldError>),
    /// 429: too many attempts (a login locked for [`crate::auth::LOCK_WINDOW`]).
    TooMany,
    /// 401: a login with a wrong username or password.
    BadLogin,
    /// 500: logged, never detailed to the client.
    Internal(String),
    /// 503: the database cannot be reached; logged, and the client told to try again soon.
    Unavailable(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Conflict(_) => ApiError::Conflict("err.conflict"),
            StoreError::Unstorable(m) => {
                tracing::warn!(error = %m, "a request's value could not be stored");
                ApiError::field("request", "err.value.unstorable")
            }
            StoreError::Invalid(m) | StoreError::Backend(m) => ApiError::Internal(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl ApiError {
    pub fn field(field: &str, key: &'static str) -> ApiError {
        ApiError::Invalid(vec![FieldError::new(field, key)])
    }

    /// A store error of a compare-and-set update: its `Conflict` (the record changed since it
    /// was read) as 409 `key` ("changed meanwhile, reload"), anything else as usual.
    pub(crate) fn changed_meanwhile(key: &'static str) -> impl FnOnce(StoreError) -> ApiError {
        move |e| match e {
            StoreError::Conflict(_) => ApiError::Conflict(key),
            e => ApiError::from(e),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::BadLogin => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) | ApiError::ConflictAt(_) => StatusCode::CONFLICT,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooMany => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The message key of a non-field error.
    pub fn key(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "err.unauthorized",
            ApiError::BadLogin => "login.failed",
            ApiError::Forbidden => "err.forbidden",
            ApiError::NotFound => "err.not_found",
            ApiError::Gone(k) | ApiError::Conflict(k) => k,
            ApiError::ConflictAt(e) => e.key,
            ApiError::Invalid(_) => "err.invalid",
            ApiError::TooLarge => "err.body.too_large",
            ApiError::TooMany => "err.too_many",
            ApiError::Internal(_) => "err.internal",
            ApiError::Unavailable(_) => "err.unavailable",
        }
    }

    /// What went wrong, in words (for the command line).
    pub fn messages(&self, lang: Lang) -> Vec<String> {
        match self {
            ApiError::Invalid(errs) => errs.iter().map(|e| e.message(lang)).collect(),
            ApiError::ConflictAt(e) => vec![e.message(lang)],
            other => vec![t(lang, other.key()).to_string()],
        }
    }

    pub fn body(&self, lang: Lang) -> serde_json::Value {
        match self {
            ApiError::Invalid(errs) => json!({
                "errors": errs.iter().map(|e| json!({"field": e.field, "message": e.message(lang), "code": e.key})).collect::<Vec<_>>()
            }),
            ApiError::ConflictAt(e) => json!({
                "errors": [{"field": e.field, "message": e.message(lang), "code": e.key}]
            }),
            other => general_error(lang, other.key()),
        }
    }
}

/// The body of an error that is about the request, not a field: `key`'s message in `lang`.
fn general_error(lang: Lang, key: &str) -> serde_json::Value {
    json!({"errors": [{"field": null, "message": t(lang, key), "code": key}]})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            // Store messages never contain personal data (see StoreError::Backend).
            ApiError::Internal(m) => tracing::error!(error = %m, "internal error"),
            ApiError::Unavailable(m) => tracing::warn!(error = %m, "database unavailable"),
            _ => {}
        }
        let mut res = (self.status(), axum::Json(self.body(current_lang()))).into_response();
        match self {
            ApiError::Unauthorized | ApiError::BadLogin => {
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            ApiError::TooMany => {
                res.headers_mut().insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from(crate::auth::LOCK_WINDOW.as_secs()),
                );
            }
            ApiError::Unavailable(_) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
            }
            _ => {}
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
