//! From what a person typed to a [`NewRegistration`]: field extraction (JSON or form), validation
//! per site kind, and sealing of personal data.
//!
//! Input is taken field by field from loosely typed sources so that a wrong type (a string
//! where a number belongs, say) becomes a field error in the user's language, not a rejection
//! of the whole request.

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::divisions;
use crate::model::*;
use crate::validate::*;
use crate::vault::Vault;

/// Maximum number of travel companions on one registration.
pub const MAX_COMPANIONS: i32 = 60;
/// Verification codes avoid look-alike characters (0/O, 1/I, 2/Z, 5/S, 8/B).
const CODE_ALPHABET: &[u8] = b"ACDEFHJKMNPRTUVWXY34679";

/// One companion as entered: a name and optionally a document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompanionRaw {
    pub name: Option<String>,
    pub id_type: Option<String>,
    pub id_number: Option<String>,
}

/// A field's text as it came: borrowed from the request where it can be (a JSON string
/// without escapes, a form value), so that reading a registration copies none of them.
pub type Text<'a> = Option<std::borrow::Cow<'a, str>>;

/// Raw registration input, every field still text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrationInput<'a> {
    pub name: Text<'a>,
    pub id_type: Text<'a>,
    pub id_number: Text<'a>,
    pub phone: Text<'a>,
    pub plate: Text<'a>,
    pub companions: Text<'a>,
    pub companion_list: Vec<CompanionRaw>,
    pub origin: Text<'a>,
    pub destination: Text<'a>,
    pub temperature: Text<'a>,
    pub symptoms: Vec<String>,
    /// Whether the symptoms were answered at all (an empty list or "none" is an answer; a
    /// form with nothing ticked, or a body without the key, is not).
    pub symptoms_answered: bool,
    pub high_risk_travel: Text<'a>,
    pub direction: Text<'a>,
    pub visitor: Text<'a>,
    pub unit_code: Text<'a>,
    pub visit_reason: Text<'a>,
    pub arrival_date: Text<'a>,
    pub residence_code: Text<'a>,
    pub address: Text<'a>,
    pub employer: Text<'a>,
    pub stay_days: Text<'a>,
    pub purpose: Text<'a>,
}

fn scalar(v: &Value) -> Option<String> {
    text(v).map(std::borrow::Cow::into_owned)
}

/// A scalar field's text: strings as they are, booleans and numbers written out, null as
/// absent, and for an array or an object a marker that fails validation.
fn text(v: &Value) -> Text<'_> {
    use std::borrow::Cow;
    match v {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(bool_text(*b))),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => Some(Cow::Borrowed(MARKER)),
    }
}

/// What an array or an object in a scalar field reads as: no valid value holds it.
const MARKER: &str = "\u{0}";

fn bool_text(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// The typed reader behind [`RegistrationInput::from_json_slice`]: reads the body's fields
/// straight into text, as [`RegistrationInput::from_json`] does from a parsed `Value`, without
/// building the `Value` first (the registration hot path).
mod typed {
    use super::RegistrationInput;
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;
    use std::fmt;

    /// A value read and dropped, checked as building a `Value` would check it (nesting depth,
    /// string encoding, number range): serde's `IgnoredAny` skips those checks, and a body the
    /// `Value` path refuses must be refused here too.
    struct Skip;
    struct SkipVisitor;
    impl<'de> Visitor<'de> for SkipVisitor {
        type Value = Skip;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_unit<E>(self) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_none<E>(self) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok(Skip)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok(Skip)
        }
    }
    impl<'de> Deserialize<'de> for Skip {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
            d.deserialize_any(SkipVisitor)
        }
    }

    /// Any JSON value as form text (as [`super::text`] reads it), borrowed from the body
    /// unless it holds an escape.
    pub struct Text<'de>(pub super::Text<'de>);

    struct TextVisitor;
    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Text<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
            Ok(Text(Some(Cow::Borrowed(v))))
        }
        fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
            Ok(Text(Some(Cow::Owned(v.to_string()))))
        }
        fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
            Ok(Text(Some(Cow::Owned(v))))
        }
        fn visit_bool<E>(self, v: bool) -> Result<Text<'de>, E> {
            Ok(Text(Some(Cow::Borrowed(super::bool_text(v)))))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Text<'de>, E> {
            Ok(Text(Some(Cow::Owned(
                serde_json::Number::from(v).to_string(),
            ))))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Text<'de>, E> {
            Ok(Text(Some(Cow::Owned(
                serde_json::Number::from(v).to_string(),
            ))))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Text<'de>, E> {
            Ok(Text(
                serde_json::Number::from_f64(v).map(|n| Cow::Owned(n.to_string())),
            ))
        }
        fn visit_unit<E>(self) -> Result<Text<'de>, E> {
            Ok(Text(None))
        }
        fn visit_none<E>(self) -> Result<Text<'de>, E> {
            Ok(Text(None))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok(Text(Some(Cow::Borrowed(super::MARKER))))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok(Text(Some(Cow::Borrowed(super::MARKER))))
        }
    }
    impl<'de> Deserialize<'de> for Text<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'de>, D::Error> {
            d.deserialize_any(TextVisitor)
        }
    }

    /// A key of the body, borrowed from it unless it holds an escape (serde reads a
    /// `Cow<str>` into a new `String` every time: a dozen allocations a registration).
    struct Key<'de>(std::borrow::Cow<'de, str>);
    struct KeyVisitor;
    impl<'de> Visitor<'de> for KeyVisitor {
        type Value = Key<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
            Ok(Key(std::borrow::Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
            Ok(Key(std::borrow::Cow::Owned(v.to_string())))
        }
        fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
            Ok(Key(std::borrow::Cow::Owned(v)))
        }
    }
    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
            d.deserialize_str(KeyVisitor)
        }
    }

    /// How the error for a key given twice begins (the key follows, then a line break).
    pub const DUPLICATE: &str = "duplicate key: ";

    fn duplicate<E: serde::de::Error>(key: &str) -> E {
        E::custom(format_args!("{DUPLICATE}{key}\n"))
    }

    /// The whole body: a JSON object (anything else is an error, and the caller falls back
    /// to the `Value` path for the exact message).
    pub struct Input<'de>(pub RegistrationInput<'de>);
    struct InputVisitor;
    impl<'de> Visitor<'de> for InputVisitor {
        type Value = Input<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Input<'de>, A::Error> {
            let mut i = RegistrationInput::default();
            // the keys seen so far, one bit each: one given twice is an error, not "the
            // last wins"
            let mut seen = 0u32;
            while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                let (bit, slot) = match &*k {
                    "name" => (0, &mut i.name),
                    "id_type" => (1, &mut i.id_type),
                    "id_number" => (2, &mut i.id_number),
                    "phone" => (3, &mut i.phone),
                    "plate" => (4, &mut i.plate),
                    "origin" => (5, &mut i.origin),
                    "destination" => (6, &mut i.destination),
                    "temperature" => (7, &mut i.temperature),
                    "high_risk_travel" => (8, &mut i.high_risk_travel),
                    "direction" => (9, &mut i.direction),
                    "visitor" => (10, &mut i.visitor),
                    "unit_code" => (11, &mut i.unit_code),
                    "visit_reason" => (12, &mut i.visit_reason),
                    "arrival_date" => (13, &mut i.arrival_date),
                    "residence_code" => (14, &mut i.residence_code),
                    "address" => (15, &mut i.address),
                    "employer" => (16, &mut i.employer),
                    "stay_days" => (17, &mut i.stay_days),
                    "purpose" => (18, &mut i.purpose),
                    // the two keys with a shape: read as `from_json` reads them
                    "symptoms" | "companions" => {
                        let bit = if &*k == "symptoms" { 19 } else { 20 };
                        if seen & (1 << bit) != 0 {
                            return Err(duplicate(&k));
                        }
                        seen |= 1 << bit;
                        let v = map.next_value::<serde_json::Value>()?;
                        if bit == 19 {
                            i.symptoms = super::symptoms_of(&v);
                            i.symptoms_answered = true;
                        } else {
                            let (count, list) = super::companions_of(&v);
                            (i.companions, i.companion_list) = (count.map(Cow::Owned), list);
                        }
                        continue;
                    }
                    _ => {
                        map.next_value::<Skip>()?;
                        continue;
                    }
                };
                if seen & (1 << bit) != 0 {
                    return Err(duplicate(&k));
                }
                seen |= 1 << bit;
                *slot = map.next_value::<Text>()?.0;
            }
            Ok(Input(i))
        }
    }
    impl<'de> Deserialize<'de> for Input<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Input<'de>, D::Error> {
            d.deserialize_map(InputVisitor)
        }
    }
}

