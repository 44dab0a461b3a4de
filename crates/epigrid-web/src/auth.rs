//! Staff authentication: argon2 password hashes, server-side sessions (cookie) and API tokens
//! (`Authorization: Bearer`), both stored only as SHA-256 hashes; CSRF synchronizer tokens for
//! cookie-authenticated changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use chrono::Utc;
use epigrid_core::area::Scope;
use epigrid_core::model::{AuditEntry, AuditFilter, Role, Session, User};
use epigrid_core::store::StoreResult;
use epigrid_core::vault::{random_token, token_hash};
use uuid::Uuid;

use crate::error::{cookie, ApiError, ApiResult};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "epigrid_session";
/// The header a browser session's JSON calls carry their CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";

pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom_fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn getrandom_fill(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("the operating system provides randomness");
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so that timing does not reveal
/// which usernames exist.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("no such user").unwrap_or_default())
}

/// Failed logins in the last window, by username and client address, and by username alone.
/// Five failures lock a name from that address; [`LOCK_NAME_AFTER`] from anywhere lock it
/// from everywhere. Locking by name alone let anyone who knew a colleague's username lock
/// them out for a quarter of an hour with five wrong guesses.
static FAILURES: std::sync::LazyLock<Mutex<HashMap<String, (u32, Instant)>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));
const LOCK_AFTER: u32 = 5;
/// Failures from all addresses together that lock a name everywhere (guessing spread over
/// many addresses).
const LOCK_NAME_AFTER: u32 = 30;
pub(crate) const LOCK_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Above this many entries, those whose window has passed are dropped.
const FAILURES_KEPT: usize = 10_000;

/// The keys a failure counts under: the name from this address, and the name.
fn failure_keys(username: &str, ip: &str) -> [(String, u32); 2] {
    [
        (format!("{username}\u{0}{ip}"), LOCK_AFTER),
        (username.to_string(), LOCK_NAME_AFTER),
    ]
}

fn locked(username: &str, ip: &str) -> bool {
    let g = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    failure_keys(username, ip).iter().any(|(k, limit)| {
        g.get(k)
            .is_some_and(|(n, at)| n >= limit && at.elapsed() < LOCK_WINDOW)
    })
}

