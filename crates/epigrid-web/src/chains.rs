//! Transmission chains: people linked by confirmed contacts, as connected components, with
//! each chain's size and whether it is still active; exported as a CSV edge list and GraphML.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use epigrid_core::person::Category;
use epigrid_core::trace::chains;
use serde_json::{json, Value};

use crate::auth::Staff;
use crate::error::ApiResult;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/chains", get(list))
        .route("/api/v1/chains/edges.csv", get(edges_csv))
        .route("/api/v1/chains/graph.graphml", get(graphml))
        .route("/api/v1/chains/{n}/graph.svg", get(chain_svg))
}

/// The confirmed contacts whose contact person is in the caller's scope (the chains' edges).
async fn records(
    st: &AppState,
    staff: &Staff,
) -> ApiResult<Vec<epigrid_core::trace::ContactRecord>> {
    staff.require(staff.role().sees_people())?;
    Ok(st.store.confirmed_contacts(&staff.scope()).await?)
}

/// What a chain calls each person: their id when the caller may see them, else
/// `outside-{chain}-{k}`, so that nothing identifies someone outside the caller's area.
#[derive(Default)]
struct Labels(std::collections::HashMap<uuid::Uuid, String>);

impl Labels {
    fn of(&self, id: &uuid::Uuid) -> String {
        self.0.get(id).cloned().unwrap_or_default()
    }
}

/// The chains in the caller's scope (only chain `only`, numbered from 1, when given), with the
/// label of each person in them.
async fn build(
    st: &AppState,
    staff: &Staff,
    only: Option<usize>,
) -> ApiResult<(Vec<Value>, Vec<epigrid_core::trace::ContactRecord>, Labels)> {
    let records = records(st, staff).await?;
    let edges: Vec<(uuid::Uuid, uuid::Uuid)> = records
        .iter()
        .map(|r| (r.index_person_id, r.contact_person_id))
        .collect();
    let scope = staff.scope();
    let mut out = Vec::new();
    let mut labels = Labels::default();
    for (n, c) in chains(&edges).iter().enumerate() {
        if only.is_some_and(|o| o != n + 1) {
            continue;
        }
        let mut people = Vec::new();
        let mut active = false;
        // numbered within the chain, so the whole list and one chain's drawing agree
        let mut outside = 0;
        for id in &c.people {
            match st.store.person(*id, &scope).await? {
                Some(p) => {
                    active |= Category::FOUR.contains(&p.category);
                    labels.0.insert(*id, id.to_string());
                    people.push(json!({"person_id": id, "name": crate::view::mask_name(&p.name), "category": p.category}));
                }
                None => {
                    outside += 1;
                    let label = format!("outside-{}-{outside}", n + 1);
                    labels.0.insert(*id, label.clone());
                    people.push(json!({"person_id": label, "outside_scope": true}));
                }
            }
        }
        out.push(json!({
            "chain": n + 1,
            "size": c.people.len(),
            "active": active,
            "people": people,
            "edges": c.edges.iter().map(|(a, b)| json!({"from": labels.of(a), "to": labels.of(b)})).collect::<Vec<_>>(),
        }));
    }
    Ok((out, records, labels))
}

async fn list(State(st): State<AppState>, staff: Staff) -> ApiResult<Json<Value>> {
    let (items, _, _) = build(&st, &staff, None).await?;
    Ok(Json(json!({"items": items})))
}

/// The confirmed contact edges as CSV (UTF-8 with BOM), audited as an export.
async fn edges_csv(State(st): State<AppState>, staff: Staff) -> ApiResult<Response> {
    let (_, records, labels) = build(&st, &staff, None).await?;
    let mut out = String::from("\u{feff}from_person_id,to_person_id,kinds,exposure_s,score\r\n");
    for r in &records {
        out.push_str(&format!(
            "{},{},\"{}\",{},{}\r\n",
            labels.of(&r.index_person_id),
            labels.of(&r.contact_person_id),
            r.kinds,
            r.exposure_s,
            r.score
        ));
    }
    staff
        .audit_read(
            &st,
            "export",
            "chains.csv",
            &staff.user.area_path,
            &format!("edges={}", records.len()),
        )
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"chains.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

/// The same graph as GraphML (for Gephi, yEd, Cytoscape); nodes carry the category only.
async fn graphml(State(st): State<AppState>, staff: Staff) -> ApiResult<Response> {
    let (items, records, labels) = build(&st, &staff, None).await?;
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<graphml xmlns=\"http://graphml.graphdrawing.org/xmlns\">\n\
         <key id=\"category\" for=\"node\" attr.name=\"category\" attr.type=\"string\"/>\n\
         <key id=\"chain\" for=\"node\" attr.name=\"chain\" attr.type=\"int\"/>\n\
         <key id=\"kinds\" for=\"edge\" attr.name=\"kinds\" attr.type=\"string\"/>\n<graph id=\"chains\" edgedefault=\"directed\">\n",
    );
    for c in &items {
        for p in c["people"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "<node id=\"{}\"><data key=\"category\">{}</data><data key=\"chain\">{}</data></node>\n",
                p["person_id"].as_str().unwrap_or(""),
                p["category"].as_str().unwrap_or("outside_scope"),
                c["chain"]
            ));
        }
    }
    for (i, r) in records.iter().enumerate() {
        out.push_str(&format!(
            "<edge id=\"e{i}\" source=\"{}\" target=\"{}\"><data key=\"kinds\">{}</data></edge>\n",
            labels.of(&r.index_person_id),
            labels.of(&r.contact_person_id),
            r.kinds.replace(['<', '>', '&', '"'], "")
        ));
    }
    out.push_str("</graph>\n</graphml>\n");
    staff
        .audit_read(
            &st,
            "export",
            "chains.graphml",
            &staff.user.area_path,
            &format!("edges={}", records.len()),
        )
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/graphml+xml"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"chains.graphml\"",
            ),
        ],
        out,
    )
        .into_response())
}