/// `symptoms`: an array of texts, or one text (null: none).
fn symptoms_of(v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|i| scalar(i).unwrap_or_default())
            .collect(),
        other => vec![scalar(other).unwrap_or_default()],
    }
}

/// `companions`: an array of companions (objects with name and document, or names), or a
/// count given as any text. The count, and the list.
fn companions_of(v: &Value) -> (Option<String>, Vec<CompanionRaw>) {
    let Value::Array(items) = v else {
        return (scalar(v), Vec::new());
    };
    let list = items
        .iter()
        .map(|item| match item {
            Value::Object(_) => {
                let get = |k: &str| item.get(k).and_then(scalar);
                CompanionRaw {
                    name: get("name"),
                    id_type: get("id_type"),
                    id_number: get("id_number"),
                }
            }
            other => CompanionRaw {
                name: scalar(other),
                ..Default::default()
            },
        })
        .collect();
    (Some(items.len().to_string()), list)
}

impl<'a> RegistrationInput<'a> {
    /// Reads a request body: a JSON object read straight into text fields (as
    /// [`RegistrationInput::from_json`] would read its `Value`). Not JSON, or not an object:
    /// the `body` field error `from_json` gives.
    pub fn from_json_slice(bytes: &'a [u8]) -> Result<RegistrationInput<'a>, FieldError> {
        // The body checked as UTF-8 once, then read as text: read as bytes, each of its
        // strings was checked on its own. (Not UTF-8: read as bytes, to fail as before.)
        let typed = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str::<typed::Input>(text),
            Err(_) => serde_json::from_slice::<typed::Input>(bytes),
        };
        match typed {
            Ok(typed::Input(i)) => return Ok(i),
            Err(e) => {
                let m = e.to_string();
                if let Some(k) = m
                    .strip_prefix(typed::DUPLICATE)
                    .and_then(|r| r.split('\n').next())
                {
                    return Err(FieldError::new(k, "err.body.duplicate"));
                }
            }
        }
        match serde_json::from_slice::<Value>(bytes) {
            // (owned: the `Value` goes with this call)
            Ok(v) => RegistrationInput::from_json(&v).map(RegistrationInput::into_owned),
            Err(_) => Err(FieldError::new("body", "err.body.json")),
        }
    }

    /// Reads a JSON object; unknown keys are ignored, wrong shapes become field errors later.
    pub fn from_json(v: &'a Value) -> Result<RegistrationInput<'a>, FieldError> {
        let Some(obj) = v.as_object() else {
            return Err(FieldError::new("body", "err.body.not_object"));
        };
        let s = |k: &str| obj.get(k).and_then(text);
        let mut input = RegistrationInput {
            name: s("name"),
            id_type: s("id_type"),
            id_number: s("id_number"),
            phone: s("phone"),
            plate: s("plate"),
            origin: s("origin"),
            destination: s("destination"),
            temperature: s("temperature"),
            high_risk_travel: s("high_risk_travel"),
            direction: s("direction"),
            visitor: s("visitor"),
            unit_code: s("unit_code"),
            visit_reason: s("visit_reason"),
            arrival_date: s("arrival_date"),
            residence_code: s("residence_code"),
            address: s("address"),
            employer: s("employer"),
            stay_days: s("stay_days"),
            purpose: s("purpose"),
            ..Default::default()
        };
        if let Some(v) = obj.get("symptoms") {
            input.symptoms = symptoms_of(v);
            input.symptoms_answered = true;
        }
        if let Some(v) = obj.get("companions") {
            let (count, list) = companions_of(v);
            (input.companions, input.companion_list) = (count.map(std::borrow::Cow::Owned), list);
        }
        Ok(input)
    }

    /// The field of one value a form's `name` fills, if it is one (symptoms repeat, and
    /// companions have fields of their own).
    fn slot(&mut self, name: &str) -> Option<&mut Text<'a>> {
        Some(match name {
            "name" => &mut self.name,
            "id_type" => &mut self.id_type,
            "id_number" => &mut self.id_number,
            "phone" => &mut self.phone,
            "plate" => &mut self.plate,
            "companions" => &mut self.companions,
            "origin" => &mut self.origin,
            "destination" => &mut self.destination,
            "temperature" => &mut self.temperature,
            "high_risk_travel" => &mut self.high_risk_travel,
            "direction" => &mut self.direction,
            "visitor" => &mut self.visitor,
            "unit_code" => &mut self.unit_code,
            "visit_reason" => &mut self.visit_reason,
            "arrival_date" => &mut self.arrival_date,
            "residence_code" => &mut self.residence_code,
            "address" => &mut self.address,
            "employer" => &mut self.employer,
            "stay_days" => &mut self.stay_days,
            "purpose" => &mut self.purpose,
            _ => return None,
        })
    }

