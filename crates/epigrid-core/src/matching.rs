//! Matching lists from other agencies against the people epigrid knows (比对): exact on ID
//! number (blind index), on phone, fuzzy on name + birth date and on plate, each with a
//! confidence; uncertain matches go to a review queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::NaiveDate;
use serde::Serialize;
use uuid::Uuid;

use crate::store::{Store, StoreResult};
use crate::trace::FastMap;
use crate::validate::{Document, FieldError, IdNumber, MobilePhone, PersonName, Plate};
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

impl ParsedList {
    /// A list whose header is unusable: nothing read.
    fn refused(e: FieldError) -> ParsedList {
        ParsedList {
            rows: Vec::new(),
            errors: vec![(1, e)],
        }
    }

    /// Lines with at least one error.
    pub fn bad_lines(&self) -> usize {
        // errors are in line order
        self.errors.chunk_by(|a, b| a.0 == b.0).count()
    }

    /// The header (line 1) was unusable, or a chosen column is not in it: nothing to match.
    pub fn header_error(&self) -> bool {
        self.rows.is_empty() && self.errors.iter().any(|(line, _)| *line == 1)
    }

    /// The row errors kept with the list: the first [`MAX_ERRORS_KEPT`].
    pub fn kept_errors(&self) -> Vec<crate::store::ListError> {
        self.errors
            .iter()
            .take(MAX_ERRORS_KEPT)
            .map(crate::store::ListError::from)
            .collect()
    }

    /// The summary kept for an uploaded list.
    pub fn record(
        &self,
        name: &str,
        uploaded_by: Option<Uuid>,
        area_path: &str,
    ) -> crate::store::ListRecord {
        let bad = self.bad_lines();
        crate::store::ListRecord {
            id: crate::vault::new_id(),
            name: name.to_string(),
            uploaded_by,
            area_path: area_path.to_string(),
            created_at: chrono::Utc::now(),
            rows: i32::try_from(self.rows.len() + bad).unwrap_or(i32::MAX),
            bad_rows: i32::try_from(bad).unwrap_or(i32::MAX),
        }
    }
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

/// Most data rows a list may have (a larger file is refused as a whole, with a field error).
pub const MAX_ROWS: usize = 2_000_000;
/// Row errors kept per list (the count of bad rows is always complete).
pub const MAX_ERRORS_KEPT: usize = 10_000;

/// What a list's columns can be matched on.
pub const TARGETS: [&str; 5] = ["name", "id_number", "phone", "plate", "birth_date"];

/// Columns chosen by the user where the headings are not ones epigrid recognises: for a
/// target (`id_number`, …), the heading in the file or the column's number (1 = first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnMap(pub Vec<(&'static str, String)>);

impl ColumnMap {
    /// From `col_<target>=<heading>` pairs (query string or form); other keys are ignored,
    /// blank values too.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> ColumnMap {
        let mut m = ColumnMap::default();
        for (k, v) in pairs {
            let Some(target) = k
                .strip_prefix("col_")
                .and_then(|t| TARGETS.iter().find(|x| **x == t))
            else {
                continue;
            };
            if !v.trim().is_empty() {
                m.0.retain(|(t, _)| t != target);
                m.0.push((target, v.trim().to_string()));
            }
        }
        m
    }
}

/// Where each known column is in a row.
#[derive(Debug, Clone, Copy, Default)]
struct Columns {
    name: Option<usize>,
    id_number: Option<usize>,
    phone: Option<usize>,
    plate: Option<usize>,
    birth_date: Option<usize>,
}

impl Columns {
    fn slot(&mut self, target: &str) -> Option<&mut Option<usize>> {
        Some(match target {
            "name" => &mut self.name,
            "id_number" => &mut self.id_number,
            "phone" => &mut self.phone,
            "plate" => &mut self.plate,
            "birth_date" => &mut self.birth_date,
            _ => return None,
        })
    }

