//! The storage port. The web layer and the CLI only ever talk to a `dyn Store`; each backend
//! (SQLite, PostgreSQL) implements it with its own SQL and migrations, and one conformance
//! suite (`crates/epigrid/tests/it/store.rs`) runs against both.
//!
//! Every method that returns personal data takes the caller's [`Scope`] and filters by it in
//! SQL, so an out-of-scope record does not exist for the caller.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::area::{Area, Scope};
use crate::model::*;
use crate::person::{
    Category, CategoryChange, HealthReport, LabResult, Observation, ObservationRow, Person,
    PersonMerge, PersonQuery,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule would be broken (`what` names it, e.g. `username`).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The data breaks a rule the database checks (a missing parent area, say).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database cannot hold a value that got past validation (a NUL in text, a date
    /// beyond its range): the request's fault, not the database's.
    #[error("cannot be stored: {0}")]
    Unstorable(String),
    /// The database failed; the message is for logs and never holds personal data.
    #[error("database error: {0}")]
    Backend(String),
    /// The database cannot be reached (refused, closed, no connection free in time): the
    /// request may succeed if tried again later. For logs, as `Backend`.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Can the database be reached right now? (`/healthz`)
    async fn ping(&self) -> StoreResult<()>;

    // ---- the master key ----
    /// The check value of the key the database's personal data is sealed with
    /// (`Vault::key_check`), if one was recorded.
    async fn key_check(&self) -> StoreResult<Option<Vec<u8>>>;
    /// Records `check` as the key's check value unless one is recorded already; returns the
    /// value recorded (someone else's, if another process was first).
    async fn claim_key_check(&self, check: &[u8]) -> StoreResult<Vec<u8>>;
    /// Whether `epigrid demo` built this database ([`Store::mark_demo`]): only then does a
    /// demo start give its `admin` a new password (never a real deployment's).
    async fn is_demo(&self) -> StoreResult<bool>;
    /// Records that `epigrid demo` built this database.
    async fn mark_demo(&self) -> StoreResult<()>;
    /// One person's sealed document with their id, to try a key on a database sealed before
    /// key checks were recorded (`None` when nobody has a document).
    async fn sealed_sample(&self) -> StoreResult<Option<(Uuid, Vec<u8>)>>;
    /// Turns birth dates stored whole (before migration 24) into a blind index (`index` of
    /// the date) and the year; returns how many people it changed. Run where the key is, at
    /// start; cheap when there is nothing left to do.
    async fn seal_birth_dates(
        &self,
        index: &(dyn Fn(chrono::NaiveDate) -> Vec<u8> + Send + Sync),
    ) -> StoreResult<u64>;

    // ---- areas ----
    /// Inserts or updates areas in one transaction (all or nothing); parents must come first
    /// or already exist. Returns how many rows were new or changed.
    async fn upsert_areas(&self, areas: &[Area]) -> StoreResult<usize>;
    async fn area(&self, code: &str) -> StoreResult<Option<Area>>;
    /// Children of `parent` (or the roots when None), sorted by code.
    async fn area_children(&self, parent: Option<&str>) -> StoreResult<Vec<Area>>;
    /// Every area in the scope at `level` or above (smaller number), sorted by path.
    async fn areas_in(&self, scope: &Scope, max_level: u8) -> StoreResult<Vec<Area>>;
    async fn area_count(&self) -> StoreResult<i64>;

    // ---- sites ----
    async fn insert_site(&self, site: &Site) -> StoreResult<()>;
    /// Updates name, token, active and default stay of a site from `before` (as the caller
    /// read it) to `after`: `Conflict` when it is no longer as read (a rename made from an
    /// older read does not undo a deactivation or a new token).
    async fn update_site(&self, before: &Site, after: &Site) -> StoreResult<()>;
    async fn site(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Site>>;
    async fn site_by_token(&self, token: &str) -> StoreResult<Option<Site>>;
    async fn sites(&self, scope: &Scope) -> StoreResult<Vec<Site>>;

    // ---- registrations ----
    /// Stores one registration durably (resolving or creating its person and companions and
    /// updating rollups) and returns its sequence number. Returns only once it survives the
    /// process being killed: after its commit, or (SQLite, durability "process") once it is in
    /// the store's intake log, from which it is committed before any later read or write.
    async fn insert_registration(&self, reg: NewRegistration) -> StoreResult<i64>;
    /// Bulk load (demo, imports): all or nothing.
    async fn insert_registrations(&self, regs: Vec<NewRegistration>) -> StoreResult<()>;
    async fn registration(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Registration>>;
    /// Newest first unless `after_seq` is set (then oldest first, for the live feed).
    async fn registrations(
        &self,
        scope: &Scope,
        filter: &RegistrationFilter,
    ) -> StoreResult<Vec<Registration>>;
    /// Sets `left_at` (venue check-out); false if already checked out or not found.
    async fn check_out(&self, id: Uuid, site_id: Uuid, at: DateTime<Utc>) -> StoreResult<bool>;
    async fn registration_count(&self) -> StoreResult<i64>;

    // ---- persons ----
    async fn person_secrets(
        &self,
        person_id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<PersonSecrets>>;

    /// The companions listed with a registration in the scope, in the order given: each one's
    /// name as typed (if any) and whether a document was given for them.
    async fn registration_companions(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Vec<(Option<String>, bool)>>;

    /// What a registration in the scope was made with: the document of the person it came in
    /// as (not of the person it was merged into) and the phone number typed with it. A
    /// registration never shows another record's document or its person's stored number.
    async fn registration_secrets(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Option<RegistrationSecrets>>;

    /// A person visible in the scope (their area is in it).
    async fn person(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Person>>;
    /// People in the scope matching the query, most recently seen first.
    async fn search_persons(
        &self,
        scope: &Scope,
        query: &PersonQuery,
        limit: u32,
    ) -> StoreResult<Vec<Person>>;
    /// Records a category change if the person is still in `change.from` (compare-and-set);
    /// Ok(false) when someone changed it meanwhile. History row and person update are atomic.
    async fn change_category(&self, change: &CategoryChange) -> StoreResult<bool>;
    async fn category_history(&self, person_id: Uuid) -> StoreResult<Vec<CategoryChange>>;
    /// Applies several category changes (each compare-and-set) and opens observations, all in
    /// one transaction: if any person changed meanwhile, nothing is written (Conflict).
    async fn classify_many(
        &self,
        changes: &[CategoryChange],
        observations: &[Observation],
    ) -> StoreResult<()>;
    /// Marks `from` as a duplicate of `into` (both must be unmerged and distinct) and records
    /// the merge; registrations stay where they are and are read through the kept person.
    async fn merge_persons(&self, merge: &PersonMerge) -> StoreResult<()>;
    /// Undoes a merge that has not been undone yet and whose two people are both in `scope`;
    /// returns the merge. `NotFound` otherwise.
    async fn undo_merge(
        &self,
        merge_id: Uuid,
        scope: &Scope,
        at: DateTime<Utc>,
    ) -> StoreResult<PersonMerge>;
    /// Corrects a person's name and home area (home_path is the home area's path).
    async fn update_person(
        &self,
        id: Uuid,
        name: &str,
        home: Option<(&str, &str)>,
    ) -> StoreResult<()>;
    /// Current number of people per (area path, category) in the scope, counted from the
    /// people themselves (an index on category and path), so it is always exact.
    async fn category_counts(&self, scope: &Scope) -> StoreResult<Vec<(String, Category, i64)>>;

    // ---- contact tracing ----
    /// The visits, companions and households a trace needs, for registrations from `since` on.
    async fn trace_data(&self, since: DateTime<Utc>) -> StoreResult<crate::trace::TraceData>;
    /// Registrations with a sequence number above `after` (to bring a loaded trace index up to
    /// date), oldest first.
    async fn trace_visits_after(&self, after: i64) -> StoreResult<Vec<crate::trace::VisitRow>>;
    /// Stores imported proximity records, all or none; returns how many.
    async fn insert_proximity(&self, rows: Vec<crate::trace::ProximityRow>) -> StoreResult<usize>;
    /// Keeps contacts found or confirmed: new pairs are inserted; known ones get the latest
    /// figures, and become confirmed (never un-confirmed) when `status` is confirmed. Returns
    /// the contact persons that were not known before for their index person.
    async fn upsert_contacts(&self, rows: &[crate::trace::ContactRecord])
        -> StoreResult<Vec<Uuid>>;
    /// Confirmed contacts whose contact person is in the scope (the edges of chains).
    async fn confirmed_contacts(
        &self,
        scope: &Scope,
    ) -> StoreResult<Vec<crate::trace::ContactRecord>>;
    /// Stores an uploaded list's summary, its bad rows and its matches, all or nothing.
    async fn insert_list(
        &self,
        list: &ListRecord,
        errors: &[ListError],
        matches: &[crate::matching::ListMatch],
    ) -> StoreResult<()>;
    /// The bad rows of a list (by line), at most `limit`.
    async fn list_errors(&self, id: Uuid, limit: u32) -> StoreResult<Vec<ListError>>;
    /// Records a reviewer's decision on one match of a list, if the list and the person are in
    /// the scope and the match is still undecided; confirming makes it certain. `false` when
    /// there was no such undecided match.
    async fn decide_list_match(
        &self,
        d: &crate::matching::MatchDecision,
        scope: &Scope,
    ) -> StoreResult<bool>;
    /// The lists a person was matched on (newest first), with how: those uploaded in the
    /// scope, and any list at all when the person lives in the scope (a list uploaded in
    /// another area that names them shows up where they are).
    async fn lists_of(
        &self,
        person_id: Uuid,
        scope: &Scope,
    ) -> StoreResult<Vec<(ListRecord, crate::matching::ListMatch)>>;
    /// Lists uploaded in the scope, newest first.
    async fn lists(&self, scope: &Scope, limit: u32) -> StoreResult<Vec<ListRecord>>;
    /// Everyone known, for matching a list in memory: people (with merges, name, birth date
    /// and phone blind index) and the distinct `(plate, person id)` pairs of registrations.
    async fn match_keys(
        &self,
    ) -> StoreResult<(Vec<crate::matching::KnownPerson>, Vec<(String, Uuid)>)>;
    /// A list (if uploaded in the scope) and a page of its matches to people in the scope
    /// (by line, surest first).
    async fn list_matches(
        &self,
        id: Uuid,
        scope: &Scope,
        page: &MatchPage,
    ) -> StoreResult<Option<(ListRecord, Vec<(crate::matching::ListMatch, Person)>)>>;
    /// How many matches of a list are to people in the scope, and how many of those are
    /// still to review.
    async fn list_match_counts(&self, id: Uuid, scope: &Scope) -> StoreResult<(usize, usize)>;
    /// Stores a notice with its entries.
    async fn insert_notice(&self, notice: &crate::trace::Notice) -> StoreResult<()>;
    /// A notice (with entries) by its public token.
    async fn notice_by_token(&self, token: &str) -> StoreResult<Option<crate::trace::Notice>>;
    /// A notice by id if its case is in the scope.
    async fn notice(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<crate::trace::Notice>>;
    /// Records someone who came forward: finds the person (left as they are: coming forward
    /// is not a registration, so it moves, renames or re-numbers no one) or creates them in
    /// `area_path`, and adds a pending contact (once per person, notice and place: coming
    /// forward again changes nothing).
    async fn insert_pending_contact(
        &self,
        contact: &crate::trace::PendingContact,
        person: &PersonInput,
        area_path: &str,
    ) -> StoreResult<()>;
    async fn pending_contacts(
        &self,
        notice_id: Uuid,
    ) -> StoreResult<Vec<crate::trace::PendingContact>>;
    /// Which of these person ids exist (for checking an import before writing it).
    async fn existing_persons(&self, ids: Vec<Uuid>) -> StoreResult<Vec<Uuid>>;

    // ---- medical observation ----
    async fn insert_observation(&self, o: &Observation) -> StoreResult<()>;
    /// Updates end, release, token state, grid worker and reports per day from `before` (as
    /// the caller read it) to `after`: `Conflict` when it is no longer as read (a release or
    /// a revoked link is not undone by a change made from an older read).
    async fn update_observation(
        &self,
        before: &Observation,
        after: &Observation,
    ) -> StoreResult<()>;
    async fn observation(&self, id: Uuid, scope: &Scope) -> StoreResult<Option<Observation>>;
    async fn observation_by_token(&self, token_hash: &[u8]) -> StoreResult<Option<Observation>>;
    async fn observations_of(&self, person_id: Uuid) -> StoreResult<Vec<Observation>>;
    /// Observations of people in the scope (not merged away) still open, planned to end on or
    /// after the local day `ended_since`, or released at or after `released_since` (that
    /// day's local midnight).
    async fn observation_rows(
        &self,
        scope: &Scope,
        today: NaiveDate,
        ended_since: NaiveDate,
        released_since: DateTime<Utc>,
        grid_worker: Option<Uuid>,
    ) -> StoreResult<Vec<ObservationRow>>;
    /// Conflict when the observation already has a report in that slot.
    async fn insert_report(&self, r: &HealthReport) -> StoreResult<()>;
    async fn reports_of(&self, person_id: Uuid) -> StoreResult<Vec<HealthReport>>;

    // ---- laboratory ----
    async fn insert_lab_result(&self, r: &LabResult) -> StoreResult<()>;
    async fn lab_results_of(&self, person_id: Uuid) -> StoreResult<Vec<LabResult>>;
    /// People in scope with a positive result who are not (yet) confirmed.
    async fn review_list(&self, scope: &Scope) -> StoreResult<Vec<(Person, LabResult)>>;

    // ---- rollups ----
    /// Sums of `metric` per local day over the scope, between `from` and `to` inclusive.
    async fn rollup_series(
        &self,
        scope: &Scope,
        metric: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<(NaiveDate, i64)>>;
    /// Recounts the rollups from the facts (an invariant check and a repair tool). After a
    /// retention purge the rollups rightly count more: they keep the purged registrations.
    async fn recount_rollups(&self) -> StoreResult<Vec<RollupRow>>;
    async fn rollup_rows(&self) -> StoreResult<Vec<RollupRow>>;

    // ---- users and sessions ----
    async fn insert_user(&self, user: &User) -> StoreResult<()>;
    /// Updates password hash, role, area and active flag; deactivating ends the user's sessions
    /// (a reactivated account logs in afresh).
    async fn update_user(&self, user: &User) -> StoreResult<()>;
    async fn user(&self, id: Uuid) -> StoreResult<Option<User>>;
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    async fn users(&self, scope: &Scope) -> StoreResult<Vec<User>>;
    async fn insert_session(&self, session: &Session) -> StoreResult<()>;
    /// The live session with this token hash and its (active) user.
    async fn session(
        &self,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(Session, User)>>;
    async fn delete_session(&self, token_hash: &[u8]) -> StoreResult<()>;
    async fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    // ---- retention ----
    /// The retention purge: deletes the registrations made before `before` (with their
    /// companion lines) of people staff have never acted on (see [`KEPT_PEOPLE_SQL`]) and that
    /// list none who were, the vehicles such people were seen with only in those, then such
    /// people themselves once nothing refers to them and they have not been seen since
    /// `before`. Aggregates (rollups) and the audit log are kept. Both stores go in several
    /// transactions (SQLite's writer is shared with every registration; PostgreSQL's people
    /// go a thousand at a time): a purge may stop part-way, and the next run goes on.
    async fn purge_before(&self, before: DateTime<Utc>) -> StoreResult<Purged>;

    // ---- audit ----
    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()>;
    /// Newest first, the entries whose subject lies in the scope (or that the scope's users
    /// made) and that pass the filter, at most `filter.limit` (1–10,000).
    async fn audit_log(&self, scope: &Scope, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>>;
}

/// An uploaded list from another agency (its rows are not kept, only their matches).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ListRecord {
    pub id: Uuid,
    pub name: String,
    pub uploaded_by: Option<Uuid>,
    pub area_path: String,
    pub created_at: DateTime<Utc>,
    pub rows: i32,
    pub bad_rows: i32,
}

/// Which matches of a list to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchPage {
    /// Only those still to review (uncertain and undecided).
    pub review_only: bool,
    pub limit: u32,
    pub offset: u32,
}

impl Default for MatchPage {
    fn default() -> Self {
        MatchPage {
            review_only: false,
            limit: 1000,
            offset: 0,
        }
    }
}

/// A row of a list that could not be used, and why (a message key with its placeholder
/// values; the cell's content is not kept).
#[derive(Debug, Clone, PartialEq)]
pub struct ListError {
    pub line: usize,
    pub field: String,
    pub key: String,
    pub args: Vec<(String, String)>,
}

impl ListError {
    pub fn message(&self, lang: crate::Lang) -> String {
        let args: Vec<(&str, &str)> = self
            .args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        crate::i18n::tf(lang, &self.key, &args)
    }

    /// The placeholder values as stored (a JSON object).
    pub fn args_json(&self) -> String {
        let m: serde_json::Map<String, serde_json::Value> = self
            .args
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(m).to_string()
    }

    /// Rebuilds an error from its stored columns.
    pub fn from_stored(line: i64, field: String, key: String, args: &str) -> ListError {
        let args = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(args)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect();
        ListError {
            line: usize::try_from(line).unwrap_or(0),
            field,
            key,
            args,
        }
    }
}

impl From<&(usize, crate::validate::FieldError)> for ListError {
    fn from((line, e): &(usize, crate::validate::FieldError)) -> ListError {
        ListError {
            line: *line,
            field: e.field.clone(),
            key: e.key.to_string(),
            args: e
                .args
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }
}

/// Rollup metric names written with each registration.
pub mod metric {
    use crate::model::SiteKind;
    pub const REG_ALL: &str = "reg";
    pub const REG_FEVER: &str = "reg.fever";
    pub const REG_SYMPTOMATIC: &str = "reg.symptomatic";
    pub const REG_HIGH_RISK: &str = "reg.high_risk";
    pub fn reg_kind(kind: SiteKind) -> &'static str {
        match kind {
            SiteKind::Checkpoint => "reg.checkpoint",
            SiteKind::Gate => "reg.gate",
            SiteKind::Arrival => "reg.arrival",
            SiteKind::Venue => "reg.venue",
        }
    }
}

/// The rollup increments one registration contributes: `(metric, 1)` pairs.
pub fn registration_metrics(kind: SiteKind, fields: &RegistrationFields) -> Vec<&'static str> {
    let mut m = vec![metric::REG_ALL, metric::reg_kind(kind)];
    if is_fever(fields) {
        m.push(metric::REG_FEVER);
    }
    if fields.symptoms != 0 {
        m.push(metric::REG_SYMPTOMATIC);
    }
    if fields.high_risk_travel == Some(true) {
        m.push(metric::REG_HIGH_RISK);
    }
    m
}

/// SQL (both stores) for whether the stored `persons` row is *pinned*: staff have acted on the
/// person (a home area, a category now or ever, an observation even if released, a lab
/// result, a merge either way, even one undone, a correction of their details), or the
/// person is under review as a contact (named on a list, come forward on a notice, found by
/// a trace). A
/// registration then changes neither their area nor a phone number they already have, since
/// anyone who knows an ID number can register with it: it must not move a person's health
/// record to another area's staff. The registration keeps the number it was made with. A
/// literal, for `concat!`.
#[macro_export]
macro_rules! pinned_person_sql {
    () => {
        "(persons.merged_into IS NOT NULL OR persons.home_area_code IS NOT NULL OR persons.corrected \
         OR EXISTS (SELECT 1 FROM person_merges m WHERE m.from_person = persons.id) \
         OR EXISTS (SELECT 1 FROM person_merges m WHERE m.into_person = persons.id) \
         OR persons.category <> 'none' \
         OR EXISTS (SELECT 1 FROM observations o WHERE o.person_id = persons.id) \
         OR EXISTS (SELECT 1 FROM category_changes h WHERE h.person_id = persons.id) \
         OR EXISTS (SELECT 1 FROM lab_results l WHERE l.person_id = persons.id) \
         OR EXISTS (SELECT 1 FROM list_matches lm WHERE lm.person_id = persons.id) \
         OR EXISTS (SELECT 1 FROM pending_contacts pc WHERE pc.person_id = persons.id) \
         OR EXISTS (SELECT 1 FROM contacts ct WHERE ct.contact_person_id = persons.id))"
    };
}

/// A registration counts as fever when the measured temperature is 37.3 °C or more, or the
/// person reported fever.
pub fn is_fever(fields: &RegistrationFields) -> bool {
    fields.temperature.is_some_and(|t| t >= 373)
        || fields.symptoms & crate::validate::Symptom::Fever.bit() != 0
}

/// The site area code a registration's rollup is kept under (the last segment of its path).
pub fn path_leaf(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// What a retention purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub registrations: u64,
    pub persons: u64,
}

/// The ids of the people a retention purge keeps with all their registrations, in SQL both
/// stores run: everyone staff have acted on — a category now or ever, an observation (and
/// its reports), a lab result, a merge either way, a proximity record, a notice, a pending
/// or confirmed contact either way, a list match, a correction — and everyone merged into
/// another.
pub const KEPT_PEOPLE_SQL: &str = "SELECT id FROM persons WHERE category <> 'none' OR corrected <> false \
     OR merged_into IS NOT NULL \
     UNION SELECT person_id FROM category_changes UNION SELECT person_id FROM observations \
     UNION SELECT person_id FROM health_reports UNION SELECT person_id FROM lab_results \
     UNION SELECT from_person FROM person_merges UNION SELECT into_person FROM person_merges \
     UNION SELECT a FROM proximity UNION SELECT b FROM proximity \
     UNION SELECT case_person_id FROM notices \
     UNION SELECT index_person_id FROM pending_contacts UNION SELECT person_id FROM pending_contacts \
     UNION SELECT index_person_id FROM contacts UNION SELECT contact_person_id FROM contacts \
     UNION SELECT person_id FROM list_matches";

/// The master key's check value, as both stores read it (`Store::key_check`).
pub const KEY_CHECK_SQL: &str = "SELECT value FROM meta WHERE name = 'key_check'";

/// People whose birth date is still stored whole (`Store::seal_birth_dates`), a thousand at a
/// time; the partial index `persons_birth_unsealed` answers it.
pub const UNSEALED_BIRTHS_SQL: &str = "SELECT id, birth_date FROM persons \
     WHERE birth_index IS NULL AND birth_date IS NOT NULL LIMIT 1000";

/// Whether a registration listing is "the newest in the caller's area" (no site, person or
/// live-feed filter), which a store answers from the newest rows first: the area's own index
/// holds it in area order, so the newest fifty of a city would mean sorting all of it.
pub fn lists_newest(f: &crate::model::RegistrationFilter) -> bool {
    f.site_id.is_none() && f.person_id.is_none() && f.after_seq.is_none()
}

/// How many of the newest registrations (by sequence number, below `before` if paging) a
/// newest-first listing reads first; only when those hold fewer than it asks for does it
/// read the area's index instead (a small area, or a narrow filter).
pub fn newest_window(limit: u32) -> i64 {
    (i64::from(limit) * 20).max(20_000)
}

/// The people whose merges lead, through merges still standing, into the person `{from}`:
/// when `{from}`'s own merge into `{into}` is undone, they were moved along to `{into}` and go
/// back to `{from}` (with the registrations that came in as them). `{from}` and `{into}` are
/// the stores' placeholders.
pub const MERGED_UNDER_SQL: &str = "WITH RECURSIVE under(id) AS (\
     SELECT from_person FROM person_merges WHERE into_person = {from} AND undone_at IS NULL \
     UNION SELECT m.from_person FROM person_merges m JOIN under u ON m.into_person = u.id \
     WHERE m.undone_at IS NULL) SELECT id FROM under";

/// The statements that give a person back what a later merge of the one they were merged
/// into took along (see [`MERGED_UNDER_SQL`]), with the stores' placeholders for the two.
pub fn merged_back_sql(from: &str, into: &str) -> [String; 2] {
    let under = MERGED_UNDER_SQL.replace("{from}", from);
    [
        format!(
            "UPDATE persons SET merged_into = {from} WHERE merged_into = {into} AND id IN ({under})"
        ),
        format!(
            "UPDATE registrations SET person_id = {from} WHERE person_id = {into} \
             AND phone_sealed_for IN ({under})"
        ),
    ]
}

/// The statements of a retention purge, in order, with `{kept}` for [`KEPT_PEOPLE_SQL`] and
/// `{before}` for the cut-off's placeholder; the second counts registrations, the last one
/// people.
const PURGE_SQL: [&str; 6] = [
    "DELETE FROM registration_companions WHERE registration_id IN (SELECT id FROM registrations \
     WHERE at < {before} AND person_id NOT IN ({kept}) \
     AND id NOT IN (SELECT registration_id FROM registration_companions WHERE person_id IN ({kept})))",
    "DELETE FROM registrations WHERE at < {before} AND person_id NOT IN ({kept}) \
     AND id NOT IN (SELECT registration_id FROM registration_companions WHERE person_id IN ({kept}))",
    STALE_PLATES_SQL,
    "DELETE FROM person_grams WHERE person_id IN ({gone})",
    "DELETE FROM person_plates WHERE person_id IN ({gone})",
    "DELETE FROM persons WHERE id IN ({gone})",
];

/// Which vehicles the people a purge leaves were seen with: a pair no registration left shows
/// goes too, so that a plate search does not find them by what was purged.
pub const STALE_PLATES_SQL: &str = "DELETE FROM person_plates WHERE first_at < {before} \
     AND person_id NOT IN ({kept}) AND NOT EXISTS (SELECT 1 FROM registrations r \
     WHERE r.person_id = person_plates.person_id AND r.plate = person_plates.plate)";

/// The people a purge deletes (after their registrations): `{kept}` (a query of the ids kept)
/// and `{before}` as in [`PURGE_SQL`].
pub const GONE_PEOPLE_SQL: &str = "SELECT p.id FROM persons p WHERE p.last_seen_at < {before} \
     AND p.created_at < {before} AND p.id NOT IN ({kept}) \
     AND NOT EXISTS (SELECT 1 FROM registrations r WHERE r.person_id = p.id) \
     AND NOT EXISTS (SELECT 1 FROM registration_companions c WHERE c.person_id = p.id)";

/// [`PURGE_SQL`] with its placeholders filled, for a store whose cut-off parameter is
/// written `param` (`?1`, `$1`), as PostgreSQL runs it: the first three statements
/// (registrations, vehicles) at once, the last three (grams, plates, people) again and again
/// for up to `people_at_once` people each time, each time in one snapshot. (SQLite's one
/// writer goes in windows of its own.)
pub fn purge_statements(param: &str, people_at_once: usize) -> Vec<String> {
    // the same people in each of the last three statements: in one snapshot, ordered
    let gone = format!(
        "{} ORDER BY p.id LIMIT {people_at_once}",
        purge_sql(GONE_PEOPLE_SQL, param)
    );
    PURGE_SQL
        .iter()
        .map(|s| purge_sql(&s.replace("{gone}", &gone), param))
        .collect()
}

/// A purge statement's `{kept}` filled with [`KEPT_PEOPLE_SQL`] and `{before}` with the
/// store's cut-off parameter (`?1`, `$1`).
pub fn purge_sql(template: &str, param: &str) -> String {
    template
        .replace("{kept}", KEPT_PEOPLE_SQL)
        .replace("{before}", param)
}