    /// Reads `application/x-www-form-urlencoded` pairs (symptoms repeat; companions as
    /// `companion_name_N` / `companion_id_N`).
    pub fn from_pairs(pairs: &'a [(String, String)]) -> RegistrationInput<'a> {
        let mut input = RegistrationInput::default();
        for (k, v) in pairs {
            let v = Some(v).filter(|s| !s.trim().is_empty());
            if k == "symptoms" {
                input.symptoms.extend(v.cloned());
                input.symptoms_answered = true;
            } else if let Some(slot) = input.slot(k) {
                *slot = v.map(|v| std::borrow::Cow::Borrowed(v.as_str()));
            }
        }
        input.companion_list = form_companions(pairs).into_iter().map(|(_, c)| c).collect();
        input
    }

    /// The same input with every text its own (borrowing nothing).
    pub fn into_owned(self) -> RegistrationInput<'static> {
        fn own(t: Text<'_>) -> Text<'static> {
            t.map(|t| std::borrow::Cow::Owned(t.into_owned()))
        }
        RegistrationInput {
            name: own(self.name),
            id_type: own(self.id_type),
            id_number: own(self.id_number),
            phone: own(self.phone),
            plate: own(self.plate),
            companions: own(self.companions),
            origin: own(self.origin),
            destination: own(self.destination),
            temperature: own(self.temperature),
            high_risk_travel: own(self.high_risk_travel),
            direction: own(self.direction),
            visitor: own(self.visitor),
            unit_code: own(self.unit_code),
            visit_reason: own(self.visit_reason),
            arrival_date: own(self.arrival_date),
            residence_code: own(self.residence_code),
            address: own(self.address),
            employer: own(self.employer),
            stay_days: own(self.stay_days),
            purpose: own(self.purpose),
            companion_list: self.companion_list,
            symptoms: self.symptoms,
            symptoms_answered: self.symptoms_answered,
        }
    }
}

/// Fields of a form that hold one value, each given more than once in `pairs` (a form sent
/// by hand or by a broken client): one error each, as a JSON body's repeated key gets, rather
/// than quietly taking the last. Symptoms may repeat.
pub fn repeated_fields(pairs: &[(String, String)]) -> Vec<FieldError> {
    let mut form = RegistrationInput::default();
    let mut seen = std::collections::HashSet::new();
    let mut errs: Vec<FieldError> = Vec::new();
    for (k, _) in pairs {
        let single = form.slot(k).is_some()
            || ["origin_province", "origin_text"].contains(&k.as_str())
            || k.starts_with("companion_name_")
            || k.starts_with("companion_id_");
        if single && !seen.insert(k.as_str()) && !errs.iter().any(|e| e.field == *k) {
            errs.push(FieldError::new(k, "err.body.duplicate"));
        }
    }
    errs
}

/// The companions a form lists, in row order, each with its row number (`companion_name_N`,
/// `companion_id_N`); blank rows are left out, so the `i` of an error on `companions[i]` is
/// the `i`-th of these, not row `i + 1`.
pub fn form_companions(pairs: &[(String, String)]) -> Vec<(u32, CompanionRaw)> {
    let mut rows: std::collections::BTreeMap<u32, CompanionRaw> = Default::default();
    for (k, v) in pairs {
        let v = Some(v.clone()).filter(|s| !s.trim().is_empty());
        if let Some(n) = k.strip_prefix("companion_name_") {
            if let Ok(n) = n.parse::<u32>() {
                rows.entry(n).or_default().name = v;
            }
        } else if let Some(n) = k.strip_prefix("companion_id_") {
            if let Ok(n) = n.parse::<u32>() {
                rows.entry(n).or_default().id_number = v;
            }
        }
    }
    rows.into_iter()
        .filter(|(_, c)| c.name.is_some() || c.id_number.is_some())
        .map(|(n, mut c)| {
            // The form has one box per companion: a number with letters in it (other than a
            // mainland ID's final X) is a passport or travel permit, and so is one of exactly
            // 9 digits (the United States' and Russia's passports); any other number of
            // digits is a mainland ID number. (A number shaped like a mainland one, 17 digits
            // and one more, stays one, and so does one of any other length, so a typo in an
            // ID number is reported rather than taken for a passport.)
            if c.id_number.as_deref().is_some_and(looks_like_passport) {
                c.id_type = Some("passport".into());
            }
            (n, c)
        })
        .collect()
}

/// Whether a document number typed into a single box (a companion's, or on a notice's "I was
/// there" form) is a passport or travel permit rather than a mainland ID number: one with
/// letters in it (other than a mainland ID's final X), or of exactly 9 digits (the United
/// States' and Russia's passports). A number shaped like a mainland one, 17 digits and one
/// more, stays one, and so does one of any other length, so a typo in an ID number is
/// reported rather than taken for a passport.
pub fn looks_like_passport(raw: &str) -> bool {
    let v: Vec<char> = raw
        .chars()
        .map(crate::validate::fold_width)
        .filter(|ch| !ch.is_whitespace())
        .collect();
    let id_shaped = v.len() == 18 && v[..17].iter().all(char::is_ascii_digit);
    let digits = v.iter().all(char::is_ascii_digit);
    !id_shaped && (v.iter().any(|ch| ch.is_alphabetic()) || (digits && v.len() == 9))
}

/// What the validator needs to know besides the input.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub site: &'a Site,
    pub channel: Channel,
    pub by_user: Option<Uuid>,
    pub now: DateTime<Utc>,
    /// Offset of local time from UTC (Asia/Shanghai: +08:00).
    pub tz: FixedOffset,
}

/// Validated identity of one person, still in clear.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: PersonName,
    pub document: Option<Document>,
    pub phone: Option<MobilePhone>,
}

