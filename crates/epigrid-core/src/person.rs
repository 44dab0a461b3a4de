//! People under management: the four categories (四类人员) and their outcomes, which changes
//! are allowed, medical observation and its daily self-report slots, and line-list status.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, Timelike, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

crate::wire_enum!(
    /// A person's category: the four categories, their outcomes, and none.
    Category {
        Confirmed = "confirmed",
        Suspected = "suspected",
        Fever = "fever",
        CloseContact = "close_contact",
        RuledOut = "ruled_out",
        Recovered = "recovered",
        Deceased = "deceased",
        None = "none",
    }
);

impl Category {
    /// The four categories that count as "under management" (四类人员).
    pub const FOUR: [Category; 4] = [
        Category::Confirmed,
        Category::Suspected,
        Category::Fever,
        Category::CloseContact,
    ];

    pub fn label_key(self) -> &'static str {
        match self {
            Category::Confirmed => "category.confirmed",
            Category::Suspected => "category.suspected",
            Category::Fever => "category.fever",
            Category::CloseContact => "category.close_contact",
            Category::RuledOut => "category.ruled_out",
            Category::Recovered => "category.recovered",
            Category::Deceased => "category.deceased",
            Category::None => "category.none",
        }
    }

    /// The category colour (always shown with its label, for colour-blind users).
    pub fn colour(self) -> &'static str {
        match self {
            Category::Confirmed => "#c62828",
            Category::Suspected => "#ef6c00",
            Category::Fever => "#f9a825",
            Category::CloseContact => "#1565c0",
            _ => "#757575",
        }
    }

    /// Default length of medical observation for this category, in days.
    pub fn default_observation_days(self) -> u32 {
        match self {
            Category::Confirmed => 28,
            Category::Fever => 7,
            _ => 14,
        }
    }
}

/// Why a category change is refused: a message key.
pub fn check_transition(from: Category, to: Category) -> Result<(), &'static str> {
    use Category::*;
    if from == to {
        return Err("err.category.same");
    }
    let ok = match from {
        Deceased => return Err("err.category.deceased"),
        None => matches!(to, Confirmed | Suspected | Fever | CloseContact),
        CloseContact => matches!(to, Confirmed | Suspected | Fever | RuledOut),
        Fever => matches!(to, Confirmed | Suspected | CloseContact | RuledOut),
        Suspected => matches!(to, Confirmed | RuledOut),
        Confirmed => matches!(to, Recovered | Deceased),
        RuledOut | Recovered => matches!(to, Confirmed | Suspected | Fever | CloseContact | None),
    };
    if ok {
        Ok(())
    } else if from == Confirmed {
        Err("err.category.confirmed")
    } else if to == None || to == RuledOut || to == Recovered || to == Deceased {
        Err("err.category.outcome")
    } else {
        Err("err.category.downgrade")
    }
}

crate::wire_enum!(
    /// Home observation or centralised (a quarantine hotel or similar site).
    ObservationKind {
        Home = "home",
        Central = "central",
    }
);

crate::wire_enum!(
    /// Kinds of laboratory test.
    TestKind {
        NucleicAcid = "nucleic_acid",
        Antibody = "antibody",
        Antigen = "antigen",
    }
);

crate::wire_enum!(
    /// A laboratory result.
    TestResult {
        Positive = "positive",
        Negative = "negative",
        Pending = "pending",
        Invalid = "invalid",
    }
);

/// A person as staff see them (personal fields masked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Person {
    pub id: Uuid,
    pub name: String,
    pub doc_type: Option<crate::validate::DocType>,
    pub doc_masked: Option<String>,
    pub phone_masked: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub sex: Option<crate::validate::Sex>,
    pub home_area_code: Option<String>,
    pub area_path: String,
    pub provisional: bool,
    pub merged_into: Option<Uuid>,
    pub category: Category,
    pub category_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl Person {
    /// The code of the area the person belongs to (home, else latest registration).
    pub fn area_code(&self) -> &str {
        crate::store::path_leaf(&self.area_path)
    }
}