/// Most nodes drawn in one layer; the rest are collapsed into a "+N" node.
const LAYER_MAX: usize = 40;

/// `GET /api/v1/chains/{n}/graph.svg`: chain `n` drawn top-down from its first cases, one
/// layer per generation, each node in its category colour with the category written in it;
/// wide layers are collapsed so that large chains stay readable.
async fn chain_svg(
    State(st): State<AppState>,
    staff: Staff,
    axum::extract::Path(n): axum::extract::Path<String>,
) -> ApiResult<Response> {
    // a chain that is not a number is not found, like one past the last (not axum's
    // plain-text rejection)
    let n: usize = n.parse().map_err(|_| crate::error::ApiError::NotFound)?;
    // only the chain drawn: its people are looked up, not everyone's
    let (items, _, _) = build(&st, &staff, Some(n)).await?;
    let chain = items.first().ok_or(crate::error::ApiError::NotFound)?;
    let lang = crate::error::current_lang();
    let people: Vec<&Value> = chain["people"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let edges: Vec<(String, String)> = chain["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("").to_string(),
                e["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    // generations: roots have no incoming edge; BFS gives each person their first depth
    let targets: std::collections::HashSet<&str> = edges.iter().map(|e| e.1.as_str()).collect();
    let mut depth: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut parent: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut queue: std::collections::VecDeque<String> = people
        .iter()
        .filter_map(|p| p["person_id"].as_str())
        .filter(|id| !targets.contains(id))
        .map(String::from)
        .collect();
    if queue.is_empty() {
        if let Some(first) = people.first().and_then(|p| p["person_id"].as_str()) {
            queue.push_back(first.to_string());
        }
    }
    for q in &queue {
        depth.insert(q.clone(), 0);
    }
    while let Some(id) = queue.pop_front() {
        let d = depth[&id];
        for (a, b) in &edges {
            if *a == id && !depth.contains_key(b) {
                depth.insert(b.clone(), d + 1);
                parent.insert(b.clone(), a.clone());
                queue.push_back(b.clone());
            }
        }
    }
    let layers = depth.values().max().map(|m| m + 1).unwrap_or(1);
    let mut rows: Vec<Vec<&Value>> = vec![Vec::new(); layers];
    for p in &people {
        let id = p["person_id"].as_str().unwrap_or("");
        rows[*depth.get(id).unwrap_or(&0)].push(p);
    }
    let (w, h, gap_y) = (120.0_f64, 44.0_f64, 90.0_f64);
    let width = rows
        .iter()
        .map(|r| r.len().min(LAYER_MAX + 1))
        .max()
        .unwrap_or(1) as f64
        * (w + 12.0)
        + 40.0;
    let height = layers as f64 * gap_y + 60.0;
    let mut pos: std::collections::HashMap<String, (f64, f64)> = std::collections::HashMap::new();
    let mut nodes = String::new();
    for (d, row) in rows.iter().enumerate() {
        let y = 40.0 + d as f64 * gap_y;
        for (i, p) in row.iter().take(LAYER_MAX).enumerate() {
            let x = 20.0 + i as f64 * (w + 12.0);
            let id = p["person_id"].as_str().unwrap_or("");
            pos.insert(id.to_string(), (x + w / 2.0, y));
            let cat = p["category"].as_str().and_then(Category::parse);
            let (fill, label) = match cat {
                Some(c) => (c.colour(), epigrid_core::i18n::t(lang, c.label_key())),
                None => ("#bdbdbd", "—"),
            };
            let name = p["name"].as_str().unwrap_or("");
            nodes.push_str(&format!(
                "<g><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" fill=\"{fill}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#fff\" font-size=\"13\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#fff\" font-size=\"11\">{}</text></g>\n",
                x + w / 2.0, y + 18.0, esc(name), x + w / 2.0, y + 35.0, esc(label)
            ));
        }
        if row.len() > LAYER_MAX {
            let x = 20.0 + LAYER_MAX as f64 * (w + 12.0);
            nodes.push_str(&format!(
                "<g><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" fill=\"#eeeeee\" stroke=\"#757575\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"14\">+{}</text></g>\n",
                x + w / 2.0, y + 27.0, row.len() - LAYER_MAX
            ));
        }
    }
    let mut lines = String::new();
    for (child, par) in &parent {
        if let (Some((x1, y1)), Some((x2, y2))) = (pos.get(par), pos.get(child)) {
            lines.push_str(&format!("<line x1=\"{x1}\" y1=\"{}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#616161\" stroke-width=\"1.5\"/>\n", y1 + h));
        }
    }
    let title = format!(
        "{} {n} · {} {}",
        epigrid_core::i18n::t(lang, "chain.title"),
        chain["size"],
        epigrid_core::i18n::t(lang, "chain.people")
    );
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"system-ui,sans-serif\">\n<title>{}</title>\n<text x=\"20\" y=\"24\" font-size=\"16\">{}</text>\n{lines}{nodes}</svg>\n",
        esc(&title),
        esc(&title)
    );
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
