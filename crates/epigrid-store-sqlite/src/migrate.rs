//! Embedded, ordered migrations recorded in `schema_migrations`.

use epigrid_core::store::{StoreError, StoreResult};
use rusqlite::Connection;

/// Every migration, in order. Append only: a released migration never changes.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "foundation",
        include_str!("../migrations/0001_foundation.sql"),
    ),
    (2, "people", include_str!("../migrations/0002_people.sql")),
    (3, "merges", include_str!("../migrations/0003_merges.sql")),
    (
        4,
        "name_grams",
        include_str!("../migrations/0004_name_grams.sql"),
    ),
    (
        5,
        "proximity",
        include_str!("../migrations/0005_proximity.sql"),
    ),
    (6, "notices", include_str!("../migrations/0006_notices.sql")),
    (
        7,
        "contacts",
        include_str!("../migrations/0007_contacts.sql"),
    ),
    (8, "lists", include_str!("../migrations/0008_lists.sql")),
    (
        9,
        "list errors",
        include_str!("../migrations/0009_list_errors.sql"),
    ),
    (
        10,
        "list decisions",
        include_str!("../migrations/0010_list_decisions.sql"),
    ),
    (
        11,
        "person plates",
        include_str!("../migrations/0011_person_plates.sql"),
    ),
    (
        12,
        "registrations by site through their area",
        include_str!("../migrations/0012_registrations_site_index.sql"),
    ),
    (
        13,
        "registrations keep their phone number",
        include_str!("../migrations/0013_registration_phone.sql"),
    ),
    (
        14,
        "the person a registration's phone is sealed for",
        include_str!("../migrations/0014_registration_phone_sealed_for.sql"),
    ),
    (
        16,
        "registrations keep the name they were made with",
        include_str!("../migrations/0016_registration_name.sql"),
    ),
    (
        17,
        "a person's merges are found by person",
        include_str!("../migrations/0017_merge_people.sql"),
    ),
    (
        18,
        "a corrected person is pinned",
        include_str!("../migrations/0018_person_corrected.sql"),
    ),
    (
        19,
        "the audit log is looked up by subject and by account",
        include_str!("../migrations/0019_audit_lookups.sql"),
    ),
    (
        20,
        "name search ignores case",
        include_str!("../migrations/0020_name_grams_folded.sql"),
    ),
    (
        21,
        "the master key's check value",
        include_str!("../migrations/0021_key_check.sql"),
    ),
    (
        22,
        "one pending contact per person, notice and place",
        include_str!("../migrations/0022_pending_contact_once.sql"),
    ),
    (
        23,
        "people on lists and notices found by person",
        include_str!("../migrations/0023_pinned_by_lists_and_notices.sql"),
    ),
    (
        24,
        "birth dates kept as a blind index and a year",
        include_str!("../migrations/0024_birth_index.sql"),
    ),
];

pub fn run(conn: &mut Connection) -> StoreResult<()> {
    let e = |e: rusqlite::Error| StoreError::Backend(format!("migration: {e}"));
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .map_err(e)?;
    for (version, name, sql) in MIGRATIONS {
        // IMMEDIATE takes the write lock first, so two processes starting together apply each
        // migration once.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let done: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
                [version],
                |r| r.get(0),
            )
            .map_err(e)?;
        if !done {
            tx.execute_batch(sql).map_err(e)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![version, name, chrono::Utc::now().timestamp()],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
    }
    Ok(())
}
