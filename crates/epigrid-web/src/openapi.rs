//! `GET /api/v1/openapi.json`: the API description (OpenAPI 3.1), written by hand next to the
//! routes it describes; an integration test checks every API route is in it.

use axum::Json;
use serde_json::{json, Value};

fn op(
    summary: &str,
    tag: &str,
    auth: bool,
    params: Value,
    body: Option<Value>,
    ok: (&str, &str),
) -> Value {
    let errors = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}});
    let mut responses = json!({ ok.0: {"description": ok.1} });
    let r = responses.as_object_mut().expect("an object");
    let mut add = |code: &str, what: &str| {
        r.insert(
            code.to_string(),
            json!({"description": what, "content": errors.clone()}),
        );
    };
    if auth {
        add("401", "not logged in, or the token is wrong or expired");
        add("403", "the caller's role may not do this");
    }
    let list = params.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.iter().any(|p| p["in"] == "path") {
        add("404", "absent, or outside the caller's area scope");
    }
    if body.is_some() || list.iter().any(|p| p["in"] == "query") {
        add("422", "invalid input, field by field");
    }
    if body.is_some() {
        add("413", "the body is over 1 MiB");
    }
    let mut o = json!({
        "summary": summary,
        "tags": [tag],
        "parameters": params,
        "responses": responses,
    });
    if auth {
        o["security"] = json!([{"bearer": []}]);
    } else {
        o["security"] = json!([]);
    }
    if let Some(b) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": b}}});
    }
    o
}

/// Answers particular operations give besides those [`op`] lists for every operation.
const MORE_ANSWERS: &[(&str, &str, &str, &str)] = &[
    (
        "/api/v1/auth/token",
        "post",
        "401",
        "wrong username or password",
    ),
    (
        "/api/v1/auth/token",
        "post",
        "429",
        "five failures from one address lock the name there for 15 minutes, 30 from anywhere lock it everywhere; Retry-After says for how long",
    ),
    (
        "/api/v1/sites/{token}/registrations",
        "post",
        "401",
        "a bearer token that is wrong or expired",
    ),
    (
        "/api/v1/sites/{token}/registrations",
        "post",
        "410",
        "the site is deactivated",
    ),
    (
        "/api/v1/sites/{token}/registrations",
        "post",
        "403",
        "staff (bearer token) at a site outside their area, or a role that does not register people",
    ),
    (
        "/api/v1/registrations/{id}/checkout",
        "post",
        "409",
        "already checked out, or not a venue's check-in",
    ),
    (
        "/api/v1/areas",
        "get",
        "404",
        "no such area, or outside the caller's area scope",
    ),
    (
        "/api/v1/users/{id}",
        "patch",
        "409",
        "an admin deactivating their own account",
    ),
    (
        "/api/v1/persons/{id}/category",
        "post",
        "409",
        "a change the rules do not allow, or the person changed meanwhile",
    ),
    (
        "/api/v1/persons/{id}/notices",
        "post",
        "409",
        "not a confirmed or suspected case, or no places to list",
    ),
    (
        "/api/v1/persons/{id}/observations",
        "post",
        "409",
        "an observation is already open",
    ),
    (
        "/api/v1/persons/{id}/reports",
        "post",
        "409",
        "no open observation, or this report slot is taken",
    ),
    (
        "/api/v1/persons/{id}/merge",
        "post",
        "409",
        "one of the two is already merged",
    ),
    (
        "/api/v1/persons/{id}/contacts",
        "post",
        "409",
        "a person changed category meanwhile: none were classified",
    ),
    (
        "/api/v1/lists",
        "post",
        "413",
        "the file is over the upload limit",
    ),
    (
        "/api/v1/observations/{id}",
        "patch",
        "409",
        "the observation was released already",
    ),
    (
        "/api/v1/reports/{token}",
        "post",
        "409",
        "this report slot is taken, or observation has not started",
    ),
    (
        "/api/v1/reports/{token}",
        "post",
        "410",
        "the link is revoked or the observation ended",
    ),
];

