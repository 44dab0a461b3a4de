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
mod staff;
mod state;
mod view;

pub use api::valid_username;
pub use auth::hash_password;
pub use error::ApiError;
pub use lists::{decode_text, read_list};
pub use openapi::spec as openapi_spec;
pub use state::{parse_observation_days, AppState, WebConfig};

use axum::routing::get;
use axum::Router;

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
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}
