#![recursion_limit = "512"]
//! epigrid's HTTP layer: the axum router, public self-registration forms, staff pages and the
//! JSON API. Handlers turn requests into core types, decide with core, and call the `Store`.
//!
//! * `public` — `/s/{token}` forms and confirmation screens (no login, no JavaScript needed).
//! * `api` — `/api/v1/...` JSON for staff tools and integrations.
//! * `staff` — server-rendered staff pages (login, sites, registrations, live field view).
//! * `feed` — the live feed (server-sent events), fanned out in process and polled from the
//!   database so several processes behind one PostgreSQL all see every registration.

mod api;
mod auth;
mod chains;
mod contacts;
mod error;
mod feed;
mod lists;
mod metrics;
mod notices;
mod openapi;
mod persons;
mod public;
mod qr;
pub mod serve;
mod staff;
mod state;
mod view;

pub use api::{password_long_enough, valid_username};
pub use auth::hash_password;
pub use error::ApiError;
pub use feed::PG_LOOKBACK as FEED_PG_LOOKBACK;
pub use lists::{decode_text, read_list};
pub use openapi::spec as openapi_spec;
pub use state::{parse_observation_days, AppState, WebConfig, LOOKUPS_PER_WINDOW};

use axum::routing::get;
use axum::Router;

/// The retention purge ([`epigrid_core::store::Store::purge_before`]): the registrations made
/// more than `WebConfig::retention_days` ago by people staff never acted on, then those
/// people; audited as `retention.purge` with its counts (no one's data), for the top-level
/// admins. Nothing when everything is kept (0 days).
pub async fn purge_expired(
    st: &AppState,
) -> Result<epigrid_core::store::Purged, epigrid_core::store::StoreError> {
    let days = st.cfg.retention_days;
    let Some(before) = st.cfg.retention_horizon() else {
        return Ok(Default::default());
    };
    let purged = st.store.purge_before(before).await?;
    tracing::info!(
        registrations = purged.registrations,
        persons = purged.persons,
        days,
        "retention purge"
    );
    if purged != Default::default() {
        // a loaded trace index holds what is gone
        st.trace_changed();
        let detail = format!(
            "{} registrations, {} people; made before {}",
            purged.registrations,
            purged.persons,
            before.format("%Y-%m-%d %H:%M UTC")
        );
        let subject = format!("retention:{days}d");
        let _ = auth::audit_raw(
            st,
            None,
            "epigrid",
            "retention.purge",
            &subject,
            "/",
            "",
            &detail,
        )
        .await;
    }
    Ok(purged)
}

/// The largest request body taken, in bytes (list uploads have their own, larger limit).
/// Enforced twice: by the router's `DefaultBodyLimit` layer, and by `api::WholeBody`, which
/// cannot see that layer (a route that raises its own limit must not read through it).
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;

/// Whether session cookies carry the Secure flag: when asked (`--secure-cookies`), and when
/// the public base URL is https (browsers then reach the server over https, and a cookie also
/// sent over plain http would give a session away on a hostile network).
pub fn secure_cookies(asked: bool, base_url: Option<&str>) -> bool {
    asked
        || base_url.is_some_and(|u| {
            u.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        })
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(metrics::render))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .merge(api::routes())
        .merge(public::routes())
        .merge(staff::routes())
        .merge(persons::routes())
        .merge(contacts::routes())
        .merge(notices::routes())
        .merge(chains::routes())
        .merge(lists::routes())
        .route("/assets/{*file}", get(staff::asset))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(error::with_lang))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Headers every response carries: no page may be framed by another site (clickjacking of
/// an unmask or a category change), no content is sniffed into another type, and no address
/// is sent on as a Referer (report links and notices carry their secret in the path).
async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
    res
}