/// A registration that passed validation, before sealing.
#[derive(Debug, Clone)]
pub struct ValidRegistration {
    pub identity: Identity,
    pub companions: Vec<(Option<String>, Option<Document>)>,
    pub fields: RegistrationFields,
}

fn parse_bool(
    field: &str,
    raw: &Option<impl std::ops::Deref<Target = str>>,
) -> Result<Option<bool>, FieldError> {
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some("true" | "1" | "yes" | "on" | "是") => Ok(Some(true)),
        Some("false" | "0" | "no" | "off" | "否") => Ok(Some(false)),
        // `visitor` is "are you a visitor?": resident or visitor
        Some(_) if field == "visitor" => Err(FieldError::new(field, "err.visitor.format")),
        Some(_) => Err(FieldError::new(field, "err.bool.format")),
    }
}

fn parse_int(
    field: &str,
    raw: &Option<impl std::ops::Deref<Target = str>>,
    min: i64,
    max: i64,
) -> Result<Option<i64>, FieldError> {
    let Some(s) = raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let n =
        crate::validate::whole_number(s).ok_or_else(|| FieldError::new(field, "err.int.format"))?;
    if n < min || n > max {
        return Err(FieldError::new(field, "err.int.range")
            .with("min", min.to_string())
            .with("max", max.to_string()));
    }
    Ok(Some(n))
}

fn origin(
    field: &str,
    raw: &Option<impl std::ops::Deref<Target = str>>,
) -> Result<Option<String>, FieldError> {
    match raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => divisions::normalise_origin(s)
            .map(Some)
            .ok_or_else(|| FieldError::new(field, "err.origin.unknown")),
    }
}

fn parse_document(
    errors: &mut Errors,
    type_field: &str,
    number_field: &str,
    id_type: &Option<impl std::ops::Deref<Target = str>>,
    id_number: &Option<impl std::ops::Deref<Target = str>>,
) -> Option<Document> {
    let number = id_number
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    let doc_type = match id_type.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => DocType::CnId,
        Some(t) => match DocType::parse(t) {
            Some(t) => t,
            None => {
                errors.push(FieldError::new(type_field, "err.doc_type.unknown"));
                return None;
            }
        },
    };
    errors.check(Document::parse(number_field, doc_type, number))
}

/// Validates `input` for the site's kind. Every bad field is reported at once.
pub fn validate(
    input: &RegistrationInput,
    ctx: &Context<'_>,
) -> Result<ValidRegistration, Vec<FieldError>> {
    let kind = ctx.site.kind;
    let staff = ctx.channel == Channel::Staff;
    let mut e = Errors::default();

    let name = e.check(PersonName::parse(
        "name",
        input.name.as_deref().unwrap_or(""),
    ));
    let document = parse_document(
        &mut e,
        "id_type",
        "id_number",
        &input.id_type,
        &input.id_number,
    );
    let doc_given = input
        .id_number
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty());
    let doc_required = matches!(
        kind,
        SiteKind::Checkpoint | SiteKind::Arrival | SiteKind::Venue
    );
    if doc_required && !doc_given {
        e.push(FieldError::new("id_number", "err.required"));
    }
    let phone = match input
        .phone
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(p) => e.check(MobilePhone::parse("phone", p)),
        None => {
            // Staff may register someone who has no phone, as long as a document identifies them.
            if staff && !doc_given {
                e.push(FieldError::new("phone", "err.phone.or_document"));
            } else if !staff {
                e.push(FieldError::new("phone", "err.required"));
            }
            None
        }
    };

    let temperature = match input
        .temperature
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(t) => e.check(Temperature::parse("temperature", t)),
        None => {
            if matches!(kind, SiteKind::Checkpoint | SiteKind::Gate) {
                e.push(FieldError::new("temperature", "err.required"));
            }
            None
        }
    };
    let symptoms = e
        .check(Symptoms::parse("symptoms", &input.symptoms))
        .unwrap_or_default();
    let mut fields = RegistrationFields {
        temperature: temperature.map(|t| t.tenths()),
        symptoms: symptoms.bits(),
        ..Default::default()
    };
    let mut companions = Vec::new();

    match kind {
        SiteKind::Checkpoint => {
            fields.plate = match input
                .plate
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                Some(p) => e
                    .check(Plate::parse("plate", p))
                    .map(|p| p.as_str().to_string()),
                None => None,
            };
            let listed = input.companion_list.len() as i64;
            let count = e
                .check(parse_int(
                    "companions",
                    &input.companions,
                    0,
                    MAX_COMPANIONS as i64,
                ))
                .flatten()
                .unwrap_or(listed);
            if listed > MAX_COMPANIONS as i64 {
                // named one by one (a form's companion_name_N) with no count given: the
                // count's own limit still holds
                e.push(
                    FieldError::new("companions", "err.int.range")
                        .with("min", "0")
                        .with("max", MAX_COMPANIONS.to_string()),
                );
            } else if listed > count {
                e.push(FieldError::new("companions", "err.companions.more_listed"));
            }
            fields.companions = count as i32;
            for (i, c) in input.companion_list.iter().enumerate() {
                let name = match c.name.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                    Some(n) => e
                        .check(PersonName::parse(&format!("companions[{i}].name"), n))
                        .map(|n| n.as_str().to_string()),
                    None => None,
                };
                let doc = parse_document(
                    &mut e,
                    &format!("companions[{i}].id_type"),
                    &format!("companions[{i}].id_number"),
                    &c.id_type,
                    &c.id_number,
                );
                if doc.is_some() && name.is_none() {
                    // optional, but a document names someone: say whose
                    e.push(FieldError::new(
                        format!("companions[{i}].name"),
                        "err.companion.name",
                    ));
                }
                companions.push((name, doc));
            }
            fields.origin_code = e.check(origin("origin", &input.origin)).flatten();
            if input.origin.as_deref().is_none_or(|s| s.trim().is_empty()) {
                e.push(FieldError::new("origin", "err.required"));
            }
            fields.destination = e
                .check(validate_text(
                    "destination",
                    input.destination.as_deref().unwrap_or(""),
                    100,
                    true,
                ))
                .flatten();
            fields.high_risk_travel =
                match e.check(parse_bool("high_risk_travel", &input.high_risk_travel)) {
                    Some(None) => {
                        e.push(FieldError::new("high_risk_travel", "err.required"));
                        None
                    }
                    answer => answer.flatten(),
                };
        }
        SiteKind::Gate => {
            fields.direction = match input.direction.as_deref().map(str::trim) {
                Some(d) if !d.is_empty() => match Direction::parse(d) {
                    Some(d) => Some(d),
                    None => {
                        e.push(FieldError::new("direction", "err.direction.format"));
                        None
                    }
                },
                _ => {
                    e.push(FieldError::new("direction", "err.required"));
                    None
                }
            };
            let visitor = e
                .check(parse_bool("visitor", &input.visitor))
                .flatten()
                .unwrap_or(false);
            fields.visitor = Some(visitor);
            fields.unit_code = match input
                .unit_code
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                Some(u) => e
                    .check(AreaCode::parse("unit_code", u))
                    .map(|a| a.as_str().to_string()),
                None => None,
            };
            fields.visit_reason = e
                .check(validate_text(
                    "visit_reason",
                    input.visit_reason.as_deref().unwrap_or(""),
                    100,
                    visitor && fields.direction == Some(Direction::In),
                ))
                .flatten();
            fields.high_risk_travel = e
                .check(parse_bool("high_risk_travel", &input.high_risk_travel))
                .flatten();
        }
        SiteKind::Arrival => {
            let local_today =
                (ctx.now + Duration::seconds(i64::from(ctx.tz.local_minus_utc()))).date_naive();
            fields.arrival_date = match input
                .arrival_date
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                None => {
                    e.push(FieldError::new("arrival_date", "err.required"));
                    None
                }
                Some(d) => match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
                    Err(_) => {
                        e.push(FieldError::new("arrival_date", "err.date.format"));
                        None
                    }
                    Ok(d) if d > local_today => {
                        e.push(FieldError::new("arrival_date", "err.date.future"));
                        None
                    }
                    Ok(d) if d < local_today - Duration::days(366) => {
                        e.push(FieldError::new("arrival_date", "err.date.too_old"));
                        None
                    }
                    Ok(d) => Some(d),
                },
            };
            fields.origin_code = e.check(origin("origin", &input.origin)).flatten();
            if input.origin.as_deref().is_none_or(|s| s.trim().is_empty()) {
                e.push(FieldError::new("origin", "err.required"));
            }
            fields.residence_code = match input
                .residence_code
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                Some(r) => e
                    .check(AreaCode::parse("residence_code", r))
                    .map(|a| a.as_str().to_string()),
                None => {
                    e.push(FieldError::new("residence_code", "err.required"));
                    None
                }
            };
            fields.address = e
                .check(validate_text(
                    "address",
                    input.address.as_deref().unwrap_or(""),
                    200,
                    true,
                ))
                .flatten();
            fields.employer = e
                .check(validate_text(
                    "employer",
                    input.employer.as_deref().unwrap_or(""),
                    100,
                    false,
                ))
                .flatten();
            fields.stay_days = e
                .check(parse_int("stay_days", &input.stay_days, 1, 3650))
                .flatten()
                .map(|d| d as i32);
            fields.purpose = e
                .check(validate_text(
                    "purpose",
                    input.purpose.as_deref().unwrap_or(""),
                    100,
                    false,
                ))
                .flatten();
            fields.high_risk_travel = e
                .check(parse_bool("high_risk_travel", &input.high_risk_travel))
                .flatten();
        }
        SiteKind::Venue => {
            fields.high_risk_travel = e
                .check(parse_bool("high_risk_travel", &input.high_risk_travel))
                .flatten();
        }
    }
    // "none" must be said: a question left unanswered is not a person without symptoms
    // (checked last, as the question comes last on the form)
    if !input.symptoms_answered {
        e.push(FieldError::new("symptoms", "err.symptoms.unanswered"));
    }

    match (e.into_result(), name) {
        (Ok(()), Some(name)) => Ok(ValidRegistration {
            identity: Identity {
                name,
                document,
                phone,
            },
            companions,
            fields,
        }),
        (Err(errs), _) => Err(errs),
        (Ok(()), None) => Err(vec![FieldError::new("name", "err.required")]),
    }
}