/// How a search query is meant, decided from its shape.
#[derive(Debug, Clone, PartialEq)]
pub enum PersonQuery {
    /// A document number: exact match through the blind index.
    Document {
        index: Vec<u8>,
        doc_type: crate::validate::DocType,
    },
    /// A mobile number: exact match through the blind index.
    Phone(Vec<u8>),
    /// A vehicle plate seen at a checkpoint.
    Plate(String),
    /// Part of a name.
    Name(String),
}

/// One change of category, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryChange {
    pub id: Uuid,
    pub person_id: Uuid,
    pub from: Category,
    pub to: Category,
    pub at: DateTime<Utc>,
    pub by_user: Option<Uuid>,
    pub by_username: String,
    pub reason: String,
}

/// Two records found to be the same person: `from` now points at `into`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonMerge {
    pub id: Uuid,
    pub from_person: Uuid,
    pub into_person: Uuid,
    pub at: DateTime<Utc>,
    pub by_user: Option<Uuid>,
    pub by_username: String,
    pub reason: String,
    pub undone_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub id: Uuid,
    pub person_id: Uuid,
    pub kind: ObservationKind,
    pub site_id: Option<Uuid>,
    pub start: NaiveDate,
    pub planned_end: NaiveDate,
    pub released_at: Option<DateTime<Utc>>,
    pub release_reason: Option<String>,
    pub grid_worker_id: Option<Uuid>,
    /// SHA-256 of the personal report link's token.
    #[serde(skip)]
    pub token_hash: Vec<u8>,
    pub token_revoked: bool,
    pub reports_per_day: u8,
    pub area_path: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
}

impl Observation {
    pub fn is_active(&self, today: NaiveDate) -> bool {
        self.is_open(today) && today >= self.start
    }

