//! Prometheus metrics, kept with atomics on the request path (no locks once a route is known),
//! and one structured log line per request with the route template only — never the raw path
//! or query, which can hold site tokens or searched ID numbers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Default)]
pub struct RouteStats {
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; 10],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// Route template → (method, stats) pairs.
type RouteTable = HashMap<String, Vec<(&'static str, Arc<RouteStats>)>>;

#[derive(Default)]
pub struct Metrics {
    /// Route template → per-method stats; looked up by `&str`, so a known route costs no
    /// allocation on the request path.
    routes: RwLock<RouteTable>,
    pub registrations: AtomicU64,
    pub registrations_refused: AtomicU64,
    pub unmasks: AtomicU64,
    pub live_clients: AtomicU64,
}

impl Metrics {
    fn route(&self, method: &'static str, path: &str) -> Arc<RouteStats> {
        let known = |m: &RouteTable| {
            m.get(path)
                .and_then(|v| v.iter().find(|(x, _)| *x == method))
                .map(|(_, s)| s.clone())
        };
        if let Some(s) = known(&self.routes.read().unwrap_or_else(|e| e.into_inner())) {
            return s;
        }
        let mut g = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = known(&g) {
            return s;
        }
        let s = Arc::new(RouteStats::default());
        g.entry(path.to_string())
            .or_default()
            .push((method, s.clone()));
        s
    }
}

fn method_name(m: &axum::http::Method) -> &'static str {
    match *m {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_name(req.method());
    // MatchedPath is a cheap clone of a shared string; no allocation per request
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched
        .as_ref()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let elapsed = start.elapsed();
    let stats = st.metrics.route(method, route);
    stats.by_class[usize::from((status / 100).clamp(1, 5)) - 1].fetch_add(1, Relaxed);
    let secs = elapsed.as_secs_f64();
    if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
        stats.buckets[i].fetch_add(1, Relaxed);
    }
    stats.sum_us.fetch_add(elapsed.as_micros() as u64, Relaxed);
    stats.count.fetch_add(1, Relaxed);
    if status >= 500 {
        tracing::warn!(method, route = %route, status, elapsed_ms = secs * 1000.0, "request failed");
    } else {
        tracing::debug!(method, route = %route, status, elapsed_ms = secs * 1000.0, "request");
    }
    res
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time.
fn bears(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    crate::auth::constant_eq(given.as_bytes(), token.as_bytes())
}

pub async fn render(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &st.cfg.metrics_token {
        if !bears(&headers, token) {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                "/metrics needs the metrics token (Authorization: Bearer ...)\n",
            )
                .into_response();
        }
    }
    use std::fmt::Write;
    let m = &st.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP epigrid_registrations_total Registrations stored by this process."
    );
    let _ = writeln!(out, "# TYPE epigrid_registrations_total counter");
    let _ = writeln!(
        out,
        "epigrid_registrations_total {}",
        m.registrations.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP epigrid_registrations_refused_total Registrations refused for invalid input."
    );
    let _ = writeln!(out, "# TYPE epigrid_registrations_refused_total counter");
    let _ = writeln!(
        out,
        "epigrid_registrations_refused_total {}",
        m.registrations_refused.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP epigrid_unmask_total Audited reveals of masked personal data."
    );
    let _ = writeln!(out, "# TYPE epigrid_unmask_total counter");
    let _ = writeln!(out, "epigrid_unmask_total {}", m.unmasks.load(Relaxed));
    let _ = writeln!(
        out,
        "# HELP epigrid_live_clients Open live-feed connections."
    );
    let _ = writeln!(out, "# TYPE epigrid_live_clients gauge");
    let _ = writeln!(out, "epigrid_live_clients {}", m.live_clients.load(Relaxed));
    let _ = writeln!(
        out,
        "# HELP epigrid_store_backend The storage backend in use."
    );
    let _ = writeln!(out, "# TYPE epigrid_store_backend gauge");
    let _ = writeln!(
        out,
        "epigrid_store_backend{{backend=\"{}\"}} 1",
        st.store.backend()
    );
    let routes: Vec<_> = m
        .routes
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .flat_map(|(route, v)| {
            v.iter()
                .map(move |(method, s)| ((route.clone(), *method), s.clone()))
        })
        .collect();
    let _ = writeln!(
        out,
        "# HELP epigrid_http_requests_total HTTP requests by route template and status class."
    );
    let _ = writeln!(out, "# TYPE epigrid_http_requests_total counter");
    for ((route, method), s) in &routes {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = s.by_class[i].load(Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "epigrid_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{class}\"}} {n}"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP epigrid_http_request_duration_seconds Request latency by route template."
    );
    let _ = writeln!(
        out,
        "# TYPE epigrid_http_request_duration_seconds histogram"
    );
    for ((route, method), s) in &routes {
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += s.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "epigrid_http_request_duration_seconds_bucket{{method=\"{method}\",route=\"{route}\",le=\"{b}\"}} {cum}"
            );
        }
        let count = s.count.load(Relaxed);
        let _ = writeln!(
            out,
            "epigrid_http_request_duration_seconds_bucket{{method=\"{method}\",route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "epigrid_http_request_duration_seconds_sum{{method=\"{method}\",route=\"{route}\"}} {}",
            s.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "epigrid_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\"}} {count}"
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