    fn from_header<S: AsRef<str>>(header: &[S], map: &ColumnMap) -> Result<Columns, FieldError> {
        if header.iter().all(|h| h.as_ref().trim().is_empty()) {
            return Err(FieldError::new("header", "err.list.empty"));
        }
        let mut c = Columns::default();
        for (i, h) in header.iter().enumerate() {
            if let Some(slot) = column(h.as_ref()).and_then(|t| c.slot(t)) {
                slot.get_or_insert(i);
            }
        }
        for (target, heading) in &map.0 {
            let wanted = heading.trim().trim_start_matches('\u{feff}').to_lowercase();
            let by_name = header.iter().position(|h| {
                h.as_ref()
                    .trim()
                    .trim_start_matches('\u{feff}')
                    .to_lowercase()
                    == wanted
            });
            let by_number = wanted
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=header.len()).contains(n))
                .map(|n| n - 1);
            let Some(i) = by_name.or(by_number) else {
                return Err(
                    FieldError::new(format!("col_{target}"), "err.list.no_column")
                        .with("column", heading.clone()),
                );
            };
            // the column now means only this
            for t in TARGETS {
                if let Some(slot) = c.slot(t) {
                    if *slot == Some(i) {
                        *slot = None;
                    }
                }
            }
            if let Some(slot) = c.slot(target) {
                *slot = Some(i);
            }
        }
        if c.name.is_none() && c.id_number.is_none() && c.phone.is_none() && c.plate.is_none() {
            return Err(FieldError::new("header", "err.list.columns"));
        }
        Ok(c)
    }

    /// Validates one row's cells; a row with a bad cell gives all its errors.
    fn row(
        &self,
        line: usize,
        cells: &[&str],
        today: NaiveDate,
    ) -> Option<Result<ListRow, Vec<FieldError>>> {
        if cells.iter().all(|c| c.trim().is_empty()) {
            return None;
        }
        let get = |i: Option<usize>| {
            i.and_then(|i| cells.get(i))
                .map(|c| c.trim())
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
        if let Some(v) = get(self.name) {
            match PersonName::parse("name", v) {
                Ok(n) => row.name = Some(n),
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(self.id_number) {
            match IdNumber::parse_on("id_number", v, today) {
                Ok(id) => {
                    row.birth_date = Some(id.birth_date());
                    row.document = Some(Document::from(id));
                }
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(self.phone) {
            match MobilePhone::parse("phone", v) {
                Ok(p) => row.phone = Some(p),
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(self.plate) {
            match Plate::parse("plate", v) {
                Ok(p) => row.plate = Some(p),
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(self.birth_date) {
            match NaiveDate::parse_from_str(v, "%Y-%m-%d") {
                Ok(d) => row.birth_date = Some(d),
                Err(_) => errs.push(FieldError::new("birth_date", "err.date.format")),
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
        Some(if errs.is_empty() { Ok(row) } else { Err(errs) })
    }

    fn push(&self, out: &mut ParsedList, line: usize, cells: &[&str], today: NaiveDate) {
        match self.row(line, cells, today) {
            None => {}
            Some(Ok(r)) => out.rows.push(r),
            Some(Err(errs)) => out.errors.extend(errs.into_iter().map(|e| (line, e))),
        }
    }
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

/// How many threads the list passes use.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16)
}

/// Reads the data lines of `body` (the first is file line `first_line`).
fn parse_lines(cols: &Columns, body: &str, first_line: usize, today: NaiveDate) -> ParsedList {
    let mut out = ParsedList::default();
    let mut cells: Vec<&str> = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line_no = first_line + i;
        if line.contains('"') {
            let owned = csv_cells(line);
            let quoted: Vec<&str> = owned.iter().map(String::as_str).collect();
            cols.push(&mut out, line_no, &quoted, today);
        } else {
            cells.clear();
            cells.extend(line.split(','));
            cols.push(&mut out, line_no, &cells, today);
        }
    }
    out
}

/// Reads a CSV list (header row first; columns matched by name, order free). Large lists are
/// read on all cores: the body is cut at line ends and each part keeps its file line numbers.
pub fn parse_list(text: &str) -> ParsedList {
    parse_list_mapped(text, &ColumnMap::default())
}

/// [`parse_list`] with columns chosen by the user where headings are not recognised.
pub fn parse_list_mapped(text: &str, map: &ColumnMap) -> ParsedList {
    let text = text.trim_start_matches('\u{feff}');
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let cols = match Columns::from_header(&csv_cells(head.trim_end_matches('\r')), map) {
        Ok(c) => c,
        Err(e) => return ParsedList::refused(e),
    };
    // counting lines is cheap next to reading them: refuse an oversized list before the work
    if memchr_count(body.as_bytes()) > MAX_ROWS {
        return ParsedList::refused(
            FieldError::new("file", "err.list.too_many_rows").with("max", MAX_ROWS.to_string()),
        );
    }
    let today = crate::validate::china_today();
    let parts = split_at_lines(body, threads() * 4, 1 << 16);
    // line number of each part's first line
    let mut firsts = Vec::with_capacity(parts.len());
    let mut next = 2;
    for p in &parts {
        firsts.push(next);
        next += p.lines().count();
    }
    let work: Vec<(&str, usize)> = parts.into_iter().zip(firsts).collect();
    let results = in_parallel(&work, |(part, first)| {
        parse_lines(&cols, part, *first, today)
    });
    let mut out = ParsedList::default();
    for r in results {
        out.rows.extend(r.rows);
        out.errors.extend(r.errors);
    }
    out
}

/// Line ends in `bytes`.
fn memchr_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

/// Cuts `text` into about `n` parts that end at line ends (one part when it is small).
fn split_at_lines(text: &str, n: usize, min_len: usize) -> Vec<&str> {
    if text.len() < min_len || n < 2 {
        return vec![text];
    }
    let target = text.len() / n;
    let mut parts = Vec::with_capacity(n + 1);
    let mut rest = text;
    while rest.len() > target {
        match rest.as_bytes()[target..].iter().position(|b| *b == b'\n') {
            Some(i) => {
                let (a, b) = rest.split_at(target + i + 1);
                parts.push(a);
                rest = b;
            }
            None => break,
        }
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

/// Runs `f` over `items` on all cores, results in the order of `items`.
pub(crate) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    // one item, or one core: no thread to start
    if items.len() < 2 || threads() == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads().min(items.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            // a part that panicked must not vanish from the result: pass the panic on
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Reads a list given as rows of cells (from a spreadsheet), each with its line number as the
/// spreadsheet shows it: the first is the header. Every cell is validated; a row with a bad
/// cell is reported with its line and field and is not matched.
pub fn parse_rows(
    header: Vec<String>,
    rows: impl Iterator<Item = (usize, Vec<String>)>,
    map: &ColumnMap,
) -> ParsedList {
    let cols = match Columns::from_header(&header, map) {
        Ok(c) => c,
        Err(e) => return ParsedList::refused(e),
    };
    let today = crate::validate::china_today();
    let mut out = ParsedList::default();
    for (line, cells) in rows {
        let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
        cols.push(&mut out, line, &cells, today);
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
    /// What a reviewer decided, if anyone has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// A reviewer's decision on one match of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchDecision {
    pub list_id: Uuid,
    pub line: usize,
    pub person_id: Uuid,
    pub decision: Decision,
    pub by: Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A reviewer's word on an uncertain match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// It is this person: the match is certain now.
    Confirmed,
    /// It is not this person.
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Confirmed => "confirmed",
            Decision::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "confirmed" | "confirm" => Some(Decision::Confirmed),
            "rejected" | "reject" => Some(Decision::Rejected),
            _ => None,
        }
    }
}

/// The methods a match can be made by.
pub const METHODS: [&str; 4] = ["id_number", "phone", "name_birth_date", "plate"];

/// A stored method name as one of [`METHODS`] (`"other"` for anything else).
pub fn method_name(m: &str) -> &'static str {
    METHODS.into_iter().find(|x| *x == m).unwrap_or("other")
}

/// Below this confidence a match goes to the review queue.
pub const REVIEW_BELOW: f64 = 0.9;

/// What the store tells the matcher about one person.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownPerson {
    pub id: Uuid,
    /// The person this record was merged into (its matches go there).
    pub merged_into: Option<Uuid>,
    pub name: String,
    /// The birth date's blind index ([`birth_index`]): the date itself is not kept in clear,
    /// since with a masked ID number it would be the whole number.
    pub birth_index: Option<Vec<u8>>,
    /// The phone's blind index.
    pub phone_index: Option<Vec<u8>>,
}

/// The blind index of a birth date, as people carry it (`PersonInput::birth_index`) and as
/// a list row's date is looked up.
pub fn birth_index(vault: &Vault, date: NaiveDate) -> Vec<u8> {
    vault.blind_index("birth_date", &date.to_string())
}

/// Which matching passes to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passes {
    /// ID number and phone (blind indexes): certain.
    Exact,
    /// Name + birth date and plate: uncertain, reviewed.
    Fuzzy,
    All,
}

const NONE: u32 = u32::MAX;
/// At most this many people per phone / plate are offered (a shared phone or a bus plate
/// would otherwise flood the review queue).
const PHONE_LIMIT: usize = 5;
const PLATE_LIMIT: usize = 10;

fn key128(bytes: &[u8]) -> u128 {
    let mut k = [0u8; 16];
    let n = bytes.len().min(16);
    k[..n].copy_from_slice(&bytes[..n]);
    u128::from_le_bytes(k)
}

/// Longest name (in bytes) kept inline in a [`Known`] entry.
const INLINE_NAME: usize = 27;

/// One live person in the index, laid out so that a match reads one cache line: the id, the
/// next person with the same phone, and the name (inline when short, as nearly all are).
#[derive(Debug, Clone)]
struct Known {
    id: Uuid,
    next_phone: u32,
    /// Length of the inline name, or `u8::MAX` when it is in `long_names`.
    name_len: u8,
    name: [u8; INLINE_NAME],
}

/// Everyone the store knows, indexed in memory for matching: a hash join per pass instead of
/// a query per row. Keys are blind indexes and person ids (HMAC outputs), so they are hashed
/// cheaply; names and plates use the standard keyed hasher.
#[derive(Debug, Default)]
pub struct MatchIndex {
    people: Vec<Known>,
    long_names: HashMap<u32, Box<str>>,
    /// Person id (also of merged records) → dense number of the person it resolves to.
    by_id: FastMap<u128, u32>,
    /// Phone blind index → first person; [`Known::next_phone`] chains the others.
    by_phone: FastMap<u128, u32>,
    by_name_birth: HashMap<(Box<str>, u128), Vec<u32>>,
    by_plate: HashMap<Box<str>, Vec<u32>>,
}

impl MatchIndex {
    /// Indexes people and the plates seen on their registrations (`(plate, person id)`).
    pub fn new(people: Vec<KnownPerson>, plates: Vec<(String, Uuid)>) -> MatchIndex {
        let mut ix = MatchIndex::default();
        let live = people.iter().filter(|p| p.merged_into.is_none()).count();
        ix.people.reserve(live);
        ix.by_id.reserve(people.len());
        let mut merged = Vec::new();
        for p in people {
            if let Some(into) = p.merged_into {
                merged.push((p.id, into));
                continue;
            }
            let n = ix.people.len() as u32;
            ix.by_id.insert(p.id.as_u128(), n);
            let next_phone = match &p.phone_index {
                Some(ph) => ix.by_phone.insert(key128(ph), n).unwrap_or(NONE),
                None => NONE,
            };
            if let Some(b) = &p.birth_index {
                ix.by_name_birth
                    .entry((p.name.as_str().into(), key128(b)))
                    .or_default()
                    .push(n);
            }
            let mut entry = Known {
                id: p.id,
                next_phone,
                name_len: u8::MAX,
                name: [0; INLINE_NAME],
            };
            if p.name.len() <= INLINE_NAME {
                entry.name[..p.name.len()].copy_from_slice(p.name.as_bytes());
                entry.name_len = p.name.len() as u8;
            } else {
                ix.long_names.insert(n, p.name.into_boxed_str());
            }
            ix.people.push(entry);
        }
        // merges can chain (a into b into c): follow them to the live record
        let targets: HashMap<Uuid, Uuid> = merged.iter().copied().collect();
        for (id, mut into) in merged.iter().copied() {
            for _ in 0..16 {
                match targets.get(&into) {
                    Some(next) => into = *next,
                    None => break,
                }
            }
            if let Some(n) = ix.by_id.get(&into.as_u128()).copied() {
                ix.by_id.insert(id.as_u128(), n);
            }
        }
        for (plate, id) in plates {
            if let Some(n) = ix.by_id.get(&id.as_u128()).copied() {
                let e = ix.by_plate.entry(plate.into_boxed_str()).or_default();
                if !e.contains(&n) {
                    e.push(n);
                }
            }
        }
        ix
    }

    /// Loads the index from the store (everyone, whatever the caller's scope: a list is
    /// matched against all; what a user then sees of the matches is scoped).
    pub async fn load(store: &dyn Store) -> StoreResult<MatchIndex> {
        let (people, plates) = store.match_keys().await?;
        Ok(MatchIndex::new(people, plates))
    }

    /// Live (unmerged) people indexed.
    pub fn len(&self) -> usize {
        self.people.len()
    }

    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    fn name_of(&self, n: u32) -> &str {
        let k = &self.people[n as usize];
        match k.name_len {
            u8::MAX => self.long_names.get(&n).map_or("", |b| b),
            len => std::str::from_utf8(&k.name[..usize::from(len)]).unwrap_or(""),
        }
    }

    fn exact(&self, vault: &Vault, r: &ListRow, offer: &mut impl FnMut(u32, &'static str, f64)) {
        if let Some(d) = &r.document {
            let id = crate::register::document_person_id(vault, d);
            if let Some(n) = self.by_id.get(&id.as_u128()) {
                offer(*n, "id_number", 1.0);
            }
        }
        if let Some(p) = &r.phone {
            let mac = vault.index_parts("phone", &[p.as_str()]);
            let mut hits = [NONE; PHONE_LIMIT];
            let mut count = 0;
            let mut n = self.by_phone.get(&key128(&mac)).copied().unwrap_or(NONE);
            while n != NONE && count < PHONE_LIMIT {
                hits[count] = n;
                count += 1;
                n = self.people[n as usize].next_phone;
            }
            let name = r.name.as_ref().map(|n| n.as_str());
            for h in &hits[..count] {
                let same_name = name == Some(self.name_of(*h));
                let c = if same_name {
                    0.95
                } else if count == 1 {
                    0.9
                } else {
                    0.7
                };
                offer(*h, "phone", c);
            }
        }
    }

    fn fuzzy(&self, vault: &Vault, r: &ListRow, offer: &mut impl FnMut(u32, &'static str, f64)) {
        let name = r.name.as_ref().map(|n| n.as_str());
        if let (Some(n), Some(b)) = (name, r.birth_date) {
            let key = (Box::<str>::from(n), key128(&birth_index(vault, b)));
            if let Some(hits) = self.by_name_birth.get(&key) {
                for h in hits.iter().take(50) {
                    offer(*h, "name_birth_date", 0.75);
                }
            }
        }
        if let Some(p) = &r.plate {
            if let Some(hits) = self.by_plate.get(p.as_str()) {
                for h in hits.iter().take(PLATE_LIMIT) {
                    let same_name = name == Some(self.name_of(*h));
                    offer(*h, "plate", if same_name { 0.8 } else { 0.5 });
                }
            }
        }
    }

    /// Matches rows on all cores; each row gives its matches best first (one per person, by
    /// the surest method). `progress` is told how many rows are done.
    pub fn match_rows(
        &self,
        vault: &Vault,
        rows: &[ListRow],
        passes: Passes,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Vec<ListMatch> {
        const CHUNK: usize = 4096;
        let done = AtomicUsize::new(0);
        let chunks: Vec<&[ListRow]> = rows.chunks(CHUNK).collect();
        let per_chunk = in_parallel(&chunks, |chunk| {
            let mut out = Vec::new();
            let mut best: Vec<(u32, &'static str, f64)> = Vec::new();
            for r in *chunk {
                best.clear();
                let mut offer =
                    |n: u32, method: &'static str, c: f64| match best.iter_mut().find(|b| b.0 == n)
                    {
                        Some(b) if c > b.2 => *b = (n, method, c),
                        Some(_) => {}
                        None => best.push((n, method, c)),
                    };
                if passes != Passes::Fuzzy {
                    self.exact(vault, r, &mut offer);
                }
                if passes != Passes::Exact {
                    self.fuzzy(vault, r, &mut offer);
                }
                best.sort_by(|a, b| {
                    b.2.total_cmp(&a.2).then(
                        self.people[a.0 as usize]
                            .id
                            .cmp(&self.people[b.0 as usize].id),
                    )
                });
                out.extend(best.iter().map(|(n, method, c)| ListMatch {
                    line: r.line,
                    person_id: self.people[*n as usize].id,
                    method,
                    confidence: *c,
                    review: *c < REVIEW_BELOW,
                    decision: None,
                }));
            }
            progress(done.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len());
            out
        });
        per_chunk.into_iter().flatten().collect()
    }
}

/// Matches rows against everyone the store knows (loads the index, then all passes).
pub async fn match_rows(
    store: &dyn Store,
    vault: &Vault,
    rows: &[ListRow],
    progress: &(dyn Fn(usize) + Sync),
) -> StoreResult<Vec<ListMatch>> {
    let ix = MatchIndex::load(store).await?;
    Ok(ix.match_rows(vault, rows, Passes::All, progress))
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

    #[test]
    fn large_lists_are_read_in_parts_with_the_right_line_numbers() {
        // big enough to be cut into parts; bad rows, quoted cells, CRLF and blank lines spread
        let mut text = String::from("姓名,手机号\r\n");
        let mut bad = Vec::new();
        for i in 0..20_000usize {
            let line = i + 2;
            match i % 997 {
                0 => {
                    text.push_str("坏,123\r\n");
                    bad.push(line);
                }
                1 => text.push_str("\r\n"),
                2 => text.push_str("\"李四\",\"139 0000 0000\"\r\n"),
                _ => text.push_str(&format!("张三,139{:08}\r\n", i)),
            }
        }
        let p = super::parse_list(&text);
        let lines: Vec<usize> = p.errors.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, bad);
        assert_eq!(p.rows.len(), 20_000 - bad.len() - 21);
        assert!(p.rows.windows(2).all(|w| w[0].line < w[1].line));
        let quoted = p.rows.iter().find(|r| r.line == 2 + 2).unwrap();
        assert_eq!(quoted.phone.as_ref().unwrap().as_str(), "13900000000");
        let last = p.rows.last().unwrap();
        assert_eq!(last.line, 20_001);
        assert_eq!(last.phone.as_ref().unwrap().as_str(), "13900019999");
    }

    #[test]
    fn the_index_matches_like_the_rules_say_and_follows_merges() {
        use super::*;
        let v = Vault::new(&[3u8; 32]);
        let doc = |n: &str| Document::parse("id", crate::validate::DocType::CnId, n).unwrap();
        let a_doc = doc("11010519491231002X");
        let a = crate::register::document_person_id(&v, &a_doc);
        let b = Uuid::from_u128(2);
        let c = Uuid::from_u128(3);
        let old = Uuid::from_u128(4);
        let phone = |p: &str| Some(v.blind_index("phone", p));
        let birth = NaiveDate::from_ymd_opt(1990, 5, 6);
        let person = |id, merged_into, name: &str, phone_index| KnownPerson {
            id,
            merged_into,
            name: name.into(),
            birth_index: birth.map(|b| birth_index(&v, b)),
            phone_index,
        };
        let ix = MatchIndex::new(
            vec![
                person(a, None, "甲", phone("13900000001")),
                person(b, None, "乙", phone("13900000002")),
                person(c, None, "丙", phone("13900000002")),
                person(old, Some(a), "甲", None),
            ],
            vec![("蒙L12345".into(), old), ("蒙L12345".into(), a)],
        );
        assert_eq!(ix.len(), 3);
        let text = "身份证号,姓名,手机号,车牌号,出生日期\n11010519491231002X,,,,\n,甲,13900000001,,\n,乙,13900000002,,\n,丙,,,1990-05-06\n,丁,,蒙L12345,\n";
        let rows = parse_list(text).rows;
        let got: Vec<(usize, Uuid, &str, f64)> = ix
            .match_rows(&v, &rows, Passes::All, &|_| {})
            .into_iter()
            .map(|m| (m.line, m.person_id, m.method, m.confidence))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, a, "id_number", 1.0),
                (3, a, "phone", 0.95),
                (4, b, "phone", 0.95),
                (4, c, "phone", 0.7),
                (5, c, "name_birth_date", 0.75),
                (6, a, "plate", 0.5),
            ]
        );
        let exact = ix.match_rows(&v, &rows, Passes::Exact, &|_| {});
        assert_eq!(exact.len(), 4, "the four id and phone matches");
        assert!(exact.iter().all(|m| m.line <= 4));
        let fuzzy = ix.match_rows(&v, &rows, Passes::Fuzzy, &|_| {});
        assert_eq!(fuzzy.len(), 2, "the name + birth date and plate matches");
        assert!(fuzzy.iter().all(|m| m.line >= 5));
    }

    #[test]
    fn columns_can_be_chosen_by_heading_or_number() {
        use super::*;
        let text = "证件,联系方式,姓名\n11010519491231002X,13912345678,张三\n";
        assert_eq!(
            parse_list(text).rows[0].document,
            None,
            "证件 is not recognised"
        );
        let map =
            ColumnMap::from_pairs([("col_id_number", "证件"), ("col_phone", "2"), ("x", "y")]);
        let p = parse_list_mapped(text, &map);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            p.rows[0].document.as_ref().unwrap().number(),
            "11010519491231002X"
        );
        assert_eq!(p.rows[0].phone.as_ref().unwrap().as_str(), "13912345678");
        // a recognised column can be remapped: 姓名 read as plate now is not a name
        let p = parse_list_mapped(
            text,
            &ColumnMap::from_pairs([("col_id_number", "证件"), ("col_plate", "姓名")]),
        );
        assert!(p.rows.is_empty() && p.errors[0].1.field == "plate");
        let p = parse_list_mapped(text, &ColumnMap::from_pairs([("col_phone", "电话")]));
        assert_eq!(
            (
                p.errors[0].0,
                p.errors[0].1.field.as_str(),
                p.errors[0].1.key
            ),
            (1, "col_phone", "err.list.no_column")
        );
    }
}
