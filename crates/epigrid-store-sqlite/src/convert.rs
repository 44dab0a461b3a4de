//! Column conversions: times as microseconds, UUIDs as text, enums by their wire names.

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use uuid::Uuid;

pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// A UUID read from a TEXT column.
pub struct U(pub Uuid);
impl FromSql for U {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = v.as_str()?;
        Uuid::parse_str(s)
            .map(U)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A UUID bound as TEXT (as `to_string` writes it) without a `String` for it: the intake's
/// fold binds three for every registration.
pub struct UuidText([u8; 36]);

impl UuidText {
    pub fn new(id: Uuid) -> UuidText {
        let mut text = [0u8; 36];
        id.hyphenated().encode_lower(&mut text);
        UuidText(text)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl ToSql for UuidText {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(&self.0)))
    }
}

/// A day bound as TEXT (`YYYY-MM-DD`, as `to_string` writes it) without formatting machinery
/// or a `String` for a four-digit year.
pub enum DayText {
    Short([u8; 10]),
    Long(String),
}

impl DayText {
    pub fn new(day: NaiveDate) -> DayText {
        use chrono::Datelike;
        let year = day.year();
        if !(0..=9999).contains(&year) {
            return DayText::Long(day.to_string());
        }
        let mut text = *b"0000-00-00";
        for (at, n, width) in [(0, year as u32, 4), (5, day.month(), 2), (8, day.day(), 2)] {
            let mut n = n;
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        DayText::Short(text)
    }
}

impl ToSql for DayText {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(match self {
            DayText::Short(text) => text,
            DayText::Long(text) => text.as_bytes(),
        })))
    }
}

/// An enum stored by its wire name.
pub fn parse_enum<T>(s: &str, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown value {s}").into(),
        )
    })
}

pub fn date(s: Option<String>) -> Option<NaiveDate> {
    s.and_then(|s| NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::ToSqlOutput;

    fn text(v: &impl ToSql) -> String {
        match v.to_sql().expect("to_sql") {
            ToSqlOutput::Borrowed(ValueRef::Text(t)) => {
                String::from_utf8(t.to_vec()).expect("utf-8")
            }
            _ => panic!("not borrowed text"),
        }
    }

    #[test]
    fn ids_and_days_are_bound_as_to_string_writes_them() {
        for id in [Uuid::nil(), Uuid::max(), Uuid::now_v7()] {
            assert_eq!(text(&UuidText::new(id)), id.to_string());
        }
        for (y, m, d) in [
            (2026, 11, 30),
            (2026, 1, 2),
            (7, 3, 9),
            (0, 1, 1),
            (9999, 12, 31),
            (10000, 1, 1),
            (-44, 3, 15),
        ] {
            let day = NaiveDate::from_ymd_opt(y, m, d).expect("a day");
            assert_eq!(text(&DayText::new(day)), day.to_string());
        }
    }
}
