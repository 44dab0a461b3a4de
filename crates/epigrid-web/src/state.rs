//! Shared application state and small caches.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::FixedOffset;
use epigrid_core::model::{Session, Site, User};
use epigrid_core::store::{Store, StoreResult};
use epigrid_core::vault::Vault;
use tokio::sync::broadcast;

use crate::metrics::Metrics;

/// Settings of the web layer.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Public base URL encoded in QR codes (`https://epigrid.example.org`); when None, the
    /// request's `Host` header is used.
    pub base_url: Option<String>,
    /// Local time zone for display and local days (Asia/Shanghai: +08:00).
    pub tz: FixedOffset,
    /// Lifetime of a browser session or API token.
    pub session_hours: i64,
    /// Mark cookies `Secure` (behind HTTPS).
    pub secure_cookies: bool,
    /// Observation length per category where it differs from the built-in default.
    pub observation_days: std::collections::HashMap<epigrid_core::person::Category, u32>,
    /// Hours without a daily report after which a person under observation is overdue.
    pub overdue_hours: i64,
    /// Take the client's address from `X-Forwarded-For` (set this behind a reverse proxy
    /// that sets it); otherwise anyone could write any address into the audit log.
    pub trust_proxy: bool,
    /// Days registrations of people nobody acted on are kept (0: all kept); see
    /// [`crate::purge_expired`].
    pub retention_days: u32,
    /// A token `/metrics` asks for (`Authorization: Bearer …`); none: `/metrics` is open, for
    /// a Prometheus on a private network.
    pub metrics_token: Option<String>,
}

impl WebConfig {
    /// Since when registrations of people nobody acted on are kept, if they are not all kept.
    pub fn retention_horizon(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        (self.retention_days > 0)
            .then(|| chrono::Utc::now() - chrono::Duration::days(self.retention_days.into()))
    }

    /// The default length of observation for a person in `category`, in days.
    pub fn observation_days(&self, category: epigrid_core::person::Category) -> u32 {
        self.observation_days
            .get(&category)
            .copied()
            .unwrap_or_else(|| category.default_observation_days())
    }
}

/// Parses `close_contact=14,confirmed=28` (the `--observation-days` setting).
pub fn parse_observation_days(
    s: &str,
) -> Result<std::collections::HashMap<epigrid_core::person::Category, u32>, String> {
    let mut out = std::collections::HashMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected category=days, got {part:?}"))?;
        let c = epigrid_core::person::Category::parse(k.trim())
            .ok_or_else(|| format!("unknown category {k:?}"))?;
        let d: u32 = v
            .trim()
            .parse()
            .ok()
            .filter(|d| (1..=90).contains(d))
            .ok_or_else(|| format!("days for {k} must be 1-90, got {v:?}"))?;
        out.insert(c, d);
    }
    Ok(out)
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            base_url: None,
            tz: FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset"),
            session_hours: 12,
            secure_cookies: false,
            observation_days: Default::default(),
            overdue_hours: 36,
            trust_proxy: false,
            retention_days: 0,
            metrics_token: None,
        }
    }
}

type SessionUser = (Session, User);

/// A loaded tracing index and what it was loaded for.
pub struct TraceCache {
    pub loaded: epigrid_core::trace::Loaded,
    pub since: chrono::DateTime<chrono::Utc>,
    pub version: u64,
    pub loaded_at: Instant,
}

/// Longest a trace index is reused before a full reload.
pub const TRACE_TTL: Duration = Duration::from_secs(600);
/// A small map whose entries expire after [`CACHE_TTL`].
type Cache<K, V> = RwLock<HashMap<K, (V, Instant)>>;

/// How long a cached site (or, on SQLite, session) may be served before it is read again.
/// Other processes' changes to a site (deactivated, its link changed) take effect within
/// this time; sessions are not cached on PostgreSQL (see [`AppState::session`]).
const CACHE_TTL: Duration = Duration::from_secs(10);

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub vault: Vault,
    pub cfg: WebConfig,
    /// Wakes live feeds when this process stores a registration (the sequence number).
    pub live: broadcast::Sender<i64>,
    pub metrics: Metrics,
    sites: Cache<String, Option<Arc<Site>>>,
    /// The tracing engine's index, kept between traces and brought up to date with newer
    /// registrations; rebuilt when `trace_version` moved (check-outs, merges, corrections,
    /// companions) or after [`TRACE_TTL`] (changes made by other processes).
    pub trace_cache: tokio::sync::Mutex<Option<TraceCache>>,
    pub trace_version: std::sync::atomic::AtomicU64,
    /// Sessions read lately, kept only where this process is the store's one writer (SQLite),
    /// which forgets a session the moment it ends here. On PostgreSQL other processes log
    /// people out and deactivate accounts, so every request reads the session (a primary-key
    /// lookup; registrations, the busy path, carry none).
    sessions: Option<Cache<Vec<u8>, Option<SessionUser>>>,
    /// Public forms sent, by the one-time value each form carries: a second tap, or the
    /// browser sending the form again, is shown the first one's confirmation instead of
    /// storing the registration twice (`None` while the first is still being stored).
    sent_forms: std::sync::Mutex<HashMap<String, (Option<uuid::Uuid>, Instant)>>,
    /// Each user's recent exact lookups of people by ID or phone number (see
    /// [`AppState::allow_lookup`]).
    lookups: std::sync::Mutex<HashMap<uuid::Uuid, std::collections::VecDeque<Instant>>>,
}

/// How many exact lookups by ID or phone number a user may make in [`LOOKUP_WINDOW`]: enough
/// for people on the telephone, too few to try every number a masked one could be.
pub const LOOKUPS_PER_WINDOW: usize = 30;
pub const LOOKUP_WINDOW: Duration = Duration::from_secs(900);