/// The person id for an identity: derived from the blind index, so the same document always
/// maps to the same person (and ciphertexts can be bound to the id before the write).
pub fn person_id(
    vault: &Vault,
    doc: Option<&Document>,
    phone: Option<&MobilePhone>,
    name: &str,
) -> Uuid {
    match (doc, phone) {
        (Some(d), _) => document_person_id(vault, d),
        (None, Some(p)) => {
            uuid_of(&vault.index_parts("person-id-provisional", &[p.as_str(), "\u{0}", name]))
        }
        (None, None) => uuid_of(&vault.index_parts(
            "person-id-name-only",
            &[name, "\u{0}", &crate::vault::random_token(8)],
        )),
    }
}

/// A UUID of the first 16 bytes of a MAC (ids derived from blind indexes).
fn uuid_of(mac: &[u8]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&mac[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The person id of whoever holds document `d` (an HMAC of the document, so equal documents
/// give the same person everywhere, and the id reveals nothing about the document).
pub fn document_person_id(vault: &Vault, d: &Document) -> Uuid {
    uuid_of(&vault.index_parts("person-id", &[d.doc_type.as_str(), ":", d.number()]))
}

/// Seals an identity into a [`PersonInput`]: blind indexes, ciphertexts bound to the person id,
/// masked forms for display.
pub fn seal_person(
    vault: &Vault,
    name: &str,
    doc: Option<&Document>,
    phone: Option<&MobilePhone>,
) -> PersonInput {
    let id = person_id(vault, doc, phone, name);
    let (birth, sex) = match doc.and_then(|d| d.id_number()) {
        Some(n) => (Some(n.birth_date()), Some(n.sex())),
        None => (None, None),
    };
    // kept: the year, and the whole date only as a blind index
    let birth_date = birth.and_then(|b| NaiveDate::from_ymd_opt(b.year(), 1, 1));
    // the person id and a value's blind index fix both the value and where it is bound
    let memo_key = |tag: u8, index: &[u8]| {
        let mut k = [tag; 32];
        k[1..17].copy_from_slice(id.as_bytes());
        let n = index.len().min(15);
        k[17..17 + n].copy_from_slice(&index[..n]);
        k
    };
    let doc_index = doc.map(|d| vault.blind_index(d.doc_type.index_purpose(), d.number()));
    let phone_index = phone.map(|p| vault.blind_index("phone", p.as_str()));
    // Ciphertexts (and a birth date's index, remembered with the ID number it comes from)
    // made once for a returning person, looked up together.
    let [birth_index, doc_cipher, phone_cipher] = vault.memo(
        [
            birth
                .zip(doc_index.as_deref())
                .map(|(_, ix)| memo_key(b'b', ix)),
            doc.zip(doc_index.as_deref())
                .map(|(_, ix)| memo_key(b'd', ix)),
            phone
                .zip(phone_index.as_deref())
                .map(|(_, ix)| memo_key(b'p', ix)),
        ],
        |i| match i {
            0 => birth.map(|b| crate::matching::birth_index(vault, b)),
            1 => doc.map(|d| vault.seal(&format!("persons.doc:{id}"), d.number())),
            _ => phone.map(|p| vault.seal(&format!("persons.phone:{id}"), p.as_str())),
        },
    );
    PersonInput {
        id,
        doc_type: doc.map(|d| d.doc_type),
        doc_cipher,
        doc_index,
        doc_masked: doc.map(|d| d.masked()),
        name: name.to_string(),
        phone_cipher,
        phone_index,
        phone_masked: phone.map(|p| p.masked()),
        birth_date,
        birth_index,
        sex,
        provisional: doc.is_none(),
    }
}

/// A short code staff read off the confirmation screen.
pub fn verification_code() -> String {
    (0..4)
        .map(|_| {
            CODE_ALPHABET[crate::vault::random_below(CODE_ALPHABET.len() as u32) as usize] as char
        })
        .collect()
}

/// Turns a validated registration into what the store keeps (its texts moved, not copied).
pub fn seal(valid: ValidRegistration, ctx: &Context<'_>, vault: &Vault) -> NewRegistration {
    let ValidRegistration {
        identity: id,
        companions,
        fields,
    } = valid;
    let person = seal_person(
        vault,
        id.name.as_str(),
        id.document.as_ref(),
        id.phone.as_ref(),
    );
    let companion_list = companions
        .into_iter()
        .map(|(name, doc)| {
            let person = match (&name, &doc) {
                (Some(n), Some(d)) => Some(seal_person(vault, n, Some(d), None)),
                _ => None,
            };
            CompanionInput { name, person }
        })
        .collect();
    let local = ctx.now.with_timezone(&ctx.tz);
    NewRegistration {
        id: crate::vault::new_id(),
        site_id: ctx.site.id,
        area_path: ctx.site.area_path.clone(),
        at: ctx.now,
        kind: ctx.site.kind,
        channel: ctx.channel,
        by_user: ctx.by_user,
        verification_code: verification_code(),
        person,
        companion_list,
        fields,
        day: local.date_naive(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(kind: SiteKind) -> Site {
        Site {
            id: Uuid::now_v7(),
            token: "t".into(),
            kind,
            name: "临河卡口".into(),
            area_code: "150802".into(),
            area_path: "/150800/150802/".into(),
            active: true,
            default_stay_min: 10,
            created_at: Utc::now(),
        }
    }

    fn ctx(site: &Site) -> Context<'_> {
        Context {
            site,
            channel: Channel::SelfService,
            by_user: None,
            now: Utc::now(),
            tz: FixedOffset::east_opt(8 * 3600).unwrap(),
        }
    }

    fn checkpoint_json() -> Value {
        serde_json::json!({"name":"张三","id_type":"cn_id","id_number":"11010519491231002X","phone":"13912345678",
            "plate":"蒙L12345","origin":"420100","destination":"150802","companions":0,"temperature":36.5,
            "symptoms":[],"high_risk_travel":false})
    }

    fn fields_of(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_valid_checkpoint_registration_seals_without_the_raw_number() {
        let s = site(SiteKind::Checkpoint);
        let c = ctx(&s);
        let body = checkpoint_json();
        let input = RegistrationInput::from_json(&body).unwrap();
        let valid = validate(&input, &c).unwrap();
        assert_eq!(valid.fields.temperature, Some(365));
        assert_eq!(valid.fields.origin_code.as_deref(), Some("420100"));
        let vault = Vault::new(&[1; 32]);
        let reg = seal(valid.clone(), &c, &vault);
        assert_eq!(reg.person.doc_masked.as_deref(), Some("110105********002X"));
        let cipher = reg.person.doc_cipher.clone().unwrap();
        assert_eq!(
            vault
                .open(&format!("persons.doc:{}", reg.person.id), &cipher)
                .unwrap(),
            "11010519491231002X"
        );
        // same document, same person
        let again = seal(valid, &c, &vault);
        assert_eq!(again.person.id, reg.person.id);
        assert_ne!(again.id, reg.id);
        assert_eq!(reg.verification_code.len(), 4);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let s = site(SiteKind::Checkpoint);
        let mut j = checkpoint_json();
        j["id_number"] = "110105194912310021".into();
        j["temperature"] = 50.0.into();
        j["phone"] = "12345".into();
        j["origin"] = "999999".into();
        j["symptoms"] = serde_json::json!(["none", "cough"]);
        j["companions"] = "many".into();
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &ctx(&s)).unwrap_err();
        let f = fields_of(&errs);
        for want in [
            "id_number",
            "temperature",
            "phone",
            "origin",
            "symptoms",
            "companions",
        ] {
            assert!(f.contains(&want), "{want} missing from {f:?}");
        }
    }

    #[test]
    fn companions_named_on_a_form_without_a_count_keep_the_count_limit() {
        let s = site(SiteKind::Checkpoint);
        let base: Vec<(String, String)> = [
            ("name", "张三"),
            ("id_type", "cn_id"),
            ("id_number", "11010519491231002X"),
            ("phone", "13912345678"),
            ("origin", "420100"),
            ("destination", "150802"),
            ("temperature", "36.5"),
            ("symptoms", "none"),
            ("high_risk_travel", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let named = |n: usize| {
            let mut pairs = base.clone();
            pairs.extend((1..=n).map(|i| (format!("companion_name_{i}"), "李四".to_string())));
            validate(&RegistrationInput::from_pairs(&pairs), &ctx(&s))
        };
        let ok = named(MAX_COMPANIONS as usize).expect("at the limit");
        assert_eq!(ok.fields.companions, MAX_COMPANIONS);
        let errs = named(MAX_COMPANIONS as usize + 1).unwrap_err();
        assert_eq!(fields_of(&errs), vec!["companions"]);
        assert_eq!(errs[0].key, "err.int.range");
        assert!(named(5000).is_err());
    }

    #[test]
    fn wrong_json_types_become_field_errors() {
        let s = site(SiteKind::Checkpoint);
        let mut j = checkpoint_json();
        j["temperature"] = serde_json::json!({"x": 1});
        j["high_risk_travel"] = "perhaps".into();
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &ctx(&s)).unwrap_err();
        assert_eq!(fields_of(&errs), vec!["temperature", "high_risk_travel"]);
        assert!(RegistrationInput::from_json(&serde_json::json!([1, 2])).is_err());
    }

    #[test]
    fn health_and_travel_questions_are_answered_not_assumed() {
        let s = site(SiteKind::Checkpoint);
        let mut j = checkpoint_json();
        let o = j.as_object_mut().unwrap();
        o.remove("symptoms");
        o.remove("high_risk_travel");
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &ctx(&s)).unwrap_err();
        assert_eq!(fields_of(&errs), vec!["high_risk_travel", "symptoms"]);
        let text = j.to_string();
        let typed = RegistrationInput::from_json_slice(text.as_bytes()).unwrap();
        assert!(!typed.symptoms_answered);
        // an empty list, "none" or null is an answer; so is a form's "none" ticked
        for answer in [
            serde_json::json!([]),
            "none".into(),
            serde_json::Value::Null,
        ] {
            j["symptoms"] = answer;
            j["high_risk_travel"] = false.into();
            assert!(validate(&RegistrationInput::from_json(&j).unwrap(), &ctx(&s)).is_ok());
            let text = j.to_string();
            let typed = RegistrationInput::from_json_slice(text.as_bytes()).unwrap();
            assert!(validate(&typed, &ctx(&s)).is_ok());
        }
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let form = |symptoms: bool| {
            let mut p = vec![
                pair("name", "张三"),
                pair("id_number", "11010519491231002X"),
            ];
            if symptoms {
                p.push(pair("symptoms", "none"));
            }
            RegistrationInput::from_pairs(&p).symptoms_answered
        };
        assert!(form(true) && !form(false));
    }

    #[test]
    fn yes_and_no_in_chinese_and_a_visitor_told_as_such() {
        let b = |field: &str, raw: &str| parse_bool(field, &Some(raw.to_string()));
        assert_eq!(b("high_risk_travel", "否"), Ok(Some(false)));
        assert_eq!(b("high_risk_travel", " 是 "), Ok(Some(true)));
        assert_eq!(
            b("high_risk_travel", "perhaps").map_err(|e| e.key),
            Err("err.bool.format")
        );
        assert_eq!(
            b("visitor", "maybe").map_err(|e| e.key),
            Err("err.visitor.format")
        );
    }

    #[test]
    fn gate_needs_direction_and_a_visitor_needs_a_reason() {
        let s = site(SiteKind::Gate);
        let j = serde_json::json!({"name":"李四","phone":"13812345678","temperature":"36.6","visitor":true,"direction":"in","symptoms":[]});
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &ctx(&s)).unwrap_err();
        assert_eq!(fields_of(&errs), vec!["visit_reason"]);
        let j = serde_json::json!({"name":"李四","phone":"13812345678","temperature":"36.6","direction":"sideways","symptoms":"none"});
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &ctx(&s)).unwrap_err();
        assert_eq!(fields_of(&errs), vec!["direction"]);
        // a resident going out needs no document: a provisional person by phone + name
        let j = serde_json::json!({"name":"李四","phone":"13812345678","temperature":"36.6","direction":"out","symptoms":["none"]});
        let v = validate(&RegistrationInput::from_json(&j).unwrap(), &ctx(&s)).unwrap();
        let reg = seal(v, &ctx(&s), &Vault::new(&[1; 32]));
        assert!(reg.person.provisional);
        assert!(reg.person.doc_index.is_none());
    }

    #[test]
    fn a_companions_document_without_their_name_asks_for_the_name() {
        let s = site(SiteKind::Checkpoint);
        let mut j = checkpoint_json();
        j["companions"] = serde_json::json!([{"id_number": "11010519491231002X"}]);
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &ctx(&s)).unwrap_err();
        assert_eq!(fields_of(&errs), vec!["companions[0].name"]);
        assert_eq!(errs[0].key, "err.companion.name");
    }

    #[test]
    fn staff_may_register_a_person_without_a_phone_but_not_without_a_document() {
        let s = site(SiteKind::Checkpoint);
        let mut c = ctx(&s);
        c.channel = Channel::Staff;
        let mut j = checkpoint_json();
        j.as_object_mut().unwrap().remove("phone");
        assert!(validate(&RegistrationInput::from_json(&j).unwrap(), &c).is_ok());
        // neither: the phone's error says a document would do
        let mut none = j.clone();
        none.as_object_mut().unwrap().remove("id_number");
        let errs = validate(&RegistrationInput::from_json(&none).unwrap(), &c).unwrap_err();
        let phone = errs.iter().find(|e| e.field == "phone").unwrap();
        assert_eq!(phone.key, "err.phone.or_document");
        c.channel = Channel::SelfService;
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &c).unwrap_err();
        assert_eq!(fields_of(&errs), vec!["phone"]);
        assert_eq!(errs[0].key, "err.required");
    }

    #[test]
    fn arrival_checks_dates_and_residence() {
        let s = site(SiteKind::Arrival);
        let c = ctx(&s);
        let j = serde_json::json!({"name":"王五","id_number":"11010519491231002X","phone":"13812345678",
            "symptoms":[],"arrival_date":"2999-01-01","origin":"420100","residence_code":"15080200100","address":""});
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &c).unwrap_err();
        assert_eq!(
            fields_of(&errs),
            vec!["arrival_date", "residence_code", "address"]
        );
        let today = c.now.with_timezone(&c.tz).date_naive().to_string();
        let j = serde_json::json!({"name":"王五","id_number":"11010519491231002X","phone":"13812345678",
            "symptoms":null,"arrival_date":today,"origin":"42","residence_code":"150802001001","address":"胜利路1号","stay_days":30});
        let v = validate(&RegistrationInput::from_json(&j).unwrap(), &c).unwrap();
        assert_eq!(v.fields.origin_code.as_deref(), Some("420000"));
        assert_eq!(v.fields.stay_days, Some(30));
        // tomorrow is later than today, as the message says
        let tomorrow = (c.now.with_timezone(&c.tz).date_naive() + Duration::days(1)).to_string();
        let mut j = j;
        j["arrival_date"] = tomorrow.into();
        let errs = validate(&RegistrationInput::from_json(&j).unwrap(), &c).unwrap_err();
        assert_eq!(errs[0].key, "err.date.future");
    }

    #[test]
    fn whole_numbers_may_be_written_as_decimals() {
        let n = |raw: &str| parse_int("stay_days", &Some(raw.to_string()), 0, 3650);
        assert_eq!(n("3.0").unwrap(), Some(3));
        assert_eq!(n(" 30 ").unwrap(), Some(30));
        assert_eq!(n("3.5").unwrap_err().key, "err.int.format");
        assert_eq!(n("NaN").unwrap_err().key, "err.int.format");
        assert_eq!(n("1e9").unwrap_err().key, "err.int.range");
    }

    #[test]
    fn a_key_given_twice_is_an_error_not_the_last_value() {
        for (body, field) in [
            (
                r#"{"name":"张三","temperature":36.5,"temperature":39}"#,
                "temperature",
            ),
            (
                r#"{"symptoms":[],"name":"张三","symptoms":["fever"]}"#,
                "symptoms",
            ),
            (r#"{"companions":1,"companions":[]}"#, "companions"),
        ] {
            let e = RegistrationInput::from_json_slice(body.as_bytes()).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.key),
                (field, "err.body.duplicate"),
                "{body}"
            );
        }
        // keys it does not know are left alone, however often they come
        let i = RegistrationInput::from_json_slice(r#"{"x":1,"x":2,"name":"张三"}"#.as_bytes())
            .unwrap();
        assert_eq!(i.name.as_deref(), Some("张三"));
    }

    #[test]
    fn form_pairs_collect_repeated_symptoms_and_companions() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let pairs = [
            p("name", "张三"),
            p("symptoms", "cough"),
            p("symptoms", "fever"),
            p("companion_name_1", "李四"),
            p("companion_id_1", "11010519491231002X"),
            p("companion_name_2", ""),
            p("companion_name_3", "Батбаяр"),
            p("companion_id_3", "E1234567"),
            // full-width X, and a typo: still ID numbers, checked as such
            p("companion_name_4", "王五"),
            p("companion_id_4", "11010519491231002Ｘ"),
            p("companion_name_5", "赵六"),
            p("companion_id_5", "11010519491231002Y"),
            // a passport of 9 digits alone; digits of any other length are an ID's
            p("companion_name_6", "John Smith"),
            p("companion_id_6", "123456789"),
            p("companion_name_7", "孙七"),
            p("companion_id_7", "1501021990"),
            p("companion_name_8", "周八"),
            p("companion_id_8", "15010219900101"),
            p("plate", " "),
        ];
        let input = RegistrationInput::from_pairs(&pairs);
        assert_eq!(input.symptoms, vec!["cough", "fever"]);
        assert_eq!(input.companion_list.len(), 7);
        assert_eq!(input.plate, None);
        // a mainland ID number (final X and all) is one; a number with letters a passport
        let types: Vec<_> = input
            .companion_list
            .iter()
            .map(|c| c.id_type.as_deref())
            .collect();
        assert_eq!(
            types,
            vec![
                None,
                Some("passport"),
                None,
                None,
                Some("passport"),
                None,
                None
            ]
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            (-1.0e6f64..1.0e6).prop_map(|f| serde_json::json!(f)),
            "[a-z0-9 .\u{4e00}-\u{4e10}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            let key = prop_oneof![
                Just("name".to_string()),
                Just("id_number".to_string()),
                Just("temperature".to_string()),
                Just("symptoms".to_string()),
                Just("companions".to_string()),
                Just("id_type".to_string()),
                "[a-z]{1,3}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((key, inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn the_typed_body_reader_reads_what_the_value_reader_reads(v in json_value()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let typed = RegistrationInput::from_json_slice(&bytes);
            // both read the same text (floats do not always survive a write and a read)
            let parsed: Value = serde_json::from_slice(&bytes).unwrap();
            let by_value = RegistrationInput::from_json(&parsed);
            proptest::prop_assert_eq!(typed.map_err(|e| e.key), by_value.map_err(|e| e.key));
        }
    }

    #[test]
    fn the_typed_body_reader_reports_bad_bodies_like_before() {
        let key = |b: &[u8]| RegistrationInput::from_json_slice(b).unwrap_err().key;
        assert_eq!(key(b"{not json"), "err.body.json");
        assert_eq!(key(b"[1, 2]"), "err.body.not_object");
        assert_eq!(key(b"{\"name\": 1} trailing"), "err.body.json");
        // what building a Value refuses is refused here too, wherever it sits
        assert_eq!(key(b"{\"name\":\"x\",\"other\":1e400}"), "err.body.json");
        assert_eq!(key(b"{\"other\":\"\\ud800\"}"), "err.body.json");
        assert_eq!(key(b"{\"other\":\"\xff\"}"), "err.body.json");
        let deep = format!("{{\"other\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(key(deep.as_bytes()), "err.body.json");
        let deep = format!("{{\"name\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(key(deep.as_bytes()), "err.body.json");
        assert_eq!(key(b""), "err.body.json");
        let i = RegistrationInput::from_json_slice(
            br#"{"name":"x","companions":[{"name":"a","id_number":7},"b",null],"symptoms":"cough","temperature":36.6}"#,
        )
        .unwrap();
        assert_eq!(i.companions.as_deref(), Some("3"));
        assert_eq!(i.companion_list[0].id_number.as_deref(), Some("7"));
        assert_eq!(i.companion_list[1].name.as_deref(), Some("b"));
        assert_eq!(i.symptoms, vec!["cough".to_string()]);
        assert_eq!(i.temperature.as_deref(), Some("36.6"));
        // a key written with an escape is the same key (read into its own text, not borrowed)
        let i = RegistrationInput::from_json_slice(
            br#"{"na\u006de":"\u5f20\u4e09","phone":"139","ph\u006fne":null}"#,
        );
        assert_eq!(i.unwrap_err().key, "err.body.duplicate");
        let i =
            RegistrationInput::from_json_slice(br#"{"na\u006de":"x","\u0070late":"L1"}"#).unwrap();
        assert_eq!(i.name.as_deref(), Some("x"));
        assert_eq!(i.plate.as_deref(), Some("L1"));
    }
}
