//! The records epigrid keeps, as the store hands them over and takes them in.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validate::{DocType, Sex};

crate::wire_enum!(
    /// A staff role. Every role is scoped to one area and everything under it.
    Role {
        Admin = "admin",
        Manager = "manager",
        Epidemiologist = "epidemiologist",
        GridWorker = "grid_worker",
        SiteStaff = "site_staff",
        Analyst = "analyst",
    }
);

impl Role {
    /// May this role see personal data (masked) at all? Analysts see aggregates only.
    pub fn sees_personal_data(self) -> bool {
        !matches!(self, Role::Analyst)
    }
    /// May this role read people's records: persons, lab results, observations, contacts and
    /// chains, notices, list matches? Site staff see the registrations of their sites only;
    /// analysts see aggregates only.
    pub fn sees_people(self) -> bool {
        !matches!(self, Role::Analyst | Role::SiteStaff)
    }
    /// May this role reveal a masked ID or phone number (an audited action)?
    pub fn may_unmask(self) -> bool {
        matches!(
            self,
            Role::Admin | Role::Epidemiologist | Role::GridWorker | Role::Manager
        )
    }
    /// May this role create, deactivate and print sites?
    pub fn manages_sites(self) -> bool {
        matches!(self, Role::Admin | Role::Manager)
    }
    /// May this role classify people, record lab results, trace and publish notices?
    pub fn classifies(self) -> bool {
        matches!(self, Role::Admin | Role::Epidemiologist | Role::Manager)
    }
    /// May this role follow people up: observations, reports on their behalf, corrections?
    pub fn follows_up(self) -> bool {
        self.classifies() || self == Role::GridWorker
    }
    /// May this role merge records, confirm contacts in bulk and match lists?
    pub fn investigates(self) -> bool {
        matches!(self, Role::Admin | Role::Epidemiologist)
    }
    /// May this role register a person at a site on their behalf?
    pub fn registers_for_others(self) -> bool {
        !matches!(self, Role::Analyst)
    }
}

crate::wire_enum!(
    /// What kind of place a site is; it chooses the self-registration form.
    SiteKind {
        Checkpoint = "checkpoint",
        Gate = "gate",
        Arrival = "arrival",
        Venue = "venue",
    }
);

impl SiteKind {
    /// How long a visit lasts when no exit was registered (minutes), used by contact tracing.
    pub fn default_stay_min(self) -> i32 {
        match self {
            SiteKind::Checkpoint => 10,
            SiteKind::Gate => 30,
            SiteKind::Arrival => 20,
            SiteKind::Venue => 60,
        }
    }
}

crate::wire_enum!(
    /// How a registration came in.
    Channel {
        SelfService = "self",
        Staff = "staff",
        Import = "import",
    }
);