/// What became of a form sent before (see [`AppState::claim_form`]).
pub enum FormClaim {
    /// Not seen before: this request stores it.
    New,
    /// Stored already, as this registration.
    Stored(uuid::Uuid),
    /// Another request is storing it right now.
    Busy,
}

/// How long a sent form is remembered.
const FORM_TTL: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, vault: Vault, cfg: WebConfig) -> AppState {
        let (live, _) = broadcast::channel(1024);
        AppState(Arc::new(Inner {
            sessions: (store.backend() == "sqlite").then(|| RwLock::new(HashMap::new())),
            store,
            vault,
            cfg,
            live,
            metrics: Metrics::default(),
            sites: RwLock::new(HashMap::new()),
            trace_cache: tokio::sync::Mutex::new(None),
            trace_version: std::sync::atomic::AtomicU64::new(0),
            sent_forms: std::sync::Mutex::new(HashMap::new()),
            lookups: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Counts an exact lookup by `user`; false when they have made [`LOOKUPS_PER_WINDOW`]
    /// in the last fifteen minutes (in this process; the message says when to try again).
    pub fn allow_lookup(&self, user: uuid::Uuid) -> bool {
        let mut g = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        let recent = g.entry(user).or_default();
        while recent.front().is_some_and(|t| t.elapsed() > LOOKUP_WINDOW) {
            recent.pop_front();
        }
        if recent.len() >= LOOKUPS_PER_WINDOW {
            return false;
        }
        recent.push_back(Instant::now());
        true
    }

    /// Claims a form's one-time value for this request (see `Inner::sent_forms`).
    pub fn claim_form(&self, nonce: &str) -> FormClaim {
        let mut g = self.sent_forms.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() > 50_000 {
            g.retain(|_, (_, at)| at.elapsed() < FORM_TTL);
        }
        match g.get(nonce).filter(|(_, at)| at.elapsed() < FORM_TTL) {
            Some((Some(id), _)) => FormClaim::Stored(*id),
            Some((None, _)) => FormClaim::Busy,
            None => {
                g.insert(nonce.to_string(), (None, Instant::now()));
                FormClaim::New
            }
        }
    }

    /// Settles a claimed form: stored as `id`, or (`None`) not stored, free to send again.
    pub fn settle_form(&self, nonce: &str, id: Option<uuid::Uuid>) {
        let mut g = self.sent_forms.lock().unwrap_or_else(|e| e.into_inner());
        match id {
            Some(id) => {
                g.insert(nonce.to_string(), (Some(id), Instant::now()));
            }
            None => {
                g.remove(nonce);
            }
        }
    }
}

fn cached<K, Q, V>(map: &RwLock<HashMap<K, (V, Instant)>>, k: &Q) -> Option<V>
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Clone,
{
    let g = map.read().unwrap_or_else(|e| e.into_inner());
    g.get(k)
        .filter(|(_, at)| at.elapsed() < CACHE_TTL)
        .map(|(v, _)| v.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(map: &RwLock<HashMap<K, (V, Instant)>>, k: K, v: V) {
    let mut g = map.write().unwrap_or_else(|e| e.into_inner());
    if g.len() > 10_000 {
        g.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
    }
    g.insert(k, (v, Instant::now()));
}

impl Inner {
    /// The site with this public token (cached briefly; the hot path of every registration).
    pub async fn site_by_token(&self, token: &str) -> StoreResult<Option<Arc<Site>>> {
        if let Some(s) = cached(&self.sites, token) {
            return Ok(s);
        }
        let site = self.store.site_by_token(token).await?.map(Arc::new);
        remember(&self.sites, token.to_string(), site.clone());
        Ok(site)
    }

    /// Something a trace index cannot pick up incrementally changed: rebuild it next time.
    pub fn trace_changed(&self) {
        self.trace_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets the cached sessions of an account (deactivated: its next request is refused at
    /// once; on PostgreSQL nothing is cached, so every process refuses it at once).
    pub fn forget_sessions_of(&self, user: uuid::Uuid) {
        if let Some(c) = &self.sessions {
            c.write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, (s, _)| s.as_ref().is_none_or(|(_, u)| u.id != user));
        }
    }

    pub fn forget_site(&self, token: &str) {
        self.sites
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// The live session for a token hash (cached briefly).
    pub async fn session(&self, hash: &[u8]) -> StoreResult<Option<(Session, User)>> {
        let now = chrono::Utc::now();
        if let Some(s) = self.sessions.as_ref().and_then(|c| cached(c, hash)) {
            return Ok(s.filter(|(s, _)| s.expires_at > now));
        }
        let s = self.store.session(hash, now).await?;
        if let Some(c) = &self.sessions {
            remember(c, hash.to_vec(), s.clone());
        }
        Ok(s)
    }

    pub fn forget_session(&self, hash: &[u8]) {
        if let Some(c) = &self.sessions {
            c.write().unwrap_or_else(|e| e.into_inner()).remove(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use epigrid_core::person::Category;

    #[test]
    fn observation_days_are_read_per_category_and_bad_settings_are_named() {
        let m = super::parse_observation_days("close_contact=21, confirmed = 28").unwrap();
        assert_eq!(m.get(&Category::CloseContact), Some(&21));
        let cfg = super::WebConfig {
            observation_days: m,
            ..Default::default()
        };
        assert_eq!(cfg.observation_days(Category::CloseContact), 21);
        assert_eq!(cfg.observation_days(Category::Fever), 7, "built-in default");
        assert!(super::parse_observation_days("").unwrap().is_empty());
        assert!(super::parse_observation_days("zombie=3")
            .unwrap_err()
            .contains("zombie"));
        assert!(super::parse_observation_days("fever=0").is_err());
        assert!(super::parse_observation_days("fever").is_err());
    }
}