fn path_param(name: &str, desc: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": desc, "schema": {"type": "string"}})
}

fn query(name: &str, desc: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": desc, "schema": {"type": "string"}})
}

pub fn spec() -> Value {
    let mut spec = described();
    for (path, method, code, what) in MORE_ANSWERS {
        if let Some(r) = spec["paths"][path][method]["responses"].as_object_mut() {
            r.insert(
                code.to_string(),
                json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}}}),
            );
        }
    }
    // every operation named (clients generated from the spec need it), numbers typed as such
    if let Some(paths) = spec["paths"].as_object_mut() {
        for (path, ops) in paths.iter_mut() {
            let Some(ops) = ops.as_object_mut() else {
                continue;
            };
            for (method, op) in ops.iter_mut() {
                op["operationId"] = json!(operation_id(method, path));
                if let Some(params) = op["parameters"].as_array_mut() {
                    for p in params {
                        if p["in"] == "query"
                            && ["limit", "offset", "before", "after", "seconds", "days"]
                                .contains(&p["name"].as_str().unwrap_or(""))
                        {
                            p["schema"] = json!({"type": "integer", "minimum": 0});
                        }
                    }
                }
            }
        }
    }
    if let Some(params) = spec["paths"]["/api/v1/feed"]["get"]["parameters"].as_array_mut() {
        params.push(
            json!({"name": "Last-Event-ID", "in": "header", "required": false,
            "description": "the id (seq) of the last event a reconnecting client had; one that is not a number, or is ahead of everything stored (a database restored since), starts the feed afresh",
            "schema": {"type": "string"}}),
        );
    }
    spec
}

/// `get /api/v1/persons/{id}/trace` → `get_persons_id_trace`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for part in path.trim_start_matches("/api/v1").split('/') {
        let part: String = part
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.' || *c == '-')
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if !part.is_empty() {
            id.push('_');
            id.push_str(&part);
        }
    }
    id
}

