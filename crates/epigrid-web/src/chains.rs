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
}

/// The chains in the caller's scope; people outside it appear only as an id.
async fn build(
    st: &AppState,
    staff: &Staff,
) -> ApiResult<(Vec<Value>, Vec<epigrid_core::trace::ContactRecord>)> {
    staff.require(staff.role().sees_personal_data())?;
    let records = st.store.confirmed_contacts(&staff.scope()).await?;
    let edges: Vec<(uuid::Uuid, uuid::Uuid)> = records
        .iter()
        .map(|r| (r.index_person_id, r.contact_person_id))
        .collect();
    let mut out = Vec::new();
    for (n, c) in chains(&edges).iter().enumerate() {
        let mut people = Vec::new();
        let mut active = false;
        for id in &c.people {
            match st.store.person(*id, &staff.scope()).await? {
                Some(p) => {
                    active |= Category::FOUR.contains(&p.category);
                    people.push(json!({"person_id": id, "name": crate::view::mask_name(&p.name), "category": p.category}));
                }
                None => people.push(json!({"person_id": id, "outside_scope": true})),
            }
        }
        out.push(json!({
            "chain": n + 1,
            "size": c.people.len(),
            "active": active,
            "people": people,
            "edges": c.edges.iter().map(|(a, b)| json!({"from": a, "to": b})).collect::<Vec<_>>(),
        }));
    }
    Ok((out, records))
}

async fn list(State(st): State<AppState>, staff: Staff) -> ApiResult<Json<Value>> {
    let (items, _) = build(&st, &staff).await?;
    Ok(Json(json!({"items": items})))
}

/// The confirmed contact edges as CSV (UTF-8 with BOM), audited as an export.
async fn edges_csv(State(st): State<AppState>, staff: Staff) -> ApiResult<Response> {
    let (_, records) = build(&st, &staff).await?;
    let mut out = String::from("\u{feff}from_person_id,to_person_id,kinds,exposure_s,score\r\n");
    for r in &records {
        out.push_str(&format!(
            "{},{},\"{}\",{},{}\r\n",
            r.index_person_id, r.contact_person_id, r.kinds, r.exposure_s, r.score
        ));
    }
    staff
        .audit(
            &st,
            "export",
            "chains.csv",
            &staff.user.area_path,
            &format!("edges={}", records.len()),
        )
        .await;
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
    let (items, records) = build(&st, &staff).await?;
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
            r.index_person_id,
            r.contact_person_id,
            r.kinds.replace(['<', '>', '&', '"'], "")
        ));
    }
    out.push_str("</graph>\n</graphml>\n");
    staff
        .audit(
            &st,
            "export",
            "chains.graphml",
            &staff.user.area_path,
            &format!("edges={}", records.len()),
        )
        .await;
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