    /// Not released and not past its planned end (it may not have started yet).
    pub fn is_open(&self, today: NaiveDate) -> bool {
        self.released_at.is_none() && today <= self.planned_end
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub id: Uuid,
    pub observation_id: Uuid,
    pub person_id: Uuid,
    pub day: NaiveDate,
    pub slot: u8,
    pub at: DateTime<Utc>,
    pub temperature: Option<i16>,
    pub symptoms: u8,
    pub note: Option<String>,
    /// Set when a grid worker entered it on the person's behalf.
    pub by_user: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabResult {
    pub id: Uuid,
    pub person_id: Uuid,
    pub test: TestKind,
    pub sample_date: NaiveDate,
    pub result_date: Option<NaiveDate>,
    pub result: TestResult,
    pub entered_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// An observation with what the line lists need: the latest report and today's count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationRow {
    pub observation: Observation,
    pub person_name: String,
    pub category: Category,
    pub last_report_at: Option<DateTime<Utc>>,
    pub last_temperature: Option<i16>,
    pub last_symptoms: u8,
    pub reports_today: i64,
}

/// The slot a report made at `at` falls in: the local day, and 0 (or 0/1 before/after noon
/// when two reports a day are asked for).
pub fn report_slot(at: DateTime<Utc>, tz: FixedOffset, per_day: u8) -> (NaiveDate, u8) {
    let local = at.with_timezone(&tz);
    let slot = if per_day >= 2 && local.hour() >= 12 {
        1
    } else {
        0
    };
    (local.date_naive(), slot)
}

crate::wire_enum!(
    /// Where an observation stands on the line lists.
    LineStatus {
        ReportedToday = "reported_today",
        NotReported = "not_reported",
        Overdue = "overdue",
        Symptomatic = "symptomatic",
        EndingSoon = "ending_soon",
        Ended = "ended",
    }
);

/// Message keys for the small enums above.
impl ObservationKind {
    pub fn label_key(self) -> String {
        format!("obs.kind.{}", self.as_str())
    }
}
impl TestKind {
    pub fn label_key(self) -> String {
        format!("lab.test.{}", self.as_str())
    }
}
impl TestResult {
    pub fn label_key(self) -> String {
        format!("lab.result.{}", self.as_str())
    }
}
impl LineStatus {
    pub fn label_key(self) -> String {
        format!("status.{}", self.as_str())
    }
}

/// Every line list an observation is on right now (a symptomatic person who reported today is
/// on both lists).
pub fn line_statuses(
    row: &ObservationRow,
    now: DateTime<Utc>,
    tz: FixedOffset,
    overdue_hours: i64,
) -> Vec<LineStatus> {
    let today = now.with_timezone(&tz).date_naive();
    let o = &row.observation;
    if !o.is_open(today) {
        return vec![LineStatus::Ended];
    }
    let mut v = Vec::new();
    if row.reports_today > 0 {
        v.push(LineStatus::ReportedToday);
    } else {
        v.push(LineStatus::NotReported);
    }
    let since = row.last_report_at.unwrap_or_else(|| {
        o.start
            .and_hms_opt(0, 0, 0)
            .map(|d| d.and_utc() - Duration::seconds(i64::from(tz.local_minus_utc())))
            .unwrap_or(o.created_at)
            .max(o.created_at)
    });
    if now - since > Duration::hours(overdue_hours) {
        v.push(LineStatus::Overdue);
    }
    if row.last_symptoms != 0 || row.last_temperature.is_some_and(|t| t >= 373) {
        v.push(LineStatus::Symptomatic);
    }
    if o.planned_end - today <= Duration::days(2) {
        v.push(LineStatus::EndingSoon);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use Category::*;

    #[test]
    fn impossible_transitions_are_refused_with_a_reason() {
        assert!(check_transition(None, CloseContact).is_ok());
        assert!(check_transition(CloseContact, Confirmed).is_ok());
        assert!(check_transition(Suspected, Confirmed).is_ok());
        assert!(check_transition(Confirmed, Recovered).is_ok());
        assert!(check_transition(Recovered, CloseContact).is_ok());
        assert_eq!(
            check_transition(Confirmed, CloseContact),
            Err("err.category.confirmed")
        );
        assert_eq!(
            check_transition(Deceased, None),
            Err("err.category.deceased")
        );
        assert_eq!(check_transition(Fever, Fever), Err("err.category.same"));
        assert_eq!(
            check_transition(None, Recovered),
            Err("err.category.outcome")
        );
        assert_eq!(
            check_transition(Suspected, Fever),
            Err("err.category.downgrade")
        );
        // every pair has an answer and none panics
        for a in Category::ALL {
            for b in Category::ALL {
                let _ = check_transition(*a, *b);
            }
        }
    }

    #[test]
    fn slots_follow_local_noon_when_two_reports_are_asked() {
        let tz = FixedOffset::east_opt(8 * 3600).unwrap();
        let morning = DateTime::parse_from_rfc3339("2026-11-28T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc); // 09:00 local
        let evening = DateTime::parse_from_rfc3339("2026-11-28T11:00:00Z")
            .unwrap()
            .with_timezone(&Utc); // 19:00 local
        let late = DateTime::parse_from_rfc3339("2026-11-28T17:00:00Z")
            .unwrap()
            .with_timezone(&Utc); // 01:00 next day
        let d = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        assert_eq!(report_slot(morning, tz, 2), (d, 0));
        assert_eq!(report_slot(evening, tz, 2), (d, 1));
        assert_eq!(report_slot(evening, tz, 1), (d, 0));
        assert_eq!(report_slot(late, tz, 1).0, d.succ_opt().unwrap());
    }

    fn row(
        start: NaiveDate,
        end: NaiveDate,
        last: Option<DateTime<Utc>>,
        today_reports: i64,
        temp: Option<i16>,
    ) -> ObservationRow {
        ObservationRow {
            observation: Observation {
                id: Uuid::nil(),
                person_id: Uuid::nil(),
                kind: ObservationKind::Home,
                site_id: Option::None,
                start,
                planned_end: end,
                released_at: Option::None,
                release_reason: Option::None,
                grid_worker_id: Option::None,
                token_hash: vec![],
                token_revoked: false,
                reports_per_day: 1,
                area_path: "/1/".into(),
                created_at: start.and_hms_opt(0, 0, 0).unwrap().and_utc(),
                created_by: Option::None,
            },
            person_name: "x".into(),
            category: CloseContact,
            last_report_at: last,
            last_temperature: temp,
            last_symptoms: 0,
            reports_today: today_reports,
        }
    }

    #[test]
    fn line_statuses_classify_observations() {
        let tz = FixedOffset::east_opt(8 * 3600).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-28T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let fresh = row(
            d("2026-11-20"),
            d("2026-12-03"),
            Some(now - Duration::hours(2)),
            1,
            Some(365),
        );
        assert_eq!(
            line_statuses(&fresh, now, tz, 36),
            vec![LineStatus::ReportedToday]
        );
        let silent = row(
            d("2026-11-20"),
            d("2026-11-29"),
            Some(now - Duration::hours(50)),
            0,
            Some(380),
        );
        assert_eq!(
            line_statuses(&silent, now, tz, 36),
            vec![
                LineStatus::NotReported,
                LineStatus::Overdue,
                LineStatus::Symptomatic,
                LineStatus::EndingSoon
            ]
        );
        let over = row(
            d("2026-11-01"),
            d("2026-11-14"),
            Option::None,
            0,
            Option::None,
        );
        assert_eq!(line_statuses(&over, now, tz, 36), vec![LineStatus::Ended]);
    }
}

/// The search grams of a name: every character and every pair of neighbouring characters
/// (what the `person_grams` index holds), without repeats.
pub fn name_grams(name: &str) -> Vec<String> {
    let chars: Vec<char> = fold_name(name)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut out: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    out.extend(chars.windows(2).map(|w| w.iter().collect::<String>()));
    out.sort_unstable();
    out.dedup();
    out
}

/// The gram a search for `q` looks up: its first pair of characters, or the character itself,
/// folded ([`fold_name`]).
pub fn search_gram(q: &str) -> String {
    first_gram(&fold_name(q))
}

/// The first pair of characters of `s` (spaces left out), or its one character, as it is.
pub fn first_gram(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).take(2).collect()
}

/// A name as search compares it: in lower case, character by character, so that `ivan`
/// finds Ivan and `иван` finds Иван (Chinese characters have no case and stay as they are).
/// The stores index grams of this and compare it (SQLite through the `epigrid_fold` SQL
/// function, which is this; PostgreSQL through `lower()`).
pub fn fold_name(name: &str) -> String {
    name.chars().flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod gram_tests {
    #[test]
    fn grams_cover_every_substring_start() {
        assert_eq!(
            super::name_grams("欧阳晓明"),
            vec!["明", "晓", "晓明", "欧", "欧阳", "阳", "阳晓"]
        );
        assert_eq!(super::search_gram("晓明"), "晓明");
        assert_eq!(super::search_gram("明"), "明");
        // case does not matter, in any alphabet that has it
        assert_eq!(
            super::name_grams("Ivan"),
            vec!["a", "an", "i", "iv", "n", "v", "va"]
        );
        assert_eq!(super::search_gram("ИВ"), "ив");
        assert_eq!(
            super::fold_name("Müller-Lüdenscheidt"),
            "müller-lüdenscheidt"
        );
        // every substring of length >= 1 starts with a gram of the name
        let name = "阿依古丽·买买提";
        let grams = super::name_grams(name);
        let chars: Vec<char> = name.chars().collect();
        for i in 0..chars.len() {
            for j in i + 1..=chars.len() {
                let q: String = chars[i..j].iter().collect();
                assert!(grams.contains(&super::search_gram(&q)), "{q}");
            }
        }
    }
}