fn described() -> Value {
    let site = path_param("id", "site id (UUID)");
    let reg = path_param("id", "registration id (UUID)");
    let registration_in = json!({
        "type": "object",
        "description": "Fields that apply depend on the site's kind. Required: at every kind `name` and `symptoms` (an empty list or [\"none\"] for none: an unanswered question is not taken as \"no\"); checkpoint: `id_number`, `phone`, `origin`, `destination`, `temperature`, `high_risk_travel`; gate: `direction`, `visitor`, `temperature` (and `visit_reason` for a visitor; `id_number` optional); arrival: `id_number`, `phone`, `arrival_date`, `origin`, `residence_code`, `address`; venue: `id_number`, `phone`. Staff entering for someone without a phone may leave `phone` out. Scalars are read as a form's fields are: `36.5` and `\"36.5\"`, `true` and `\"true\"` give the same answer. Fields that do not apply to the kind are ignored; a key given twice is refused.",
        "required": ["name", "symptoms"],
        "properties": {
            "name": {"type": "string", "maxLength": 40}, "id_type": {"enum": ["cn_id", "passport", "other"]},
            "id_number": {"type": "string"}, "phone": {"type": "string"}, "plate": {"type": "string"},
            "companions": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 60}, {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "id_type": {"type": "string"}, "id_number": {"type": "string"}}}}]},
            "origin": {"type": "string", "description": "GB/T 2260 code (2, 4 or 6 digits)"},
            "destination": {"type": "string", "maxLength": 100}, "temperature": {"type": "number", "minimum": 34, "maximum": 42.5},
            "symptoms": {"type": "array", "items": {"enum": ["fever", "cough", "fatigue", "sore_throat", "shortness_of_breath", "diarrhoea", "none"]}},
            "high_risk_travel": {"type": "boolean"}, "direction": {"enum": ["in", "out"]}, "visitor": {"type": "boolean"},
            "unit_code": {"type": "string"}, "visit_reason": {"type": "string"}, "arrival_date": {"type": "string", "format": "date"},
            "residence_code": {"type": "string"}, "address": {"type": "string", "maxLength": 200}, "employer": {"type": "string"},
            "stay_days": {"type": "integer", "minimum": 1, "maximum": 3650}, "purpose": {"type": "string"}
        }
    });
    json!({
        "openapi": "3.1.0",
        "info": {"title": "epigrid API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Outbreak response: self-registration at sites, staff views scoped to their area. Personal fields are masked unless explicitly unmasked (audited)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Errors": {"type": "object", "properties": {"errors": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": ["string", "null"]}, "message": {"type": "string"}, "code": {"type": "string"}}}}}},
                "RegistrationIn": registration_in,
                "Site": {"type": "object", "properties": {"id": {"type": "string"}, "token": {"type": "string"}, "kind": {"enum": ["checkpoint", "gate", "arrival", "venue"]}, "name": {"type": "string"}, "area_code": {"type": "string"}, "active": {"type": "boolean"}}}
            }
        },
        "paths": {
            "/healthz": {"get": op("liveness", "operations", false, json!([]), None, ("200", "ok"))},
            "/readyz": {"get": op("readiness (database reachable)", "operations", false, json!([]), None, ("200", "ready"))},
            "/metrics": {"get": op("Prometheus metrics (with `Authorization: Bearer` the server's metrics token, when it has one)", "operations", false, json!([]), None, ("200", "text exposition format"))},
            "/api/v1/openapi.json": {"get": op("this document", "operations", false, json!([]), None, ("200", "OpenAPI 3.1"))},
            "/api/v1/auth/token": {"post": op("exchange username and password for a bearer token", "auth", false, json!([]),
                Some(json!({"type": "object", "required": ["username", "password"], "properties": {"username": {"type": "string"}, "password": {"type": "string"}}})), ("200", "{token, expires_at, user}"))},
            "/api/v1/auth/logout": {"post": op("revoke the bearer token", "auth", true, json!([]), None, ("204", "revoked"))},
            "/api/v1/me": {"get": op("the caller", "auth", true, json!([]), None, ("200", "user"))},
            "/api/v1/areas": {"get": op("children of an area within the caller's scope (no parent: the caller's own area)", "areas", true, json!([query("parent", "area code")]), None, ("200", "{items:[area]}"))},
            "/api/v1/divisions": {"get": op("China's provinces, cities and counties for the origin picker", "areas", false, json!([query("parent", "2- or 4-digit code")]), None, ("200", "{items:[{code,name,name_en}]}: name in Chinese, name_en in pinyin"))},
            "/api/v1/sites": {
                "get": op("sites in the caller's scope", "sites", true, json!([]), None, ("200", "{items:[Site]}")),
                "post": op("create a site", "sites", true, json!([]), Some(json!({"type": "object", "required": ["kind", "name", "area_code"], "properties": {"kind": {"type": "string"}, "name": {"type": "string"}, "area_code": {"type": "string"}, "default_stay_min": {"type": "integer"}, "active": {"type": "boolean", "default": true}}})), ("201", "Site"))
            },
            "/api/v1/sites/{id}": {
                "get": op("one site", "sites", true, json!([site.clone()]), None, ("200", "Site")),
                "patch": op("rename, (de)activate, rotate the token", "sites", true, json!([site.clone()]), Some(json!({"type": "object", "properties": {"name": {"type": "string"}, "active": {"type": "boolean"}, "rotate_token": {"type": "boolean"}, "default_stay_min": {"type": "integer"}}})), ("200", "Site"))
            },
            "/api/v1/sites/{id}/qr.svg": {"get": op("QR code of the site's form URL (SVG)", "sites", true, json!([site.clone()]), None, ("200", "image/svg+xml"))},
            "/api/v1/sites/{id}/qr.png": {"get": op("QR code of the site's form URL (PNG)", "sites", true, json!([site.clone()]), None, ("200", "image/png"))},
            "/api/v1/sites/{token}/registrations": {"post": op("self-registration at a site (or by staff with a bearer token)", "registrations", false,
                json!([path_param("token", "the site's public token")]), Some(json!({"$ref": "#/components/schemas/RegistrationIn"})), ("201", "anonymous callers: a receipt {id, verification_code, at, at_local, site_name, kind, fever}; staff (bearer token): the stored registration, personal fields masked"))},
            "/api/v1/registrations": {"get": op("registrations in scope, newest first; with `after`, those after a seq oldest first (on PostgreSQL a registration may commit after a higher seq was read: follow new ones with the feed, or read again from a little before the last seq and drop repeats by id)", "registrations", true,
                json!([query("site", "site id"), query("kind", "site kind"), query("from", "RFC 3339 or local date (the start of that day)"), query("to", "RFC 3339 (exclusive) or local date (the end of that day)"), query("person", "person id"), query("before", "seq, for paging back (next_before)"), query("after", "seq: only newer ones, oldest first, and no next_before"), query("limit", "1-1000")]), None, ("200", "{items, next_before}"))},
            "/api/v1/registrations/{id}": {"get": op("one registration (masked)", "registrations", true, json!([reg.clone()]), None, ("200", "registration"))},
            "/api/v1/registrations/{id}/unmask": {"post": op("reveal name, document and phone (audited)", "registrations", true, json!([reg.clone()]), Some(json!({"type": "object", "properties": {"reason": {"type": "string"}}})), ("200", "{name, id_number, phone}"))},
            "/api/v1/registrations/{id}/checkout": {"post": op("record leaving a venue", "registrations", true, json!([reg]), None, ("200", "registration"))},
            "/api/v1/feed": {"get": op("live feed of registrations in scope (text/event-stream): the latest twenty, then each new one; each event's id is the registration's seq, and a client reconnecting with Last-Event-ID gets what came after it (on PostgreSQL the 200 before it again too, for late commits: drop repeats by id)", "registrations", true, json!([query("site", "site id")]), None, ("200", "server-sent events named registration"))},
            "/api/v1/persons": {"get": op("search people in scope by ID number, phone, plate or part of a name", "people", true, json!([query("q", "what to look for")]), None, ("200", "{items:[person]}"))},
            "/api/v1/persons/{id}": {
                "get": op("a person: details (masked), categories, observations, reports, lab results, registrations", "people", true, json!([path_param("id", "person id")]), None, ("200", "person")),
                "patch": op("correct name and home area (audited)", "people", true, json!([path_param("id", "person id")]), Some(json!({"type": "object", "properties": {"name": {"type": "string"}, "home_area_code": {"type": "string"}}})), ("200", "person"))
            },
            "/api/v1/persons/{id}/category": {"post": op("change category (history kept; impossible changes are 409)", "people", true, json!([path_param("id", "person id")]), Some(json!({"type": "object", "required": ["category", "reason"], "properties": {"category": {"enum": ["confirmed", "suspected", "fever", "close_contact", "ruled_out", "recovered", "deceased", "none"]}, "reason": {"type": "string"}}})), ("200", "person"))},
            "/api/v1/persons/{id}/observations": {"post": op("start medical observation; returns the personal report_url once", "people", true, json!([path_param("id", "person id")]), Some(json!({"type": "object", "properties": {"kind": {"enum": ["home", "central"]}, "start": {"type": "string", "format": "date"}, "days": {"type": "integer"}, "site_id": {"type": "string"}, "grid_worker": {"type": "string"}, "reports_per_day": {"enum": [1, 2]}}})), ("201", "observation with report_url"))},
            "/api/v1/persons/{id}/reports": {"post": op("a daily report entered by a grid worker on the person's behalf (audited)", "people", true, json!([path_param("id", "person id")]), Some(json!({"type": "object"})), ("201", "report"))},
            "/api/v1/persons/{id}/lab-results": {"post": op("record a lab result", "people", true, json!([path_param("id", "person id")]), Some(json!({"type": "object", "required": ["test", "sample_date", "result"]})), ("201", "lab result with needs_review"))},
            "/api/v1/persons/{id}/merge": {"post": op("merge a duplicate into another person (audited, reversible)", "people", true, json!([path_param("id", "person id")]), Some(json!({"type": "object", "required": ["into", "reason"]})), ("200", "{merge_id}"))},
            "/api/v1/persons/{id}/trace": {"post": op("contacts found from the records (co-location, vehicle, companions, household, proximity)", "tracing", true, json!([path_param("id", "person id")]), Some(json!({"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}, "degree": {"enum": [1, 2]}, "min_exposure_s": {"type": "integer"}}})), ("200", "{person_id, from, to, degree, contacts:[{person_id, degree, via_person_id, kinds, exposure_s, score, evidence}], purged_before: when the window starts before the retention horizon, the time before which registrations of people nobody acted on were deleted, else null}"))},
            "/api/v1/persons/{id}/contacts": {"post": op("mark selected people close contacts of this case in one action (all or none), starting observation and assigning grid workers", "tracing", true, json!([path_param("id", "index person id")]), Some(json!({"type": "object", "required": ["person_ids", "reason"]})), ("200", "{classified, observations:[{person_id, grid_worker_id, report_url}]}"))},
            "/api/v1/persons/{id}/notices": {"post": op("publish a contact-search notice (协查通告) from the case's registrations: places and time spans, no personal data", "tracing", true, json!([path_param("id", "case person id")]), Some(json!({"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}}})), ("201", "{id, url, entries}"))},
            "/api/v1/notices/{id}": {"get": op("a notice and the people who came forward (masked, pending review)", "tracing", true, json!([path_param("id", "notice id")]), None, ("200", "{entries, came_forward}"))},
            "/api/v1/chains": {"get": op("transmission chains: people linked by confirmed contacts, size and whether active", "tracing", true, json!([]), None, ("200", "{items:[{chain, size, active, people, edges}]}"))},
            "/api/v1/chains/{n}/graph.svg": {"get": op("chain n drawn top-down by generation, categories in colour and words, wide layers collapsed", "tracing", true, json!([path_param("n", "chain number from /api/v1/chains")]), None, ("200", "image/svg+xml"))},
            "/api/v1/chains/edges.csv": {"get": op("confirmed contact edges as CSV, audited", "tracing", true, json!([]), None, ("200", "text/csv"))},
            "/api/v1/chains/graph.graphml": {"get": op("the contact graph as GraphML, audited", "tracing", true, json!([]), None, ("200", "application/graphml+xml"))},
            "/api/v1/lists": {"post": op("upload a list (CSV in UTF-8 or GBK, or XLSX, as the body; columns by name, or chosen with col_<target>=HEADING) and match it against known people (比对)", "tracing", true, json!([query("name", "list name")]), None, ("201", "{id, rows, bad_rows, errors:[{line, field, message}] (the first 10000), errors_total, matched, to_review (people in the caller's area)}"))},
            "/api/v1/lists/{id}/matches": {"get": op("a page of a list's matches to people in scope (by line, surest first): method, confidence, review flag, decision; with the in-scope totals", "tracing", true, json!([path_param("id", "list id"), query("review", "1: only those still to review"), query("limit", "page size, default 1000, at most 10000"), query("offset", "rows to skip")]), None, ("200", "{list, matched, to_review, items}"))},
            "/api/v1/lists/{id}/decisions": {"post": op("confirm or reject an uncertain match of a list (the review queue; audited)", "tracing", true, json!([path_param("id", "list id")]), Some(json!({"type": "object", "required": ["line", "person_id", "decision"], "properties": {"line": {"type": "integer"}, "person_id": {"type": "string", "format": "uuid"}, "decision": {"type": "string", "enum": ["confirmed", "rejected"]}}})), ("200", "{line, person_id, decision}"))},
            "/api/v1/merges/{id}/undo": {"post": op("undo a merge", "people", true, json!([path_param("id", "merge id")]), None, ("200", "merge"))},
            "/api/v1/observations": {"get": op("line lists in scope", "people", true, json!([query("status", "reported_today, not_reported, overdue, symptomatic, ending_soon, ended"), query("grid_worker", "user id")]), None, ("200", "{items}"))},
            "/api/v1/observations/{id}": {"patch": op("extend, release (early release needs a negative test), revoke or renew the link", "people", true, json!([path_param("id", "observation id")]), Some(json!({"type": "object"})), ("200", "observation"))},
            "/api/v1/observations/export.csv": {"get": op("line list as CSV (UTF-8 BOM), audited", "people", true, json!([query("status", "list"), query("unmask", "1 or true to show full details (allowed roles)")]), None, ("200", "text/csv"))},
            "/api/v1/observations/export.xlsx": {"get": op("line list as XLSX, audited", "people", true, json!([query("status", "list"), query("unmask", "1 or true to show full details (allowed roles)")]), None, ("200", "xlsx"))},
            "/api/v1/reports/{token}": {"post": op("a person's own daily health report through their personal link", "people", false, json!([path_param("token", "personal link token")]), Some(json!({"type": "object", "required": ["temperature"], "properties": {"temperature": {"type": "number"}, "symptoms": {"type": "array", "items": {"type": "string"}}, "note": {"type": "string"}}})), ("201", "report; 409 when the slot is taken, 410 when the link is revoked or the observation ended"))},
            "/api/v1/review": {"get": op("people with a positive result who are not confirmed", "people", true, json!([]), None, ("200", "{items}"))},
            "/api/v1/category-counts": {"get": op("people per category in scope (small cells hidden for analysts and site staff)", "people", true, json!([]), None, ("200", "{totals, by_area}"))},
            "/api/v1/audit": {"get": op("audit log of the admin's subtree, newest first", "admin", true, json!([query("user", "username, exactly"), query("action", "action code, exactly (unmask, export, login_failed, ...)"), query("subject", "what was acted on, exactly (person:<id>, registration:<id>, user:<id>, ...)"), query("from", "RFC 3339 or local date"), query("to", "RFC 3339 (exclusive) or local date (the end of that day)"), query("before", "seq, for paging back (next_before)"), query("limit", "1-10000, default 200")]), None, ("200", "{items:[{seq, id, at, user_id, username, action, subject, area_path, ip, detail}], next_before}"))},
            "/api/v1/audit.csv": {"get": op("the audit log as CSV (UTF-8 BOM) with the same filters, up to 10000 entries; the export is audited", "admin", true, json!([query("user", "username, exactly"), query("action", "action code, exactly"), query("subject", "what was acted on, exactly"), query("from", "RFC 3339 or local date"), query("to", "RFC 3339 (exclusive) or local date"), query("before", "seq"), query("limit", "1-10000, default 10000")]), None, ("200", "text/csv"))},
            "/api/v1/users": {
                "get": op("staff accounts in scope", "admin", true, json!([]), None, ("200", "{items}")),
                "post": op("create a staff account", "admin", true, json!([]), Some(json!({"type": "object", "required": ["username", "password", "role", "area_code"]})), ("201", "user"))
            },
            "/api/v1/users/{id}": {
                "patch": op("deactivate or reactivate a staff account (admins; not oneself)", "admin", true, json!([path_param("id", "user id (UUID)")]), Some(json!({"type": "object", "required": ["active"], "properties": {"active": {"type": "boolean"}}})), ("200", "user; 409 for one's own account"))
            }
        }
    })
}

pub async fn serve() -> Json<Value> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_extra_answer_belongs_to_a_described_operation() {
        let spec = super::spec();
        for (path, method, code, _) in super::MORE_ANSWERS {
            assert!(
                spec["paths"][path][method]["responses"][code].is_object(),
                "{method} {path} {code}"
            );
        }
        // /healthz takes nothing and answers nothing but its 200
        let healthz = spec["paths"]["/healthz"]["get"]["responses"]
            .as_object()
            .unwrap();
        assert_eq!(healthz.keys().collect::<Vec<_>>(), vec!["200"]);
    }
}