fn record_failure(username: &str, ip: &str) {
    let mut g = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    if g.len() >= FAILURES_KEPT {
        g.retain(|_, (_, at)| at.elapsed() < LOCK_WINDOW);
    }
    for (k, _) in failure_keys(username, ip) {
        let e = g.entry(k).or_insert((0, Instant::now()));
        if e.1.elapsed() >= LOCK_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// A login that succeeds clears its address's count; the name's own count runs out with its
/// window (guesses from elsewhere go on counting).
fn clear_failures(username: &str, ip: &str) {
    let [(pair, _), _] = failure_keys(username, ip);
    FAILURES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pair);
}

/// The lockout as the audit log tells it, for a real account: the failures every server
/// sharing the database has recorded, and those before a restart (the counts in memory are
/// this process's since it started). From this address: the failures since its last login
/// from here.
async fn locked_by_the_log(st: &AppState, user: &User, ip: &str) -> ApiResult<bool> {
    let window = chrono::Duration::from_std(LOCK_WINDOW).unwrap_or_default();
    let entries = st
        .store
        .audit_log(
            &Scope::all(),
            &AuditFilter {
                subject: Some(format!("user:{}", user.id)),
                from: Some(Utc::now() - window),
                limit: 4 * LOCK_NAME_AFTER,
                ..Default::default()
            },
        )
        .await?;
    let failed = |e: &&AuditEntry| e.action == "login_failed";
    let from_here = entries
        .iter()
        .filter(|e| e.ip == ip)
        .take_while(|e| e.action != "login")
        .filter(failed)
        .count();
    let anywhere = entries.iter().filter(failed).count();
    Ok(from_here >= LOCK_AFTER as usize || anywhere >= LOCK_NAME_AFTER as usize)
}

/// Checks a username and password and opens a session; returns the raw token (shown once).
pub async fn login(
    st: &AppState,
    username: &str,
    password: &str,
    api: bool,
    ip: &str,
) -> ApiResult<(String, Session, User)> {
    let username = username.trim();
    if locked(username, ip) {
        return Err(ApiError::TooMany);
    }
    // no account has a name with control characters (nor could the database hold a NUL)
    let user = if username.chars().any(char::is_control) {
        None
    } else {
        st.store.user_by_username(username).await?
    };
    if let Some(u) = &user {
        if locked_by_the_log(st, u, ip).await? {
            return Err(ApiError::TooMany);
        }
    }
    let ok = match &user {
        Some(u) => {
            let (p, h) = (password.to_string(), u.password_hash.clone());
            tokio::task::spawn_blocking(move || verify_password(&p, &h))
                .await
                .unwrap_or(false)
                && u.active
        }
        None => {
            let p = password.to_string();
            let _ = tokio::task::spawn_blocking(move || verify_password(&p, dummy_hash())).await;
            false
        }
    };
    let user = match user {
        Some(u) if ok => u,
        user => {
            record_failure(username, ip);
            // An attempt on a real account is seen by the admins over that account's area; one
            // as nobody (no area) by the admins of a top-level area.
            let (subject, area) = match &user {
                Some(u) => (format!("user:{}", u.id), u.area_path.as_str()),
                None => ("user".to_string(), "/"),
            };
            // An unknown name may be a password typed into the wrong box: only its first
            // character is kept.
            let name: String = match &user {
                Some(u) => u.username.clone(),
                None => username
                    .chars()
                    .find(|c| !c.is_control())
                    .map(|c| format!("{c}***"))
                    .unwrap_or_default(),
            };
            // (a failed entry is logged; the answer is the same)
            let _ = audit_raw(st, None, &name, "login_failed", &subject, area, ip, "").await;
            return Err(ApiError::BadLogin);
        }
    };
    clear_failures(username, ip);
    let token = random_token(32);
    let now = Utc::now();
    let session = Session {
        token_hash: token_hash(&token),
        user_id: user.id,
        csrf: if api { String::new() } else { random_token(16) },
        api,
        created_at: now,
        expires_at: now + chrono::Duration::hours(st.cfg.session_hours),
    };
    st.store.insert_session(&session).await?;
    let _ = audit_raw(
        st,
        Some(user.id),
        &user.username,
        "login",
        &format!("user:{}", user.id),
        &user.area_path,
        ip,
        if api { "api token" } else { "browser" },
    )
    .await;
    Ok((token, session, user))
}

/// The client's address as the server saw it, or as the reverse proxy said when the server
/// is configured to trust one (`WebConfig::trust_proxy`).
pub fn client_ip(st: &AppState, headers: &HeaderMap, peer: Option<std::net::SocketAddr>) -> String {
    headers
        .get("x-forwarded-for")
        .filter(|_| st.cfg.trust_proxy)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| peer.map(|p| p.ip().to_string()))
        .unwrap_or_else(|| "-".into())
}

/// Appends an audit entry; a failure is logged and returned (callers recording what is done
/// already go on; a read of personal data stops, `Staff::audit_read`).
#[allow(clippy::too_many_arguments)]
pub async fn audit_raw(
    st: &AppState,
    user_id: Option<Uuid>,
    username: &str,
    action: &str,
    subject: &str,
    area_path: &str,
    ip: &str,
    detail: &str,
) -> StoreResult<()> {
    let e = AuditEntry::now(user_id, username, action, subject, area_path, ip, detail);
    st.store.append_audit(&e).await.inspect_err(|err| {
        tracing::error!(error = %err, action, "audit write failed");
    })
}

/// A logged-in staff member, from a bearer token or the session cookie.
#[derive(Debug, Clone)]
pub struct Staff {
    pub user: User,
    pub session: Session,
    pub token_hash: Vec<u8>,
    /// True when authenticated by cookie: changes then need the CSRF token.
    pub by_cookie: bool,
    pub ip: String,
    /// The request's `X-CSRF-Token` header, kept (by a browser session only) for
    /// [`Staff::check_csrf_header`].
    csrf_header: Option<axum::http::HeaderValue>,
}

