//! Matching lists from other agencies against the people epigrid knows (比对): exact on ID
//! number (blind index), on phone, fuzzy on name + birth date and on plate, each with a
//! confidence; uncertain matches go to a review queue.

use std::collections::HashMap;

use chrono::NaiveDate;
use serde::Serialize;
use uuid::Uuid;

use crate::area::Scope;
use crate::person::PersonQuery;
use crate::store::{Store, StoreResult};
use crate::validate::{DocType, Document, FieldError, MobilePhone, PersonName, Plate};
use crate::vault::Vault;

/// One valid row of a list.
#[derive(Debug, Clone)]
pub struct ListRow {
    /// Line in the file as a spreadsheet shows it (header = 1).
    pub line: usize,
    pub name: Option<PersonName>,
    pub document: Option<Document>,
    pub phone: Option<MobilePhone>,
    pub plate: Option<Plate>,
    pub birth_date: Option<NaiveDate>,
}

#[derive(Debug, Default)]
pub struct ParsedList {
    pub rows: Vec<ListRow>,
    /// Rows that could not be used, with why (never dropped silently).
    pub errors: Vec<(usize, FieldError)>,
}

/// The columns a list may have, by the names agencies use (Chinese or English, any case).
fn column(name: &str) -> Option<&'static str> {
    let n = name.trim().trim_start_matches('\u{feff}').to_lowercase();
    Some(match n.as_str() {
        "name" | "姓名" | "名字" => "name",
        "id_number" | "id" | "身份证号" | "身份证号码" | "证件号码" | "证件号" => {
            "id_number"
        }
        "phone" | "mobile" | "手机" | "手机号" | "手机号码" | "电话" | "联系电话" => {
            "phone"
        }
        "plate" | "车牌" | "车牌号" => "plate",
        "birth_date" | "出生日期" | "生日" => "birth_date",
        _ => return None,
    })
}

/// Splits one CSV line into cells (double quotes group commas and double themselves).
fn csv_cells(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Reads a CSV list (header row first; columns matched by name, order free).
pub fn parse_list(text: &str) -> ParsedList {
    let mut lines = text.lines().map(csv_cells);
    let header = lines.next().unwrap_or_default();
    parse_rows(header, lines)
}

/// Reads a list given as rows of cells (from CSV or a spreadsheet): the first is the header.
/// Every cell is validated; a row with a bad cell is reported with its line and field and is
/// not matched.
pub fn parse_rows(header: Vec<String>, rows: impl Iterator<Item = Vec<String>>) -> ParsedList {
    let mut out = ParsedList::default();
    if header.iter().all(|h| h.trim().is_empty()) {
        out.errors
            .push((1, FieldError::new("header", "err.list.empty")));
        return out;
    }
    let cols: Vec<Option<&'static str>> = header.iter().map(|h| column(h)).collect();
    if !cols
        .iter()
        .any(|c| matches!(c, Some("id_number" | "phone" | "name" | "plate")))
    {
        out.errors
            .push((1, FieldError::new("header", "err.list.columns")));
        return out;
    }
    for (i, cells) in rows.enumerate() {
        let line = i + 2;
        let cells: Vec<&str> = cells.iter().map(|c| c.trim()).collect();
        if cells.iter().all(|c| c.is_empty()) {
            continue;
        }
        let get = |k: &str| {
            cols.iter()
                .position(|c| *c == Some(k))
                .and_then(|i| cells.get(i))
                .copied()
                .filter(|s| !s.is_empty())
        };
        let mut row = ListRow {
            line,
            name: None,
            document: None,
            phone: None,
            plate: None,
            birth_date: None,
        };
        let mut errs: Vec<FieldError> = Vec::new();
        let mut fail = |e: FieldError| errs.push(e);
        if let Some(v) = get("name") {
            match PersonName::parse("name", v) {
                Ok(n) => row.name = Some(n),
                Err(e) => fail(e),
            }
        }
        if let Some(v) = get("id_number") {
            match Document::parse("id_number", DocType::CnId, v) {
                Ok(d) => {
                    row.birth_date = d.id_number().map(|n| n.birth_date());
                    row.document = Some(d);
                }
                Err(e) => fail(e),
            }
        }
        if let Some(v) = get("phone") {
            match MobilePhone::parse("phone", v) {
                Ok(p) => row.phone = Some(p),
                Err(e) => fail(e),
            }
        }
        if let Some(v) = get("plate") {
            match Plate::parse("plate", v) {
                Ok(p) => row.plate = Some(p),
                Err(e) => fail(e),
            }
        }
        if let Some(v) = get("birth_date") {
            match NaiveDate::parse_from_str(v, "%Y-%m-%d") {
                Ok(d) => row.birth_date = Some(d),
                Err(_) => fail(FieldError::new("birth_date", "err.date.format")),
            }
        }
        if errs.is_empty()
            && row.document.is_none()
            && row.phone.is_none()
            && row.plate.is_none()
            && row.name.is_none()
        {
            errs.push(FieldError::new("row", "err.list.nothing"));
        }
        if errs.is_empty() {
            out.rows.push(row);
        } else {
            out.errors.extend(errs.into_iter().map(|e| (line, e)));
        }
    }
    out
}

/// One person a row matched, how, and how sure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListMatch {
    pub line: usize,
    pub person_id: Uuid,
    pub method: &'static str,
    pub confidence: f64,
    /// Uncertain: a person should confirm before acting on it.
    pub review: bool,
}