crate::wire_enum!(
    /// In or out at a compound gate.
    Direction {
        In = "in",
        Out = "out",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub id: Uuid,
    /// The unguessable part of the public form URL (`/s/{token}`), 128 bits, rotatable.
    pub token: String,
    pub kind: SiteKind,
    pub name: String,
    pub area_code: String,
    pub area_path: String,
    pub active: bool,
    pub default_stay_min: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    #[serde(skip_serializing)]
    pub password_hash: String,
    pub role: Role,
    pub area_code: String,
    pub area_path: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

/// A server-side session (browser cookie) or API token; only the token's hash is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub token_hash: Vec<u8>,
    pub user_id: Uuid,
    /// The synchronizer token forms must echo back (empty for API tokens).
    pub csrf: String,
    pub api: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One line of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the log, given by the store when it is appended (0 before that); the
    /// cursor for paging back ([`AuditFilter::before_seq`]).
    #[serde(default)]
    pub seq: i64,
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub user_id: Option<Uuid>,
    pub username: String,
    /// `unmask`, `export`, `login`, `login_failed`, `site.create`, ...
    pub action: String,
    /// What was acted on: `registration:<id>`, `person:<id>`, ...
    pub subject: String,
    /// The area path of what was acted on, so admins see only their subtree's audit.
    pub area_path: String,
    pub ip: String,
    pub detail: String,
}

impl AuditEntry {
    /// An entry for something done now, to be appended (the store gives its `seq`).
    pub fn now(
        user_id: Option<Uuid>,
        username: &str,
        action: &str,
        subject: &str,
        area_path: &str,
        ip: &str,
        detail: &str,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            id: Uuid::now_v7(),
            at: Utc::now(),
            user_id,
            username: username.to_string(),
            action: action.to_string(),
            subject: subject.to_string(),
            area_path: area_path.to_string(),
            ip: ip.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// What the store needs to find or create the person behind a registration.
///
/// Person ids are derived from the blind index (see `crate::register::person_id`), so the id —
/// and with it the associated data the ciphertexts are bound to — is known before the write.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonInput {
    pub id: Uuid,
    pub doc_type: Option<DocType>,
    pub doc_index: Option<Vec<u8>>,
    pub doc_cipher: Option<Vec<u8>>,
    pub doc_masked: Option<String>,
    pub name: String,
    pub phone_index: Option<Vec<u8>>,
    pub phone_cipher: Option<Vec<u8>>,
    pub phone_masked: Option<String>,
    /// The birth year only (as 1 January of it): the whole date, with the masked ID number
    /// beside it, would be the whole number.
    pub birth_date: Option<NaiveDate>,
    /// The whole birth date's blind index, for matching lists by name and birth date.
    pub birth_index: Option<Vec<u8>>,
    pub sex: Option<Sex>,
    /// No identity document: found by phone + name only, to be confirmed by staff.
    pub provisional: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompanionInput {
    pub name: Option<String>,
    pub person: Option<PersonInput>,
}

/// The fields of a registration; which ones are set depends on the site kind.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RegistrationFields {
    /// Tenths of a degree Celsius.
    pub temperature: Option<i16>,
    /// Bitmask of `validate::Symptom`.
    pub symptoms: u8,
    pub high_risk_travel: Option<bool>,
    pub plate: Option<String>,
    pub companions: i32,
    pub origin_code: Option<String>,
    pub destination: Option<String>,
    pub direction: Option<Direction>,
    pub visitor: Option<bool>,
    pub unit_code: Option<String>,
    pub visit_reason: Option<String>,
    pub arrival_date: Option<NaiveDate>,
    pub residence_code: Option<String>,
    pub address: Option<String>,
    pub employer: Option<String>,
    pub stay_days: Option<i32>,
    pub purpose: Option<String>,
}

/// A validated registration with its personal data already sealed, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRegistration {
    pub id: Uuid,
    pub site_id: Uuid,
    pub area_path: String,
    pub at: DateTime<Utc>,
    pub kind: SiteKind,
    pub channel: Channel,
    pub by_user: Option<Uuid>,
    pub verification_code: String,
    pub person: PersonInput,
    pub companion_list: Vec<CompanionInput>,
    pub fields: RegistrationFields,
    /// Local day (`YYYY-MM-DD`) the registration counts for in rollups.
    pub day: NaiveDate,
}

/// A stored registration as staff see it: personal fields masked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub id: Uuid,
    pub seq: i64,
    pub site_id: Uuid,
    pub site_name: String,
    pub kind: SiteKind,
    pub area_code: String,
    pub area_path: String,
    pub at: DateTime<Utc>,
    pub person_id: Uuid,
    pub name: String,
    pub id_type: Option<DocType>,
    pub doc_masked: Option<String>,
    pub phone_masked: Option<String>,
    pub provisional: bool,
    pub channel: Channel,
    pub by_user: Option<Uuid>,
    pub verification_code: String,
    pub left_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub fields: RegistrationFields,
}

/// Filters for listing registrations (all optional, combined with AND).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrationFilter {
    pub site_id: Option<Uuid>,
    pub kind: Option<SiteKind>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub person_id: Option<Uuid>,
    /// Only rows with `seq` greater than this (live feed).
    pub after_seq: Option<i64>,
    /// Only rows with `seq` smaller than this (paging backwards).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// Which audit entries to read, newest first: each filter narrows what the caller's scope
/// holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// Exactly this username (as typed at login for failed logins).
    pub username: Option<String>,
    /// Exactly this action (`unmask`, `export`, `login_failed`, ...).
    pub action: Option<String>,
    /// Exactly this subject (`person:<id>`: who has read or changed that person's data).
    pub subject: Option<String>,
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    /// Only entries older than this `seq` (the next page back).
    pub before_seq: Option<i64>,
    pub limit: u32,
    /// Also the entries of no area (`/`: failed logins as unknown usernames), for an admin of
    /// a top-level area.
    pub unplaced: bool,
}

/// What a registration was made with, sealed, for an audited unmask: the document of the
/// person it came in as and the phone number typed with it, both bound to that person
/// (`persons.doc:{came_in_as}`, `persons.phone:{came_in_as}`). `came_in_as` is the
/// registration's `person_id` unless that person had been merged into another by then.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationSecrets {
    pub came_in_as: Uuid,
    pub doc_type: Option<DocType>,
    pub doc_cipher: Option<Vec<u8>>,
    /// `None` when it was made without a number (or stored before registrations kept theirs).
    pub phone_cipher: Option<Vec<u8>>,
}

/// The sealed personal values of a person, for an audited unmask.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonSecrets {
    pub person_id: Uuid,
    pub doc_type: Option<DocType>,
    pub doc_cipher: Option<Vec<u8>>,
    pub phone_cipher: Option<Vec<u8>>,
    pub area_path: String,
}

/// One cell of the rollup: a metric's value for an area on a local day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollupRow {
    pub area_code: String,
    pub day: NaiveDate,
    pub metric: String,
    pub value: i64,
}

impl Role {
    /// Message-catalogue key of the role's name.
    pub fn label_key(self) -> &'static str {
        match self {
            Role::Admin => "role.admin",
            Role::Manager => "role.manager",
            Role::Epidemiologist => "role.epidemiologist",
            Role::GridWorker => "role.grid_worker",
            Role::SiteStaff => "role.site_staff",
            Role::Analyst => "role.analyst",
        }
    }
}