impl Staff {
    pub fn scope(&self) -> Scope {
        Scope::new(self.user.area_path.clone())
    }
    /// Whether the account's area is a top-level one (a city, say), with nothing above it.
    pub fn top_level(&self) -> bool {
        self.user.area_path.matches('/').count() == 2
    }
    pub fn role(&self) -> Role {
        self.user.role
    }
    pub fn require(&self, ok: bool) -> ApiResult<()> {
        if ok {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
    /// For cookie sessions, `provided` must equal the session's CSRF token.
    pub fn check_csrf(&self, provided: Option<&str>) -> ApiResult<()> {
        if !self.by_cookie {
            return Ok(());
        }
        match provided {
            Some(p)
                if !self.session.csrf.is_empty()
                    && constant_eq(p.as_bytes(), self.session.csrf.as_bytes()) =>
            {
                Ok(())
            }
            _ => Err(ApiError::Forbidden),
        }
    }
    /// [`Staff::check_csrf`] with the token of the request's `X-CSRF-Token` header (JSON API
    /// calls made from a browser session).
    pub fn check_csrf_header(&self) -> ApiResult<()> {
        self.check_csrf(self.csrf_header.as_ref().and_then(|v| v.to_str().ok()))
    }

    /// Records a change already made (a failed write is logged: the change stands).
    pub async fn audit(
        &self,
        st: &AppState,
        action: &str,
        subject: &str,
        area_path: &str,
        detail: &str,
    ) {
        let _ = self.record(st, action, subject, area_path, detail).await;
    }

    /// Records a read of personal data (an unmask, an export, a lookup) before it is shown:
    /// when the entry cannot be written, the read is refused (503, or 500), so nothing is
    /// disclosed that the audit log does not hold.
    pub async fn audit_read(
        &self,
        st: &AppState,
        action: &str,
        subject: &str,
        area_path: &str,
        detail: &str,
    ) -> ApiResult<()> {
        self.record(st, action, subject, area_path, detail)
            .await
            .map_err(ApiError::from)
    }

    async fn record(
        &self,
        st: &AppState,
        action: &str,
        subject: &str,
        area_path: &str,
        detail: &str,
    ) -> StoreResult<()> {
        let (id, name, ip) = (Some(self.user.id), &self.user.username, &self.ip);
        audit_raw(st, id, name, action, subject, area_path, ip, detail).await
    }
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
pub(crate) fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|s| s.trim().to_string())
}

/// Finds the staff member behind a request, if any.
pub async fn staff_of(st: &AppState, parts: &Parts) -> ApiResult<Option<Staff>> {
    let (token, by_cookie) = match bearer(&parts.headers) {
        Some(t) => (t, false),
        None => match cookie(&parts.headers, SESSION_COOKIE) {
            Some(t) => (t, true),
            None => return Ok(None),
        },
    };
    let hash = token_hash(&token);
    let Some((session, user)) = st.session(&hash).await? else {
        return Ok(None);
    };
    if session.api == by_cookie {
        // An API token in a cookie or a browser session as a bearer token: refuse.
        return Ok(None);
    }
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    Ok(Some(Staff {
        user,
        session,
        token_hash: hash,
        by_cookie,
        ip: client_ip(st, &parts.headers, peer),
        csrf_header: by_cookie
            .then(|| parts.headers.get(CSRF_HEADER).cloned())
            .flatten(),
    }))
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        staff_of(st, parts).await?.ok_or(ApiError::Unauthorized)
    }
}

/// Optional staff (public routes that staff may also use, e.g. registering someone).
pub struct MaybeStaff(pub Option<Staff>);

impl FromRequestParts<AppState> for MaybeStaff {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let staff = staff_of(st, parts).await?;
        // A bearer token is a claim to act as staff: a wrong or expired one is refused, not
        // quietly taken as an anonymous self-registration. (An old session cookie on a public
        // form is just a visitor.)
        if staff.is_none() && bearer(&parts.headers).is_some() {
            return Err(ApiError::Unauthorized);
        }
        Ok(MaybeStaff(staff))
    }
}

pub fn session_cookie(st: &AppState, token: &str, max_age_s: i64) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if st.cfg.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    )
}