/// Below this confidence a match goes to the review queue.
pub const REVIEW_BELOW: f64 = 0.9;

/// Matches rows against everyone the store knows; `progress` is told how many rows are done.
pub async fn match_rows(
    store: &dyn Store,
    vault: &Vault,
    rows: &[ListRow],
    progress: &mut (dyn FnMut(usize) + Send),
) -> StoreResult<Vec<ListMatch>> {
    let all = Scope::all();
    // exact on ID number: ids are derived from the document, checked in one query
    let by_doc: HashMap<Uuid, usize> = rows
        .iter()
        .filter_map(|r| {
            r.document
                .as_ref()
                .map(|d| (crate::register::person_id(vault, Some(d), None, ""), r.line))
        })
        .collect();
    let known: std::collections::HashSet<Uuid> = store
        .existing_persons(by_doc.keys().copied().collect())
        .await?
        .into_iter()
        .collect();
    let mut out: Vec<ListMatch> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let mut best: HashMap<Uuid, (&'static str, f64)> = HashMap::new();
        let mut offer = |id: Uuid, method: &'static str, c: f64| {
            let e = best.entry(id).or_insert((method, c));
            if c > e.1 {
                *e = (method, c);
            }
        };
        if let Some(d) = &r.document {
            let id = crate::register::person_id(vault, Some(d), None, "");
            if known.contains(&id) {
                offer(id, "id_number", 1.0);
            }
        }
        let name = r.name.as_ref().map(|n| n.as_str().to_string());
        if let Some(p) = &r.phone {
            let hits = store
                .search_persons(
                    &all,
                    &PersonQuery::Phone(vault.blind_index("phone", p.as_str())),
                    5,
                )
                .await?;
            for h in &hits {
                let same_name = name.as_deref() == Some(h.name.as_str());
                offer(
                    h.id,
                    "phone",
                    if same_name {
                        0.95
                    } else if hits.len() == 1 {
                        0.9
                    } else {
                        0.7
                    },
                );
            }
        }
        if let (Some(n), Some(b)) = (&name, r.birth_date) {
            for h in store
                .search_persons(&all, &PersonQuery::Name(n.clone()), 50)
                .await?
            {
                if h.name == *n && h.birth_date == Some(b) {
                    offer(h.id, "name_birth_date", 0.75);
                }
            }
        }
        if let Some(p) = &r.plate {
            for h in store
                .search_persons(&all, &PersonQuery::Plate(p.as_str().to_string()), 10)
                .await?
            {
                let same_name = name.as_deref() == Some(h.name.as_str());
                offer(h.id, "plate", if same_name { 0.8 } else { 0.5 });
            }
        }
        let mut matches: Vec<ListMatch> = best
            .into_iter()
            .map(|(person_id, (method, confidence))| ListMatch {
                line: r.line,
                person_id,
                method,
                confidence,
                review: confidence < REVIEW_BELOW,
            })
            .collect();
        matches.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then(a.person_id.cmp(&b.person_id))
        });
        out.extend(matches);
        progress(i + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_are_read_by_column_name_and_bad_rows_are_reported_by_line() {
        let text = "\u{feff}手机,姓名,身份证号\n13912345678,张三,11010519491231002X\n123,李四,\n,,\n13800000000,王五,110105194912310021\n";
        let p = super::parse_list(text);
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].line, 2);
        assert_eq!(
            p.rows[0].birth_date.map(|d| d.to_string()).as_deref(),
            Some("1949-12-31")
        );
        let lines: Vec<(usize, &str)> = p
            .errors
            .iter()
            .map(|(l, e)| (*l, e.field.as_str()))
            .collect();
        assert_eq!(lines, vec![(3, "phone"), (5, "id_number")]);
        assert_eq!(
            super::parse_list("foo,bar\n1,2\n").errors[0].1.field,
            "header"
        );
    }
}
