//! Validated input types for the self-registration form and everything built on it.
//!
//! Every `parse` function takes the *field name* (so a failure can be shown next to the right
//! input) and the raw text as typed on a phone, normalises it (trims, folds full-width
//! characters, strips harmless separators) and either returns a typed value or a
//! [`FieldError`] carrying a message key from the catalogue (`locales/*/core.txt`).
//! [`Errors`] collects those across a whole form so every bad field is reported at once.
//!
//! Nothing here panics on input: user text is handled as `char`s, never sliced by byte.
//!
//! Types that hold personal data ([`IdNumber`], [`Document`], [`MobilePhone`], [`PersonName`])
//! print only their masked form through `Debug` and do not implement `Display`, so an
//! accidental `{:?}` in a log line does not leak the raw value. Use `as_str()` deliberately.

use std::fmt;

use chrono::{Datelike, NaiveDate};

use crate::i18n::{self, Lang};

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One field's problem: the message key in the catalogue plus placeholder args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The form field the problem belongs to (as passed to `parse`).
    pub field: String,
    /// Catalogue key of the message, e.g. `err.id_number.check_digit`.
    pub key: &'static str,
    /// Values for the message's `{name}` placeholders.
    pub args: Vec<(&'static str, String)>,
}

impl FieldError {
    /// A problem with `field`, described by the catalogue message `key`.
    pub fn new(field: impl Into<String>, key: &'static str) -> Self {
        FieldError {
            field: field.into(),
            key,
            args: Vec::new(),
        }
    }

    /// Adds a value for the `{name}` placeholder of the message.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.args.push((name, value.into()));
        self
    }

    /// The message in `lang`, placeholders filled.
    pub fn message(&self, lang: Lang) -> String {
        let args: Vec<(&str, &str)> = self.args.iter().map(|(k, v)| (*k, v.as_str())).collect();
        i18n::tf(lang, self.key, &args)
    }
}

impl fmt::Display for FieldError {
    /// `field: key` — for logs; user-facing text comes from [`FieldError::message`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.key)
    }
}

impl std::error::Error for FieldError {}

/// Collects errors across a form so every bad field is reported at once.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem.
    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    /// True when nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of recorded problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Keeps the value of `Ok`, records the error of `Err` (returning `None`), so a form is
    /// validated field by field as `let phone = errors.check(MobilePhone::parse("phone", raw));`.
    pub fn check<T>(&mut self, r: Result<T, FieldError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    /// The first problem recorded for `field`, if any.
    pub fn for_field(&self, field: &str) -> Option<&FieldError> {
        self.0.iter().find(|e| e.field == field)
    }

    /// `(field, message)` pairs in `lang`, in the order recorded.
    pub fn messages(&self, lang: Lang) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|e| (e.field.clone(), e.message(lang)))
            .collect()
    }

    /// `Ok(())` when empty, otherwise every recorded problem.
    pub fn into_result(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Folds full-width ASCII forms (U+FF01–U+FF5E, e.g. `１`, `Ｘ`, `－`) to ASCII and the
/// ideographic space (U+3000) to a plain space. Phone IMEs often produce these.
pub fn fold_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// Middle-dot look-alikes typed for `·` (U+00B7) in names and plates.
fn is_middle_dot(c: char) -> bool {
    matches!(
        c,
        '\u{00B7}' | '\u{2022}' | '\u{2027}' | '\u{2219}' | '\u{22C5}' | '\u{30FB}' | '\u{FF65}'
    )
}

/// At most `max` characters of `s`, with `…` when cut (for echoing input into messages);
/// control characters are left out (a message must not carry a NUL), and what holds
/// nothing else reads `…`.
fn truncate_chars(s: &str, max: usize) -> String {
    let shown = s.chars().filter(|c| !c.is_control());
    let mut out: String = shown.clone().take(max).collect();
    if out.is_empty() || shown.count() > max {
        out.push('…');
    }
    out
}

/// A whole number as typed: `30`, or written as a decimal (`3.0`, as some JSON writers put
/// it); not `3.5`, not text.
pub fn whole_number(s: &str) -> Option<i64> {
    // full-width digits (２) as typed on a Chinese keyboard
    let folded: String = s.trim().chars().map(fold_width).collect();
    let s = folded.as_str();
    s.parse::<i64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| f as i64)
    })
}

/// Today's date in China Standard Time (UTC+8, no daylight saving), whatever the server's zone.
pub(crate) fn china_today() -> NaiveDate {
    let now = chrono::Utc::now().naive_utc();
    now.checked_add_signed(chrono::TimeDelta::hours(8))
        .unwrap_or(now)
        .date()
}

// ---------------------------------------------------------------------------------------------
// Document types and sex
// ---------------------------------------------------------------------------------------------

/// The kind of identity document a person registers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocType {
    /// Mainland resident identity card (居民身份证).
    CnId,
    /// Passport of any country.
    Passport,
    /// Any other document (Hong Kong/Macau/Taiwan permits, foreigner's permanent residence …).
    Other,
}

impl DocType {
    /// Every document type, in form order.
    pub const ALL: [DocType; 3] = [DocType::CnId, DocType::Passport, DocType::Other];

    /// Wire name: `cn_id`, `passport` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            DocType::CnId => "cn_id",
            DocType::Passport => "passport",
            DocType::Other => "other",
        }
    }

    /// The blind-index purpose of this type's numbers: `doc:cn_id`, `doc:passport`, `doc:other`.
    pub fn index_purpose(self) -> &'static str {
        match self {
            DocType::CnId => "doc:cn_id",
            DocType::Passport => "doc:passport",
            DocType::Other => "doc:other",
        }
    }

    /// Parses a wire name (surrounding whitespace and ASCII case ignored).
    pub fn parse(s: &str) -> Option<DocType> {
        let s = s.trim();
        DocType::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
    }

    /// Like [`DocType::parse`], failing with `err.doc_type.unknown` (or `err.required` if blank).
    pub fn parse_field(field: &str, s: &str) -> Result<DocType, FieldError> {
        if s.trim().is_empty() {
            return Err(FieldError::new(field, "err.required"));
        }
        DocType::parse(s).ok_or_else(|| FieldError::new(field, "err.doc_type.unknown"))
    }

    /// Catalogue key of the label, e.g. `doc_type.cn_id`.
    pub fn label_key(self) -> &'static str {
        match self {
            DocType::CnId => "doc_type.cn_id",
            DocType::Passport => "doc_type.passport",
            DocType::Other => "doc_type.other",
        }
    }
}

/// Sex as recorded on a resident ID card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    /// 男
    Male,
    /// 女
    Female,
}

impl Sex {
    /// Wire name: `male` or `female`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sex::Male => "male",
            Sex::Female => "female",
        }
    }

    /// Parses a wire name (surrounding whitespace and ASCII case ignored).
    pub fn parse(s: &str) -> Option<Sex> {
        let s = s.trim();
        [Sex::Male, Sex::Female]
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s))
    }

    /// Catalogue key of the label, e.g. `sex.male`.
    pub fn label_key(self) -> &'static str {
        match self {
            Sex::Male => "sex.male",
            Sex::Female => "sex.female",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resident ID number (GB 11643-1999)
// ---------------------------------------------------------------------------------------------

/// Province-level codes that may start an ID number (mainland provinces, Taiwan 71,
/// Hong Kong 81, Macau 82, Taiwan residence permits 83, and 91 for IDs issued abroad).
const PROVINCE_CODES: [u32; 36] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83, 91,
];

/// ISO 7064 MOD 11-2 weights for the 17 body digits.
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// Check character indexed by the weighted sum modulo 11.
const ID_CHECK: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

/// A mainland resident ID number, GB 11643-1999: 17 digits + ISO 7064 MOD 11-2 check char
/// (`0`–`9` or `X`).
///
/// Normalised: whitespace removed anywhere, full-width digits/`Ｘ` folded, `x` → `X`.
/// The 6-digit county code is deliberately *not* checked against the current division list:
/// older numbers carry codes of counties that have since been merged or renamed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdNumber {
    number: String,
    birth: NaiveDate,
}

impl IdNumber {
    /// Parses and validates an ID number, checking the birth date against today in China.
    ///
    /// Errors, in the order checked: `err.required` (blank), `err.id_number.format` (not 17
    /// digits + digit/X), `err.id_number.region` (unknown province code),
    /// `err.id_number.birth_date` (impossible date, before 1900-01-01 or in the future),
    /// `err.id_number.check_digit` (last character does not match).
    pub fn parse(field: &str, raw: &str) -> Result<IdNumber, FieldError> {
        Self::parse_on(field, raw, china_today())
    }

    /// Like [`IdNumber::parse`], with "today" given (birth dates after it are refused).
    pub fn parse_on(field: &str, raw: &str, today: NaiveDate) -> Result<IdNumber, FieldError> {
        // The usual case, 18 plain ASCII characters, has nothing to normalise.
        let b = raw.as_bytes();
        if b.len() == 18
            && b[..17].iter().all(u8::is_ascii_digit)
            && (b[17].is_ascii_digit() || b[17] == b'X' || b[17] == b'x')
        {
            let mut digits = [0u32; 17];
            for (d, c) in digits.iter_mut().zip(b) {
                *d = u32::from(c - b'0');
            }
            let last = if b[17] == b'x' {
                'X'
            } else {
                char::from(b[17])
            };
            return Self::checked(field, digits, last, today);
        }
        let chars: Vec<char> = raw
            .chars()
            .map(fold_width)
            .filter(|c| !c.is_whitespace())
            .map(|c| if c == 'x' { 'X' } else { c })
            .collect();
        if chars.is_empty() {
            return Err(FieldError::new(field, "err.required"));
        }
        let format = || FieldError::new(field, "err.id_number.format");
        // A first-generation card's 15 digits: those cards lapsed in 2013, and with no check
        // digit an 18-digit number missing its last three would pass as one; ask for the
        // 18-digit number, saying why.
        if chars.len() == 15 && chars.iter().all(char::is_ascii_digit) {
            return Err(FieldError::new(field, "err.id_number.first_generation"));
        }
        if chars.len() != 18 {
            return Err(format());
        }
        let mut digits = [0u32; 17];
        for (d, c) in digits.iter_mut().zip(&chars) {
            *d = c.to_digit(10).ok_or_else(format)?;
        }
        let last = chars[17];
        if !(last.is_ascii_digit() || last == 'X') {
            return Err(format());
        }
        Self::checked(field, digits, last, today)
    }

    /// The checks after the shape: region, birth date, check digit.
    fn checked(
        field: &str,
        digits: [u32; 17],
        last: char,
        today: NaiveDate,
    ) -> Result<IdNumber, FieldError> {
        let province = digits[0] * 10 + digits[1];
        if !PROVINCE_CODES.contains(&province) {
            return Err(FieldError::new(field, "err.id_number.region"));
        }
        // GB/T 2260's city digits in a mainland province: 01–70 (cities, prefectures,
        // leagues) or 90 (counties under the province). Not the table of today's codes: an
        // old ID keeps a county since merged or renamed. (Taiwan, Hong Kong and Macao
        // residents' permits, 71/81/82/83…, and foreigners' 91… follow other rules.)
        let city = digits[2] * 10 + digits[3];
        let mainland = province < 71;
        if mainland && !(1..=70).contains(&city) && city != 90 {
            return Err(FieldError::new(field, "err.id_number.region"));
        }

        let num = |range: std::ops::Range<usize>| digits[range].iter().fold(0, |n, d| n * 10 + d);
        let birth = i32::try_from(num(6..10))
            .ok()
            .and_then(|y| NaiveDate::from_ymd_opt(y, num(10..12), num(12..14)))
            .filter(|d| *d >= earliest_birth() && *d <= today)
            .ok_or_else(|| FieldError::new(field, "err.id_number.birth_date"))?;

        if check_char(&digits) != last {
            return Err(FieldError::new(field, "err.id_number.check_digit"));
        }
        let mut number = String::with_capacity(18);
        number.extend(digits.iter().filter_map(|d| char::from_digit(*d, 10)));
        number.push(last);
        Ok(IdNumber { number, birth })
    }

    /// The check character for a 17-digit body, or `None` if `body` is not 17 ASCII digits.
    pub fn check_char_for(body: &str) -> Option<char> {
        let mut digits = [0u32; 17];
        let mut n = 0;
        for c in body.chars() {
            *digits.get_mut(n)? = c.to_digit(10)?;
            n += 1;
        }
        (n == 17).then(|| check_char(&digits))
    }

    /// The normalised 18-character number.
    pub fn as_str(&self) -> &str {
        &self.number
    }

    /// The date of birth encoded in characters 7–14.
    pub fn birth_date(&self) -> NaiveDate {
        self.birth
    }

    /// Full years of age on `on` (0 if `on` is before the birth date).
    pub fn age_on(&self, on: NaiveDate) -> u32 {
        let years = on.year() - self.birth.year();
        let before_birthday = (on.month(), on.day()) < (self.birth.month(), self.birth.day());
        u32::try_from(years - i32::from(before_birthday)).unwrap_or(0)
    }

    /// Sex from the 17th digit: odd is male, even is female.
    pub fn sex(&self) -> Sex {
        let d = self
            .number
            .chars()
            .nth(16)
            .and_then(|c| c.to_digit(10))
            .unwrap_or(0);
        if d % 2 == 1 {
            Sex::Male
        } else {
            Sex::Female
        }
    }

    /// The 6-digit administrative code of the issuing county (may be a retired code).
    pub fn region_code(&self) -> &str {
        // `number` is 18 ASCII characters by construction, so this never falls back.
        self.number.get(..6).unwrap_or("")
    }

    /// First 6 + 8 asterisks + last 4, e.g. `150802********123X` (birth date hidden).
    pub fn masked(&self) -> String {
        mask_middle(&self.number, 6, 14, "********")
    }
}

impl fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdNumber").field(&self.masked()).finish()
    }
}

/// `s` with its characters from `head` up to `tail_from` replaced by `stars`: the first
/// `head` characters, `stars`, then every character from `tail_from` on.
fn mask_middle(s: &str, head: usize, tail_from: usize, stars: &str) -> String {
    if s.is_ascii() && s.len() >= tail_from {
        let mut out = String::with_capacity(head + stars.len() + s.len() - tail_from);
        out.push_str(&s[..head]);
        out.push_str(stars);
        out.push_str(&s[tail_from..]);
        return out;
    }
    let h: String = s.chars().take(head).collect();
    let t: String = s.chars().skip(tail_from).collect();
    format!("{h}{stars}{t}")
}

/// The earliest birth date accepted: 1900-01-01.
fn earliest_birth() -> NaiveDate {
    NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN)
}

/// ISO 7064 MOD 11-2 check character of 17 digits.
fn check_char(digits: &[u32; 17]) -> char {
    let sum: u32 = digits.iter().zip(ID_WEIGHTS).map(|(d, w)| d * w).sum();
    ID_CHECK[(sum % 11) as usize]
}

// ---------------------------------------------------------------------------------------------
// Documents of any kind
// ---------------------------------------------------------------------------------------------

/// A document of any kind, validated per type.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Document {
    /// What kind of document this is.
    pub doc_type: DocType,
    number: String,
    id: Option<IdNumber>,
}

impl From<IdNumber> for Document {
    fn from(id: IdNumber) -> Document {
        Document {
            doc_type: DocType::CnId,
            number: id.as_str().to_string(),
            id: Some(id),
        }
    }
}

impl Document {
    /// Validates `raw` as a document of `doc_type`.
    ///
    /// * `CnId`: via [`IdNumber::parse`] (its error keys).
    /// * `Passport`: 5–20 of `[A-Z0-9]` after uppercasing and removing whitespace
    ///   (`err.passport.format`).
    /// * `Other`: 4–30 of `[A-Z0-9-]`, at least one letter or digit, after the same
    ///   (`err.other_doc.format`).
    ///
    /// Blank input is `err.required` for every type.
    pub fn parse(field: &str, doc_type: DocType, raw: &str) -> Result<Document, FieldError> {
        if doc_type == DocType::CnId {
            return IdNumber::parse(field, raw).map(Document::from);
        }
        let number: String = raw
            .chars()
            .map(fold_width)
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if number.is_empty() {
            return Err(FieldError::new(field, "err.required"));
        }
        let len = number.chars().count();
        let alnum = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit();
        let ok = match doc_type {
            DocType::Passport => (5..=20).contains(&len) && number.chars().all(alnum),
            _ => {
                (4..=30).contains(&len)
                    && number.chars().all(|c| alnum(c) || c == '-')
                    && number.chars().any(alnum)
            }
        };
        if !ok {
            let key = if doc_type == DocType::Passport {
                "err.passport.format"
            } else {
                "err.other_doc.format"
            };
            return Err(FieldError::new(field, key));
        }
        Ok(Document {
            doc_type,
            number,
            id: None,
        })
    }

    /// The normalised number (what a blind index is computed over).
    pub fn number(&self) -> &str {
        &self.number
    }

    /// The parsed ID number, for a `CnId` document.
    pub fn id_number(&self) -> Option<IdNumber> {
        if self.doc_type == DocType::CnId {
            self.id.clone()
        } else {
            None
        }
    }

    /// The number with most characters hidden, same length as the original.
    ///
    /// ID numbers: see [`IdNumber::masked`]. Others: first 2 + asterisks + last 2; numbers
    /// shorter than 8 characters show only 1 at each end so at least half stays hidden.
    pub fn masked(&self) -> String {
        if let Some(id) = self.id_number() {
            return id.masked();
        }
        let chars: Vec<char> = self.number.chars().collect();
        let keep = if chars.len() >= 8 { 2 } else { 1 };
        chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < keep || i + keep >= chars.len() {
                    *c
                } else {
                    '*'
                }
            })
            .collect()
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("doc_type", &self.doc_type)
            .field("number", &self.masked())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Mobile phone
// ---------------------------------------------------------------------------------------------

/// A mobile number: a mainland one, 11 digits matching `^1[3-9]\d{9}$`, or one from abroad in
/// international form, `+` and 8 to 15 digits not starting with 0 (E.164), as travellers
/// from Mongolia, Hong Kong or elsewhere carry.
///
/// Accepts and strips whitespace, dashes and a leading `+86`, `0086` or `86`; `00` before
/// another country's code is read as `+`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MobilePhone(String);

impl MobilePhone {
    /// Parses a mobile number (`err.required`, `err.phone.format`).
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        // The usual case, 11 plain digits, has nothing to normalise.
        let b = raw.as_bytes();
        if b.len() == 11 && b.iter().all(u8::is_ascii_digit) {
            return if b[0] == b'1' && (b'3'..=b'9').contains(&b[1]) {
                Ok(MobilePhone(raw.to_string()))
            } else {
                Err(FieldError::new(field, "err.phone.format"))
            };
        }
        let s: String = raw
            .chars()
            .map(fold_width)
            .filter(|c| {
                !c.is_whitespace() && !matches!(c, '-' | '(' | ')' | '\u{2010}'..='\u{2015}')
            })
            .collect();
        if s.is_empty() {
            return Err(FieldError::new(field, "err.required"));
        }
        let format = || FieldError::new(field, "err.phone.format");
        let international = s
            .strip_prefix('+')
            .or_else(|| s.strip_prefix("00").filter(|r| !r.starts_with("86")));
        let s = match international {
            Some(rest) => match rest.strip_prefix("86") {
                Some(mainland) => mainland,
                None => {
                    let ok = (8..=15).contains(&rest.len())
                        && rest.bytes().all(|b| b.is_ascii_digit())
                        && !rest.starts_with('0');
                    return if ok {
                        Ok(MobilePhone(format!("+{rest}")))
                    } else {
                        Err(format())
                    };
                }
            },
            None => s.as_str(),
        };
        let len = s.chars().count();
        let s = match (len, s.strip_prefix("0086"), s.strip_prefix("86")) {
            (15, Some(rest), _) => rest,
            (13, _, Some(rest)) => rest,
            _ => s,
        };
        let chars: Vec<char> = s.chars().collect();
        let ok = chars.len() == 11
            && chars.iter().all(char::is_ascii_digit)
            && chars[0] == '1'
            && ('3'..='9').contains(&chars[1]);
        if !ok {
            return Err(format());
        }
        Ok(MobilePhone(s.to_string()))
    }

    /// The 11 digits, or `+` and the digits of a number from abroad.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 3 + `****` + last 4, e.g. `139****5678`; from abroad the `+` and the country's
    /// first three digits: `+976****2233`.
    pub fn masked(&self) -> String {
        if self.0.starts_with('+') {
            // never more than half the digits: `+976****2233`, but `+12****78`
            let digits = self.0.len() - 1;
            let (head, tail) = if digits >= 10 { (3, 4) } else { (2, 2) };
            mask_middle(&self.0, 1 + head, self.0.len() - tail, "****")
        } else {
            mask_middle(&self.0, 3, 7, "****")
        }
    }
}

impl fmt::Debug for MobilePhone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MobilePhone").field(&self.masked()).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Vehicle plate (GA 36-2018)
// ---------------------------------------------------------------------------------------------

/// Province abbreviations that start a civilian plate.
const PLATE_PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼";

/// A mainland vehicle plate, normalised without the dot (e.g. `蒙L12345`).
///
/// Accepted shapes after the province character and the issuing-authority letter (`A`–`Z`
/// without `I`, `O`):
/// * ordinary: 5 of `[A-Z0-9]` (no `I`/`O`), e.g. `京A12345`;
/// * trailer, learner, police, Hong Kong/Macau: 4 of those + `挂`/`学`/`警`, or `港`/`澳` on
///   `粤Z` only, e.g. `京A1234警`, `粤Z1234港` (these plates are 7 characters like ordinary
///   ones);
/// * new-energy small car: `D A B C E` (electric) or `F G H J K` (other) + a letter or digit
///   + 4 digits, e.g. `蒙LD12345`;
/// * new-energy large vehicle: 5 digits + `D` or `F`, e.g. `蒙L12345D`.
///
/// Input may contain `·`/`•`, spaces, `-`, `.`, full-width or lowercase letters.
/// Embassy/consulate (使/领) and military plates are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Plate(String);

impl Plate {
    /// Parses a plate (`err.required`, `err.plate.format`).
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        // A plate has 7 or 8 characters: they are checked from a buffer on the stack, and
        // a text with more than fit is no plate.
        let mut chars = ['\0'; 9];
        let mut n = 0;
        let mut plate = String::with_capacity(raw.len());
        for c in raw
            .chars()
            .map(fold_width)
            .filter(|c| !c.is_whitespace() && !is_middle_dot(*c) && !matches!(c, '-' | '.'))
            .map(|c| c.to_ascii_uppercase())
        {
            if let Some(slot) = chars.get_mut(n) {
                *slot = c;
            }
            n += 1;
            plate.push(c);
        }
        if n == 0 {
            return Err(FieldError::new(field, "err.required"));
        }
        if !chars.get(..n).is_some_and(plate_shape_ok) {
            return Err(FieldError::new(field, "err.plate.format"));
        }
        Ok(Plate(plate))
    }

    /// The normalised plate without the dot, e.g. `蒙L12345`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Display form with `·` after the second character, e.g. `蒙L·12345`.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 2);
        for (i, c) in self.0.chars().enumerate() {
            if i == 2 {
                out.push('·');
            }
            out.push(c);
        }
        out
    }
}

fn plate_shape_ok(chars: &[char]) -> bool {
    let serial = |c: char| (c.is_ascii_uppercase() || c.is_ascii_digit()) && c != 'I' && c != 'O';
    let [province, authority, rest @ ..] = chars else {
        return false;
    };
    if !PLATE_PROVINCES.contains(*province)
        || !authority.is_ascii_uppercase()
        || matches!(authority, 'I' | 'O')
    {
        return false;
    }
    match rest {
        // Ordinary, or 4 + suffix.
        [a, b, c, d, e] => {
            let body4 = [a, b, c, d].iter().all(|c| serial(**c));
            body4
                && (serial(*e)
                    || matches!(e, '挂' | '学' | '警')
                    || (matches!(e, '港' | '澳') && *province == '粤' && *authority == 'Z'))
        }
        // New energy.
        [a, b, c, d, e, f] => {
            let small = matches!(a, 'D' | 'A' | 'B' | 'C' | 'E' | 'F' | 'G' | 'H' | 'J' | 'K')
                && serial(*b)
                && [c, d, e, f].iter().all(|c| c.is_ascii_digit());
            let large =
                [a, b, c, d, e].iter().all(|c| c.is_ascii_digit()) && matches!(f, 'D' | 'F');
            small || large
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Temperature
// ---------------------------------------------------------------------------------------------

/// Body temperature in tenths of a degree Celsius.
///
/// Parsing rounds to one decimal **half up** on the decimal digits as written (36.55 → 36.6,
/// 36.549 → 36.5), then requires the plausible range 34.0..=42.5 ℃.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Temperature(i16);

impl Temperature {
    /// Lowest accepted reading, 34.0 ℃.
    pub const MIN: Temperature = Temperature(340);
    /// Highest accepted reading, 42.5 ℃.
    pub const MAX: Temperature = Temperature(425);
    /// Fever threshold, 37.3 ℃ (inclusive).
    pub const FEVER: Temperature = Temperature(373);

    /// Parses a reading such as `36.5`, `36,5`, `３６．５`, `36.5℃`, `36.5°C` or `36.5度`.
    ///
    /// Errors: `err.required` (blank), `err.temperature.format` (not a plain decimal number:
    /// `NaN`, `inf`, exponents are refused), `err.temperature.range` with `{min}` `{max}`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        // the usual reading (`36.5`) as it is: folding would not change it
        let s: std::borrow::Cow<str> = if raw.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            raw.into()
        } else {
            raw.chars()
                .map(fold_width)
                // the ideographic full stop of a Chinese keyboard as the decimal point (36。5)
                .map(|c| if c == '。' { '.' } else { c })
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .into()
        };
        if s.is_empty() {
            return Err(FieldError::new(field, "err.required"));
        }
        let s = ["℃", "°C", "°c", "°", "C", "c", "摄氏度", "度"]
            .iter()
            .find_map(|suffix| s.strip_suffix(suffix))
            .unwrap_or(&s);
        let tenths =
            decimal_to_tenths(s).ok_or_else(|| FieldError::new(field, "err.temperature.format"))?;
        Self::in_range(field, tenths)
    }

    /// From a number (e.g. a JSON field): rounded like [`Temperature::parse`] using the
    /// shortest decimal that represents `v` (so `36.55` → 36.6). NaN and infinities are
    /// `err.temperature.format`.
    pub fn from_f64(field: &str, v: f64) -> Result<Self, FieldError> {
        if !v.is_finite() {
            return Err(FieldError::new(field, "err.temperature.format"));
        }
        if !(-1000.0..=1000.0).contains(&v) {
            return Self::in_range(field, i64::from(i16::MAX));
        }
        let tenths = decimal_to_tenths(&v.to_string())
            .ok_or_else(|| FieldError::new(field, "err.temperature.format"))?;
        Self::in_range(field, tenths)
    }

    fn in_range(field: &str, tenths: i64) -> Result<Self, FieldError> {
        if tenths < i64::from(Self::MIN.0) || tenths > i64::from(Self::MAX.0) {
            return Err(FieldError::new(field, "err.temperature.range")
                .with("min", Self::MIN.to_string())
                .with("max", Self::MAX.to_string()));
        }
        // In range, so it fits in i16.
        Ok(Temperature(i16::try_from(tenths).unwrap_or(Self::MIN.0)))
    }

    /// Tenths of a degree, e.g. 365 for 36.5 ℃.
    pub fn tenths(self) -> i16 {
        self.0
    }

    /// From stored tenths (not range-checked: values come from our own storage).
    pub fn from_tenths(t: i16) -> Self {
        Temperature(t)
    }

    /// Degrees Celsius.
    pub fn celsius(self) -> f64 {
        f64::from(self.0) / 10.0
    }

    /// 37.3 ℃ or above.
    pub fn is_fever(self) -> bool {
        self >= Self::FEVER
    }
}

impl fmt::Display for Temperature {
    /// One decimal, no unit: `36.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = i32::from(self.0);
        let sign = if t < 0 { "-" } else { "" };
        write!(f, "{sign}{}.{}", t.abs() / 10, t.abs() % 10)
    }
}

/// `[+-]?\d+([.,]\d+)?` → tenths, rounded half up (away from zero) on the second decimal.
/// Integer parts too long to matter saturate (they are out of range anyway).
fn decimal_to_tenths(s: &str) -> Option<i64> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = match s.split_once(['.', ',']) {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let is_digits = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
    if !is_digits(int) || frac.is_some_and(|f| !is_digits(f)) {
        return None;
    }
    let mut tenths: i64 = 0;
    for c in int.chars() {
        let d = i64::from(c.to_digit(10)?);
        tenths = tenths.saturating_mul(10).saturating_add(d);
    }
    tenths = tenths.saturating_mul(10);
    let mut frac = frac.unwrap_or("").chars();
    if let Some(d) = frac.next().and_then(|c| c.to_digit(10)) {
        tenths = tenths.saturating_add(i64::from(d));
    }
    if frac
        .next()
        .and_then(|c| c.to_digit(10))
        .is_some_and(|d| d >= 5)
    {
        tenths = tenths.saturating_add(1);
    }
    Some(if negative { -tenths } else { tenths })
}

// ---------------------------------------------------------------------------------------------
// Symptoms
// ---------------------------------------------------------------------------------------------

/// A symptom the form asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Symptom {
    /// 发热
    Fever,
    /// 咳嗽
    Cough,
    /// 乏力
    Fatigue,
    /// 咽痛
    SoreThroat,
    /// 呼吸困难
    ShortnessOfBreath,
    /// 腹泻
    Diarrhoea,
}

impl Symptom {
    /// Every symptom, in form order (also bit order).
    pub const ALL: [Symptom; 6] = [
        Symptom::Fever,
        Symptom::Cough,
        Symptom::Fatigue,
        Symptom::SoreThroat,
        Symptom::ShortnessOfBreath,
        Symptom::Diarrhoea,
    ];

    /// Wire name, e.g. `sore_throat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Symptom::Fever => "fever",
            Symptom::Cough => "cough",
            Symptom::Fatigue => "fatigue",
            Symptom::SoreThroat => "sore_throat",
            Symptom::ShortnessOfBreath => "shortness_of_breath",
            Symptom::Diarrhoea => "diarrhoea",
        }
    }

    /// Parses a wire name (surrounding whitespace and ASCII case ignored). `none` is not a
    /// symptom: see [`Symptoms::parse`].
    pub fn parse(s: &str) -> Option<Symptom> {
        let s = s.trim();
        Symptom::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s))
    }

    /// The symptom's bit in [`Symptoms`]: fever 1, cough 2, fatigue 4, sore throat 8,
    /// shortness of breath 16, diarrhoea 32. Stored values: never renumber.
    pub fn bit(self) -> u8 {
        match self {
            Symptom::Fever => 1,
            Symptom::Cough => 2,
            Symptom::Fatigue => 4,
            Symptom::SoreThroat => 8,
            Symptom::ShortnessOfBreath => 16,
            Symptom::Diarrhoea => 32,
        }
    }

    /// Catalogue key of the label, e.g. `symptom.fever`.
    pub fn label_key(self) -> &'static str {
        match self {
            Symptom::Fever => "symptom.fever",
            Symptom::Cough => "symptom.cough",
            Symptom::Fatigue => "symptom.fatigue",
            Symptom::SoreThroat => "symptom.sore_throat",
            Symptom::ShortnessOfBreath => "symptom.shortness_of_breath",
            Symptom::Diarrhoea => "symptom.diarrhoea",
        }
    }
}

/// A set of symptoms as a bitmask (see [`Symptom::bit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Symptoms(pub u8);

impl Symptoms {
    /// Every known bit.
    pub const KNOWN_BITS: u8 = 0b11_1111;
    /// Wire name of the explicit "no symptoms" choice.
    pub const NONE: &'static str = "none";
    /// Catalogue key of the "no symptoms" label.
    pub const NONE_LABEL_KEY: &'static str = "symptom.none";

    /// Parses checkbox values. Blank items are ignored; `none` means the empty set and cannot
    /// be combined with a symptom (`err.symptoms.none_with_others`); an unknown name is
    /// `err.symptoms.unknown` with `{value}`. Duplicates are harmless.
    pub fn parse(field: &str, items: &[String]) -> Result<Self, FieldError> {
        let mut bits = 0u8;
        let mut none = false;
        for item in items {
            let v = item.trim();
            if v.is_empty() {
                continue;
            }
            if v.eq_ignore_ascii_case(Self::NONE) {
                none = true;
                continue;
            }
            match Symptom::parse(v) {
                Some(s) => bits |= s.bit(),
                None => {
                    return Err(FieldError::new(field, "err.symptoms.unknown")
                        .with("value", truncate_chars(v, 40)))
                }
            }
        }
        if none && bits != 0 {
            return Err(FieldError::new(field, "err.symptoms.none_with_others"));
        }
        Ok(Symptoms(bits))
    }

    /// The bitmask.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// From a stored bitmask; unknown bits are dropped.
    pub fn from_bits(b: u8) -> Self {
        Symptoms(b & Self::KNOWN_BITS)
    }

    /// Whether `s` is in the set.
    pub fn contains(self, s: Symptom) -> bool {
        self.0 & s.bit() != 0
    }

    /// Adds `s`.
    pub fn insert(&mut self, s: Symptom) {
        self.0 |= s.bit();
    }

    /// The symptoms in the set, in [`Symptom::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Symptom> {
        Symptom::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// No symptom.
    pub fn is_empty(self) -> bool {
        self.0 & Self::KNOWN_BITS == 0
    }

    /// Wire names of the symptoms in the set (empty for none).
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Symptom::as_str).collect()
    }
}

impl FromIterator<Symptom> for Symptoms {
    fn from_iter<I: IntoIterator<Item = Symptom>>(iter: I) -> Self {
        let mut s = Symptoms::default();
        for x in iter {
            s.insert(x);
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Person name
// ---------------------------------------------------------------------------------------------

/// Longest accepted name, in characters.
pub const NAME_MAX_CHARS: usize = 40;

/// A person's name: 1..=40 characters of Chinese, Latin letters (with diacritics, e.g. `ü`),
/// traditional Mongolian script (U+1800–U+18AF, no Mongolian digits), and the separators
/// space, middle dot `·` (minority names such as `阿依古丽·买买提`), apostrophe and hyphen.
///
/// Normalised: trimmed; full-width forms folded; runs of whitespace become one space;
/// dot look-alikes (`•`, `・`, …) become `·` and spaces around it are dropped; `’` becomes `'`.
/// A name must start and end with a letter and may not have two separators in a row.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PersonName(String);

impl PersonName {
    /// Parses a name (`err.required`, `err.name.format`, `err.text.too_long` with `{max}`).
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let chars = normalise_name(raw);
        if chars.is_empty() {
            return Err(FieldError::new(field, "err.required"));
        }
        let format = || FieldError::new(field, "err.name.format");
        let is_sep = |c: char| matches!(c, ' ' | '·' | '\'' | '-');
        for (i, &c) in chars.iter().enumerate() {
            let ok = if is_sep(c) {
                i > 0 && i + 1 < chars.len() && !chars.get(i + 1).is_some_and(|n| is_sep(*n))
            } else if c == '.' {
                // an initial's full stop: "John F. Kennedy", "Jr."
                i > 0
                    && chars[i - 1].is_alphabetic()
                    && !is_cjk(chars[i - 1])
                    && chars.get(i + 1).is_none_or(|n| *n == ' ')
            } else if matches!(c, '\u{180E}' | '\u{200C}' | '\u{200D}') {
                // a joiner or separator joins two letters
                i > 0 && chars.get(i + 1).is_some_and(|n| is_name_letter(*n))
            } else if is_combining_mark(c) {
                i > 0
            } else {
                is_name_letter(c)
            };
            if !ok {
                return Err(format());
            }
        }
        // One alphabet per word: a Cyrillic or Greek letter that looks like a Latin one
        // (`Ivаn` with a Cyrillic а) would make a different name that reads the same.
        for word in chars.split(|c| is_sep(*c) || *c == '.') {
            let mut scripts = word.iter().filter_map(|c| look_alike_script(*c));
            if let Some(first) = scripts.next() {
                if scripts.any(|s| s != first) {
                    return Err(format());
                }
            }
        }
        if chars.len() > NAME_MAX_CHARS {
            return Err(
                FieldError::new(field, "err.text.too_long").with("max", NAME_MAX_CHARS.to_string())
            );
        }
        Ok(PersonName(chars.into_iter().collect()))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with most characters hidden.
    ///
    /// Names containing Chinese characters: 2 characters `张*`, 3 or more first + `*`s + last
    /// (`欧**明`), a single character `*`. Other names (Latin, Mongolian): the first letter of
    /// each space-separated word + `***` (`J*** S***`).
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.iter().any(|c| is_cjk(*c)) {
            let n = chars.len();
            match (chars.first(), chars.last()) {
                (Some(first), Some(last)) if n >= 3 => {
                    format!("{first}{}{last}", "*".repeat(n - 2))
                }
                (Some(first), _) if n == 2 => format!("{first}*"),
                _ => "*".to_string(),
            }
        } else {
            self.0
                .split(' ')
                .filter_map(|w| w.chars().next())
                .map(|c| format!("{c}***"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PersonName").field(&self.masked()).finish()
    }
}

/// CJK unified ideographs (incl. extensions A–H), compatibility ideographs and `〇`.
fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{3007}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{4E00}'..='\u{9FFF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{323AF}')
}

/// What may follow a letter inside a name but not begin one: combining marks of any script
/// (decomposed `ü` and pinyin tone marks, Mongolian free variation selectors, Tibetan
/// subjoined letters and vowel signs, Devanagari viramas, Thai tone marks), the Mongolian
/// vowel separator, the zero-width (non-)joiner, and the Tibetan syllable mark `་`.
fn is_combining_mark(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
    c.general_category_group() == GeneralCategoryGroup::Mark
        || matches!(c, '\u{180E}' | '\u{200C}' | '\u{200D}' | '\u{0F0B}')
}

/// A name as typed, with its look-alike characters made one (full-width letters, every kind
/// of middle dot, a full stop between Chinese characters, curly apostrophes, dashes) and its
/// spaces collapsed: what [`PersonName::parse`] checks, and what a name search looks for.
pub fn normalise_name(raw: &str) -> Vec<char> {
    let mut chars: Vec<char> = Vec::new();
    for c in raw.chars().map(fold_width) {
        let c = match c {
            c if is_middle_dot(c) => '·',
            // a full stop typed for the dot between the parts of a transcribed name
            '.' | '\u{3002}' if chars.last().is_some_and(|p| is_cjk(*p)) => '·',
            '\u{2018}' | '\u{2019}' | '\u{02BC}' => '\'',
            '\u{2010}' | '\u{2011}' => '-',
            c if c.is_whitespace() => ' ',
            c => c,
        };
        let prev = chars.last().copied();
        match (prev, c) {
            // Collapse spaces and drop those next to a middle dot.
            (Some(' '), ' ') | (Some('·'), ' ') => {}
            (Some(' '), '·') => {
                chars.pop();
                chars.push('·');
            }
            (None, ' ') => {}
            _ => chars.push(c),
        }
    }
    while chars.last() == Some(&' ') {
        chars.pop();
    }
    chars
}

/// A character that may form a name (not a separator).
fn is_name_letter(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
    // Letters of any alphabet (Chinese, Mongolian, Latin with Vietnamese and other accents,
    // Cyrillic, Uyghur's Arabic script, Tibetan, Korean, …); not digits (Mongolian's
    // included), letter-like numerals, symbols or emoji.
    is_cjk(c)
        || (c.general_category_group() == GeneralCategoryGroup::Letter
            // Hangul fillers: letters that show as nothing
            && !matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}'))
}

/// The alphabets whose letters look alike (Latin, Cyrillic, Greek), for a letter of one.
fn look_alike_script(c: char) -> Option<u8> {
    match c {
        'A'..='Z' | 'a'..='z' | '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}' => Some(0),
        '\u{0400}'..='\u{052F}' => Some(1),
        '\u{0370}'..='\u{03FF}' => Some(2),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Area code
// ---------------------------------------------------------------------------------------------

/// An administrative area code: digits only; 6 (county, or city when ending in `00`),
/// 9 (town), 12 (community), 15 (building = community + 3), 18 (unit = building + 3);
/// or 2 (province) / 4 (city), which are outside the hierarchy and used only as origins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AreaCode(String);

impl AreaCode {
    /// Parses a code (`err.required`, `err.area_code.format`). Surrounding whitespace is
    /// trimmed and full-width digits folded.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let s: String = raw.trim().chars().map(fold_width).collect();
        let s = s.trim();
        if s.is_empty() {
            return Err(FieldError::new(field, "err.required"));
        }
        let len = s.chars().count();
        if !matches!(len, 2 | 4 | 6 | 9 | 12 | 15 | 18) || !s.chars().all(|c| c.is_ascii_digit()) {
            return Err(FieldError::new(field, "err.area_code.format"));
        }
        Ok(AreaCode(s.to_string()))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Level in the hierarchy: 1 city (6 digits ending in `00`, e.g. `150800`), 2 county
    /// (other 6-digit), 3 town (9), 4 community (12), 5 building (15), 6 unit (18);
    /// 0 for 2- and 4-digit codes, which are outside the hierarchy.
    pub fn level(&self) -> u8 {
        match self.0.len() {
            6 if self.0.ends_with("00") => 1,
            6 => 2,
            9 => 3,
            12 => 4,
            15 => 5,
            18 => 6,
            _ => 0,
        }
    }

    /// Whether `self` is `other` or lies inside it (prefix match on the digits).
    pub fn is_within(&self, other: &AreaCode) -> bool {
        self.0.starts_with(&other.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Free text
// ---------------------------------------------------------------------------------------------

/// Characters refused in free text: control characters (C0, DEL, C1), line/paragraph
/// separators, bidirectional overrides/isolates (which can disguise text in admin views), and
/// U+FFFD: what bytes that are not UTF-8 become when a form is decoded (the JSON API refuses
/// them).
fn is_forbidden_text_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FFFD}')
}

/// Nothing a reader would see: white space, zero-width and other invisible characters only
/// (direction marks, soft hyphen, fillers): a required text of them is as empty as one of
/// spaces.
fn is_blank(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_whitespace()
            || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{180E}'
                | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{3164}' | '\u{FEFF}'
                | '\u{FFA0}')
    })
}

/// Single-line free text: trimmed; no control characters at all (`err.text.invalid_chars`);
/// at most `max_chars` characters (`err.text.too_long` with `{max}`).
///
/// Blank input (white space and invisible characters only) is `Ok(None)`, or `err.required`
/// when `required`.
pub fn validate_text(
    field: &str,
    raw: &str,
    max_chars: usize,
    required: bool,
) -> Result<Option<String>, FieldError> {
    let s = raw.trim();
    if is_blank(s) {
        return if required {
            Err(FieldError::new(field, "err.required"))
        } else {
            Ok(None)
        };
    }
    if s.chars().any(is_forbidden_text_char) {
        return Err(FieldError::new(field, "err.text.invalid_chars"));
    }
    if s.chars().count() > max_chars {
        return Err(FieldError::new(field, "err.text.too_long").with("max", max_chars.to_string()));
    }
    Ok(Some(s.to_string()))
}

/// Like [`validate_text`] for a text area: line breaks (`\r\n`, `\r`, `\n`) are kept as `\n`
/// and count as one character; every other control character is refused.
pub fn validate_multiline_text(
    field: &str,
    raw: &str,
    max_chars: usize,
    required: bool,
) -> Result<Option<String>, FieldError> {
    let unified = raw.replace("\r\n", "\n").replace('\r', "\n");
    let s = unified.trim();
    if is_blank(s) {
        return if required {
            Err(FieldError::new(field, "err.required"))
        } else {
            Ok(None)
        };
    }
    if s.chars().any(|c| c != '\n' && is_forbidden_text_char(c)) {
        return Err(FieldError::new(field, "err.text.invalid_chars"));
    }
    if s.chars().count() > max_chars {
        return Err(FieldError::new(field, "err.text.too_long").with("max", max_chars.to_string()));
    }
    Ok(Some(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: &str = "f";

    #[test]
    fn masking_keeps_head_and_tail_by_character() {
        assert_eq!(mask_middle("13912345678", 3, 7, "****"), "139****5678");
        assert_eq!(mask_middle("蒙L12345678", 3, 7, "****"), "蒙L1****678");
        assert_eq!(mask_middle("12345", 3, 7, "****"), "123****");
        assert_eq!(
            MobilePhone::parse(F, "13912345678").unwrap().masked(),
            "139****5678"
        );
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    /// A 17-digit body plus its computed check character.
    fn with_check(body: &str) -> String {
        format!("{body}{}", IdNumber::check_char_for(body).unwrap())
    }

    fn key<T: fmt::Debug>(r: Result<T, FieldError>) -> &'static str {
        r.unwrap_err().key
    }

    // --- errors --------------------------------------------------------------------------

    #[test]
    fn field_error_message_fills_placeholders_in_both_languages() {
        let e = FieldError::new("temp", "err.temperature.range")
            .with("min", "34.0")
            .with("max", "42.5");
        assert_eq!(e.field, "temp");
        assert_eq!(e.args.len(), 2);
        for lang in [Lang::Zh, Lang::En] {
            let m = e.message(lang);
            assert!(
                m.contains("34.0") && m.contains("42.5") && !m.contains('{'),
                "{m}"
            );
        }
        assert!(e.message(Lang::Zh).contains("体温"));
        assert_eq!(e.to_string(), "temp: err.temperature.range");
    }

    #[test]
    fn errors_collect_every_bad_field() {
        let mut errs = Errors::new();
        assert!(errs.is_empty());
        let phone = errs.check(MobilePhone::parse("phone", "13912345678"));
        assert_eq!(phone.unwrap().as_str(), "13912345678");
        assert!(errs.check(MobilePhone::parse("phone2", "123")).is_none());
        assert!(errs.check(PersonName::parse("name", "")).is_none());
        errs.push(FieldError::new("x", "err.required"));
        assert_eq!(errs.len(), 3);
        assert_eq!(errs.for_field("name").unwrap().key, "err.required");
        assert!(errs.for_field("phone").is_none());
        let msgs = errs.messages(Lang::En);
        assert_eq!(msgs[0].0, "phone2");
        assert!(msgs[0].1.contains("11-digit"));
        let all = errs.into_result().unwrap_err();
        assert_eq!(all.len(), 3);
        assert!(Errors::default().into_result().is_ok());
    }

    #[test]
    fn every_key_used_here_is_in_both_catalogues() {
        let used = [
            "err.required",
            "err.text.too_long",
            "err.text.invalid_chars",
            "err.id_number.format",
            "err.id_number.region",
            "err.id_number.birth_date",
            "err.id_number.check_digit",
            "err.passport.format",
            "err.other_doc.format",
            "err.doc_type.unknown",
            "err.phone.format",
            "err.plate.format",
            "err.temperature.format",
            "err.temperature.range",
            "err.symptoms.unknown",
            "err.symptoms.none_with_others",
            "err.name.format",
            "err.area_code.format",
            Symptoms::NONE_LABEL_KEY,
        ];
        let labels = Symptom::ALL
            .iter()
            .map(|s| s.label_key())
            .chain(DocType::ALL.iter().map(|d| d.label_key()))
            .chain([Sex::Male.label_key(), Sex::Female.label_key()]);
        let zh = i18n::keys(Lang::Zh);
        let en = i18n::keys(Lang::En);
        for k in used.into_iter().chain(labels) {
            assert!(zh.contains(&k), "{k} missing in zh-CN");
            assert!(en.contains(&k), "{k} missing in en");
        }
    }

    // --- doc type, sex -------------------------------------------------------------------

    #[test]
    fn doc_type_wire_names() {
        for d in DocType::ALL {
            assert_eq!(DocType::parse(d.as_str()), Some(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.as_str()));
            assert_eq!(serde_json::from_str::<DocType>(&json).unwrap(), d);
        }
        assert_eq!(DocType::parse(" CN_ID "), Some(DocType::CnId));
        assert_eq!(DocType::parse("visa"), None);
        assert_eq!(key(DocType::parse_field(F, "visa")), "err.doc_type.unknown");
        assert_eq!(key(DocType::parse_field(F, " ")), "err.required");
        assert_eq!(DocType::parse_field(F, "passport"), Ok(DocType::Passport));
    }

    #[test]
    fn sex_wire_names() {
        assert_eq!(serde_json::to_string(&Sex::Female).unwrap(), "\"female\"");
        assert_eq!(Sex::parse("male"), Some(Sex::Male));
        assert_eq!(Sex::parse("x"), None);
        assert_eq!(Sex::Male.label_key(), "sex.male");
    }

    // --- ID number -----------------------------------------------------------------------

    #[test]
    fn gb_standard_example_passes() {
        let id = IdNumber::parse(F, "11010519491231002X").unwrap();
        assert_eq!(id.as_str(), "11010519491231002X");
        assert_eq!(id.birth_date(), date(1949, 12, 31));
        assert_eq!(id.sex(), Sex::Female);
        assert_eq!(id.region_code(), "110105");
        assert_eq!(id.masked(), "110105********002X");
        assert_eq!(id.age_on(date(2019, 12, 30)), 69);
        assert_eq!(id.age_on(date(2019, 12, 31)), 70);
        assert_eq!(id.age_on(date(1900, 1, 1)), 0);
        assert_eq!(IdNumber::check_char_for("11010519491231002"), Some('X'));
        assert_eq!(IdNumber::check_char_for("1101051949123100"), None);
        assert_eq!(IdNumber::check_char_for("1101051949123100a"), None);
        assert_eq!(IdNumber::check_char_for("110105194912310021"), None);
    }

    #[test]
    fn gb_example_with_wrong_check_digit_fails() {
        assert_eq!(
            key(IdNumber::parse(F, "110105194912310021")),
            "err.id_number.check_digit"
        );
    }

    #[test]
    fn check_digit_message_says_last_character_and_typo() {
        let e = IdNumber::parse(F, "110105194912310021").unwrap_err();
        let en = e.message(Lang::En);
        assert!(
            en.contains("last character") && en.contains("does not match"),
            "{en}"
        );
        assert!(en.contains("typo"), "{en}");
        let zh = e.message(Lang::Zh);
        assert!(
            zh.contains("最后一位校验码不正确") && zh.contains("输错"),
            "{zh}"
        );
    }

    #[test]
    fn id_number_normalisation() {
        // Lower-case x, surrounding and inner spaces, full-width digits and Ｘ.
        for raw in [
            "11010519491231002x",
            "  11010519491231002X\t",
            "110105 19491231 002X",
            "１１０１０５１９４９１２３１００２Ｘ",
            "１１０１０５１９４９１２３１００２ｘ",
            "\u{3000}11010519491231002X\u{3000}",
        ] {
            let id = IdNumber::parse(F, raw).unwrap();
            assert_eq!(id.as_str(), "11010519491231002X", "{raw:?}");
        }
    }

    #[test]
    fn id_number_sex_from_17th_digit() {
        let male = IdNumber::parse(F, &with_check("15080219900101001")).unwrap();
        assert_eq!(male.sex(), Sex::Male);
        let female = IdNumber::parse(F, &with_check("15080219900101002")).unwrap();
        assert_eq!(female.sex(), Sex::Female);
    }

    #[test]
    fn id_number_required() {
        assert_eq!(key(IdNumber::parse(F, "")), "err.required");
        assert_eq!(key(IdNumber::parse(F, "  \u{3000} ")), "err.required");
        assert_eq!(IdNumber::parse("id", "").unwrap_err().field, "id");
    }

    #[test]
    fn id_number_format() {
        for raw in [
            "1101051949123100",                    // 16
            "11010519491231002",                   // 17
            "1101051949123100211",                 // 19
            "11010519491231",                      // 14
            "110105194912310021X",                 // 19
            "11010549123100X",                     // 15 with a letter
            "11010519491231X021",                  // X not last
            "1101051949123100-2",                  // punctuation
            "11010519491231002Y",                  // bad check letter
            "一一〇一〇五一九四九一二三一〇〇二X", // Chinese numerals
            "١١٠١٠٥١٩٤٩١٢٣١٠٠٢X",                  // Arabic-Indic digits
        ] {
            assert_eq!(
                key(IdNumber::parse(F, raw)),
                "err.id_number.format",
                "{raw}"
            );
        }
        // a first-generation number is named as one, not taken for a person it may not be
        for raw in ["110105491231002", "150802200503170"] {
            assert_eq!(
                key(IdNumber::parse(F, raw)),
                "err.id_number.first_generation",
                "{raw}"
            );
        }
    }

    #[test]
    fn id_number_region() {
        let provinces = [
            "00", "10", "16", "20", "24", "30", "38", "40", "47", "55", "60", "66", "72", "84",
            "90", "92", "99",
        ]
        .map(|prefix| format!("{prefix}0105"));
        // A mainland province's city digits are 01–70 or 90 ...
        let cities = ["159999", "119999", "150099", "658000", "467100"].map(String::from);
        for region in provinces.iter().chain(&cities) {
            let raw = with_check(&format!("{region}19491231002"));
            assert_eq!(
                key(IdNumber::parse(F, &raw)),
                "err.id_number.region",
                "{raw}"
            );
        }
        // ... but retired county codes are fine, and so are cities without counties
        // (441900 Dongguan) and counties under the province (429004 Xiantao).
        for region in ["650199", "469099", "441900", "429004", "150899"] {
            let raw = with_check(&format!("{region}19491231002"));
            assert!(IdNumber::parse(F, &raw).is_ok(), "{raw}");
        }
        // Residents' permits of Taiwan, Hong Kong and Macao, and foreigners' numbers, have
        // city digits of their own.
        for prefix in ["71", "81", "82", "83", "91"] {
            for city in ["0000", "9999"] {
                let raw = with_check(&format!("{prefix}{city}19491231002"));
                assert!(IdNumber::parse(F, &raw).is_ok(), "{raw}");
            }
        }
    }

    #[test]
    fn id_number_birth_date() {
        let today = date(2024, 6, 15);
        for birth in [
            "19490231", "19491301", "19490001", "19491200", "18991231", "20240616", "29991231",
            "00000101",
        ] {
            let raw = with_check(&format!("110105{birth}002"));
            assert_eq!(
                key(IdNumber::parse_on(F, &raw, today)),
                "err.id_number.birth_date",
                "{raw}"
            );
        }
        for birth in ["19000101", "20240615", "20000229"] {
            let raw = with_check(&format!("110105{birth}002"));
            assert!(IdNumber::parse_on(F, &raw, today).is_ok(), "{raw}");
        }
        // A date in the future relative to the real clock.
        let raw = with_check("11010521991231002");
        assert_eq!(key(IdNumber::parse(F, &raw)), "err.id_number.birth_date");
    }

    #[test]
    fn id_number_masking_and_debug_hide_the_birth_date() {
        // Find a number of the brief's example shape 150802…123X.
        let id = (0..20_000u64)
            .map(|d| date(1950, 1, 1) + chrono::Days::new(d))
            .map(|d| format!("150802{:04}{:02}{:02}123", d.year(), d.month(), d.day()))
            .find(|b| IdNumber::check_char_for(b) == Some('X'))
            .map(|b| IdNumber::parse(F, &format!("{b}X")).unwrap())
            .unwrap();
        assert_eq!(id.masked(), "150802********123X");
        let debug = format!("{id:?}");
        assert!(debug.contains("150802********123X") && !debug.contains(&id.as_str()[6..14]));
    }

    // --- documents -----------------------------------------------------------------------

    #[test]
    fn document_cn_id() {
        let d = Document::parse(F, DocType::CnId, "11010519491231002x").unwrap();
        assert_eq!(d.doc_type, DocType::CnId);
        assert_eq!(d.number(), "11010519491231002X");
        assert_eq!(d.id_number().unwrap().birth_date(), date(1949, 12, 31));
        assert_eq!(d.masked(), "110105********002X");
        assert!(!format!("{d:?}").contains("19491231"));
        assert_eq!(
            key(Document::parse(F, DocType::CnId, "110105194912310021")),
            "err.id_number.check_digit"
        );
        assert_eq!(key(Document::parse(F, DocType::CnId, "")), "err.required");
    }

    #[test]
    fn document_passport() {
        let d = Document::parse(F, DocType::Passport, " e 1234 5678 ").unwrap();
        assert_eq!(d.number(), "E12345678");
        assert!(d.id_number().is_none());
        assert_eq!(d.masked(), "E1*****78");
        assert_eq!(
            Document::parse(F, DocType::Passport, "ｅ１２３４５")
                .unwrap()
                .number(),
            "E12345"
        );
        assert_eq!(
            Document::parse(F, DocType::Passport, "AB123")
                .unwrap()
                .masked(),
            "A***3"
        );
        assert!(Document::parse(F, DocType::Passport, &"A".repeat(20)).is_ok());
        for raw in [
            "E123",
            &"A".repeat(21),
            "E1234-5678",
            "E12345678é",
            "护照12345",
        ] {
            assert_eq!(
                key(Document::parse(F, DocType::Passport, raw)),
                "err.passport.format",
                "{raw}"
            );
        }
        assert_eq!(
            key(Document::parse(F, DocType::Passport, " ")),
            "err.required"
        );
    }

    #[test]
    fn document_other() {
        let d = Document::parse(F, DocType::Other, "h1234-5678 9").unwrap();
        assert_eq!(d.number(), "H1234-56789");
        assert_eq!(d.masked(), "H1*******89");
        assert_eq!(d.masked().chars().count(), d.number().chars().count());
        let short = Document::parse(F, DocType::Other, "AB12").unwrap();
        assert_eq!(short.masked(), "A**2");
        assert!(Document::parse(F, DocType::Other, &"9".repeat(30)).is_ok());
        for raw in ["AB1", &"9".repeat(31), "----", "AB12/34", "AB12_34"] {
            assert_eq!(
                key(Document::parse(F, DocType::Other, raw)),
                "err.other_doc.format",
                "{raw}"
            );
        }
        assert_eq!(key(Document::parse(F, DocType::Other, "")), "err.required");
        // id_number() follows doc_type even if it is changed afterwards.
        let mut cn = Document::parse(F, DocType::CnId, "11010519491231002X").unwrap();
        cn.doc_type = DocType::Other;
        assert!(cn.id_number().is_none());
        assert_eq!(cn.masked(), "11**************2X");
    }

    // --- phone ---------------------------------------------------------------------------

    #[test]
    fn phone_normalisation() {
        for raw in [
            "13912345678",
            " 139 1234 5678 ",
            "139-1234-5678",
            "+86 139 1234 5678",
            "+86-13912345678",
            "8613912345678",
            "0086 139 1234 5678",
            "１３９１２３４５６７８",
            "＋８６　１３９１２３４５６７８",
        ] {
            let p = MobilePhone::parse(F, raw).unwrap();
            assert_eq!(p.as_str(), "13912345678", "{raw}");
        }
        for second in '3'..='9' {
            assert!(MobilePhone::parse(F, &format!("1{second}012345678")).is_ok());
        }
    }

    #[test]
    fn phone_errors() {
        assert_eq!(key(MobilePhone::parse(F, "")), "err.required");
        assert_eq!(key(MobilePhone::parse(F, " - ")), "err.required");
        for raw in [
            "1391234567",       // 10 digits
            "139123456789",     // 12 digits
            "12912345678",      // second digit 2
            "10912345678",      // second digit 0
            "23912345678",      // not starting with 1
            "+86 139 1234 567", // +86 and 10 digits
            "+976 9911",        // too short from abroad
            "+976 9911 2233 4455 66",
            "+0976 99112233",
            "+976 9911 22a3",
            "861391234567", // 86 + 10 digits
            "008613912345",
            "0139123456789",
            "010-12345678", // landline
            "139l2345678",  // letter l
            "139.1234.5678",
        ] {
            assert_eq!(key(MobilePhone::parse(F, raw)), "err.phone.format", "{raw}");
        }
    }

    #[test]
    fn phones_from_abroad() {
        for (raw, norm, masked) in [
            ("+976 9911 2233", "+97699112233", "+976****2233"),
            ("00976-9911-2233", "+97699112233", "+976****2233"),
            ("＋８５２ ９１２３ ４５６７", "+85291234567", "+852****4567"),
            ("+1 415 555 0123", "+14155550123", "+141****0123"),
            ("+1 (415) 555-2671", "+14155552671", "+141****2671"),
            ("+12345678", "+12345678", "+12****78"),
        ] {
            let p = MobilePhone::parse(F, raw).unwrap();
            assert_eq!((p.as_str(), p.masked().as_str()), (norm, masked), "{raw}");
        }
    }

    #[test]
    fn phone_masking() {
        let p = MobilePhone::parse(F, "+86 139 1234 5678").unwrap();
        assert_eq!(p.masked(), "139****5678");
        assert_eq!(format!("{p:?}"), "MobilePhone(\"139****5678\")");
    }

    // --- plate ---------------------------------------------------------------------------

    #[test]
    fn plates_accepted() {
        for (raw, norm) in [
            ("蒙L·12345", "蒙L12345"),
            ("蒙L12345", "蒙L12345"),
            ("蒙l 12345", "蒙L12345"),
            ("蒙L•12345", "蒙L12345"),
            ("蒙L-12345", "蒙L12345"),
            ("京Ａ·ｂ１２３４", "京AB1234"),
            ("京A·AB123", "京AAB123"),
            ("蒙LD12345", "蒙LD12345"),  // small new-energy, electric
            ("蒙L·F12345", "蒙LF12345"), // small new-energy, other
            ("沪AAD1234", "沪AAD1234"),  // small new-energy, letter in 2nd place
            ("粤BK12345", "粤BK12345"),
            ("蒙L12345D", "蒙L12345D"), // large new-energy
            ("川A12345F", "川A12345F"),
            ("鲁A1234挂", "鲁A1234挂"),
            ("京A1234警", "京A1234警"),
            ("苏E1234学", "苏E1234学"),
            ("粤Z1234港", "粤Z1234港"),
            ("粤Z·A123澳", "粤ZA123澳"),
        ] {
            let p = Plate::parse(F, raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(p.as_str(), norm, "{raw}");
        }
        assert_eq!(Plate::parse(F, "蒙l12345").unwrap().display(), "蒙L·12345");
        assert_eq!(
            Plate::parse(F, "蒙LD12345").unwrap().display(),
            "蒙L·D12345"
        );
    }

    #[test]
    fn plates_refused() {
        assert_eq!(key(Plate::parse(F, "")), "err.required");
        assert_eq!(key(Plate::parse(F, " · ")), "err.required");
        for raw in [
            "蒙I12345",   // authority letter I
            "蒙O12345",   // authority letter O
            "12345",      // no province
            "蒙12345",    // no authority letter
            "台A12345",   // not a province abbreviation
            "蒙L1234",    // too short
            "蒙L1234567", // too long
            "蒙L12I45",   // I in the serial
            "蒙L12O45",   // O in the serial
            "蒙LX12345",  // 6 chars, X is not a new-energy letter
            "蒙LD1234A",  // small new-energy needs 4 trailing digits
            "蒙L1234AD",  // large new-energy needs 5 digits
            "蒙L12345A",  // 6 chars ending in neither D nor F
            "蒙L12345挂", // suffix plates have 4 serial characters
            "京A1234港",  // Hong Kong plates are 粤Z only
            "使014578",   // embassy
            "京A1234领",
            "WJ12345",
            "蒙L1234_",
        ] {
            assert_eq!(key(Plate::parse(F, raw)), "err.plate.format", "{raw}");
        }
        let msg = Plate::parse(F, "12345").unwrap_err().message(Lang::Zh);
        assert!(msg.contains("京A·12345"), "{msg}");
    }

    // --- temperature ---------------------------------------------------------------------

    #[test]
    fn temperature_parse_and_round_half_up() {
        let t = |s: &str| Temperature::parse(F, s).unwrap().tenths();
        assert_eq!(t("36.5"), 365);
        assert_eq!(t("36.55"), 366);
        assert_eq!(t("36.549"), 365);
        assert_eq!(t("36.54"), 365);
        assert_eq!(t("36.95"), 370);
        assert_eq!(t("37"), 370);
        assert_eq!(t("36,6"), 366);
        assert_eq!(t("３６．６"), 366);
        assert_eq!(t("36。6"), 366, "a Chinese keyboard's full stop");
        assert_eq!(whole_number("２"), Some(2), "full-width digits count");
        assert_eq!(t(" 36.6℃ "), 366);
        assert_eq!(t("36.6 °C"), 366);
        assert_eq!(t("36.6°"), 366);
        assert_eq!(t("36.6度"), 366);
        assert_eq!(t("36.6 摄氏度"), 366);
        assert_eq!(t("+36.6"), 366);
        assert_eq!(t("33.95"), 340);
        assert_eq!(t("34.0"), 340);
        assert_eq!(t("42.5"), 425);
        assert_eq!(t("42.549"), 425);
    }

    #[test]
    fn temperature_range_errors_carry_min_max() {
        for raw in [
            "50.0",
            "33.9",
            "33.94",
            "42.55",
            "42.6",
            "0",
            "-36.5",
            "999999999999999999999999",
        ] {
            let e = Temperature::parse(F, raw).unwrap_err();
            assert_eq!(e.key, "err.temperature.range", "{raw}");
            assert_eq!(
                e.args,
                vec![("min", "34.0".to_string()), ("max", "42.5".to_string())]
            );
        }
        let m = Temperature::parse(F, "50.0").unwrap_err().message(Lang::En);
        assert!(m.contains("34.0") && m.contains("42.5"), "{m}");
    }

    #[test]
    fn temperature_format_errors() {
        assert_eq!(key(Temperature::parse(F, "")), "err.required");
        for raw in [
            "abc",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "3.7e1",
            "36.",
            ".5",
            "36..5",
            "36.5.1",
            "三十六",
            "36 5x",
            "℃",
            "0x24",
        ] {
            assert_eq!(
                key(Temperature::parse(F, raw)),
                "err.temperature.format",
                "{raw}"
            );
        }
    }

    #[test]
    fn temperature_from_f64() {
        assert_eq!(
            key(Temperature::from_f64(F, f64::NAN)),
            "err.temperature.format"
        );
        assert_eq!(
            key(Temperature::from_f64(F, f64::INFINITY)),
            "err.temperature.format"
        );
        assert_eq!(
            key(Temperature::from_f64(F, f64::NEG_INFINITY)),
            "err.temperature.format"
        );
        assert_eq!(key(Temperature::from_f64(F, 50.0)), "err.temperature.range");
        assert_eq!(
            key(Temperature::from_f64(F, 1e300)),
            "err.temperature.range"
        );
        assert_eq!(
            key(Temperature::from_f64(F, -1e300)),
            "err.temperature.range"
        );
        assert_eq!(
            key(Temperature::from_f64(F, 1e-300)),
            "err.temperature.range"
        );
        assert_eq!(Temperature::from_f64(F, 36.55).unwrap().tenths(), 366);
        assert_eq!(Temperature::from_f64(F, 36.549).unwrap().tenths(), 365);
        assert_eq!(Temperature::from_f64(F, 37.0).unwrap().tenths(), 370);
        assert_eq!(Temperature::from_f64(F, 42.5).unwrap().tenths(), 425);
    }

    #[test]
    fn temperature_accessors() {
        let t = Temperature::from_tenths(373);
        assert!(t.is_fever());
        assert!(!Temperature::from_tenths(372).is_fever());
        assert!((t.celsius() - 37.3).abs() < 1e-9);
        assert_eq!(t.to_string(), "37.3");
        assert_eq!(Temperature::from_tenths(-5).to_string(), "-0.5");
        assert_eq!(Temperature::from_tenths(400).to_string(), "40.0");
        assert!(Temperature::from_tenths(365) < Temperature::from_tenths(366));
    }

    // --- symptoms ------------------------------------------------------------------------

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn symptoms_parse() {
        let s = Symptoms::parse(F, &strings(&["fever", "cough", "fever", " "])).unwrap();
        assert_eq!(s.bits(), 0b11);
        assert!(s.contains(Symptom::Fever) && s.contains(Symptom::Cough));
        assert!(!s.contains(Symptom::Diarrhoea));
        assert_eq!(s.names(), vec!["fever", "cough"]);
        assert!(!s.is_empty());

        let none = Symptoms::parse(F, &strings(&["none"])).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.names(), Vec::<&str>::new());
        assert!(Symptoms::parse(F, &[]).unwrap().is_empty());

        let all = Symptoms::parse(
            F,
            &strings(&[
                "diarrhoea",
                "shortness_of_breath",
                "sore_throat",
                "fatigue",
                "cough",
                "fever",
            ]),
        )
        .unwrap();
        assert_eq!(all.bits(), Symptoms::KNOWN_BITS);
        assert_eq!(all.iter().collect::<Vec<_>>(), Symptom::ALL.to_vec());
    }

    #[test]
    fn symptoms_errors() {
        assert_eq!(
            key(Symptoms::parse(F, &strings(&["none", "fever"]))),
            "err.symptoms.none_with_others"
        );
        assert_eq!(
            key(Symptoms::parse(F, &strings(&["cough", "none"]))),
            "err.symptoms.none_with_others"
        );
        let e = Symptoms::parse(F, &strings(&["fever", "flu"])).unwrap_err();
        assert_eq!(e.key, "err.symptoms.unknown");
        assert_eq!(e.args, vec![("value", "flu".to_string())]);
        assert!(e.message(Lang::En).contains("flu"));
        let long = "x".repeat(100);
        let e = Symptoms::parse(F, &[long]).unwrap_err();
        assert_eq!(e.args[0].1.chars().count(), 41);
        // what is echoed carries no control characters (a nested array arrives as a NUL)
        let e = Symptoms::parse(F, &strings(&["\u{0}"])).unwrap_err();
        assert_eq!(e.args, vec![("value", "…".to_string())]);
        let e = Symptoms::parse(F, &strings(&["flu\u{7}"])).unwrap_err();
        assert_eq!(e.args, vec![("value", "flu".to_string())]);
    }

    #[test]
    fn symptom_names_bits_and_labels() {
        let mut seen = 0u8;
        for s in Symptom::ALL {
            assert_eq!(Symptom::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
            assert_eq!(s.label_key(), format!("symptom.{}", s.as_str()));
            assert_eq!(s.bit().count_ones(), 1);
            assert_eq!(seen & s.bit(), 0);
            seen |= s.bit();
        }
        assert_eq!(Symptom::parse("none"), None);
        assert_eq!(Symptom::parse("Fever"), Some(Symptom::Fever));
        assert_eq!(Symptoms::from_bits(0xFF).bits(), Symptoms::KNOWN_BITS);
        assert!(Symptoms::from_bits(0b1100_0000).is_empty());
        let s: Symptoms = [Symptom::Cough, Symptom::Diarrhoea].into_iter().collect();
        assert_eq!(s.bits(), 2 | 32);
        assert_eq!(i18n::t(Lang::Zh, Symptom::Fever.label_key()), "发热");
    }

    // --- names ---------------------------------------------------------------------------

    #[test]
    fn names_accepted() {
        for (raw, norm) in [
            ("张三", "张三"),
            ("  欧阳明明 ", "欧阳明明"),
            ("阿依古丽·买买提", "阿依古丽·买买提"),
            ("阿依古丽•买买提", "阿依古丽·买买提"),
            ("阿依古丽・买买提", "阿依古丽·买买提"),
            ("阿依古丽 · 买买提", "阿依古丽·买买提"),
            ("John  O’Brien-Smith", "John O'Brien-Smith"),
            ("Ｊｏｈｎ　Ｓｍｉｔｈ", "John Smith"),
            ("Lü Wei", "Lü Wei"),
            ("Lu\u{0308} Wei", "Lu\u{0308} Wei"),
            ("ᠪᠠᠲᠤ", "ᠪᠠᠲᠤ"),
            ("ᠪᠠᠲᠤ ᠮᠥᠩᠬᠡ", "ᠪᠠᠲᠤ ᠮᠥᠩᠬᠡ"),
            ("𠮷野", "𠮷野"),
            ("李", "李"),
            ("Батбаяр", "Батбаяр"),
            ("Ivan Иванов", "Ivan Иванов"),
            ("Nguyễn Thị Minh", "Nguyễn Thị Minh"),
            ("ئابدۇرېھىم", "ئابدۇرېھىم"),
            ("阿依古丽．买买提", "阿依古丽·买买提"),
            ("阿依古丽.买买提", "阿依古丽·买买提"),
            ("John F. Kennedy Jr.", "John F. Kennedy Jr."),
            // Mongolian with a free variation selector and the vowel separator
            ("ᠮᠣᠩᠭ᠋ᠣᠯ", "ᠮᠣᠩᠭ᠋ᠣᠯ"),
            ("ᠪᠠᠶᠠᠷ\u{180E}ᠠ", "ᠪᠠᠶᠠᠷ\u{180E}ᠠ"),
            ("བཀྲ་ཤིས་", "བཀྲ་ཤིས་"),
            ("लक्ष्मी", "लक्ष्मी"),
            ("ก่อ", "ก่อ"),
        ] {
            let n = PersonName::parse(F, raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(n.as_str(), norm, "{raw}");
        }
        assert!(PersonName::parse(F, &"张".repeat(NAME_MAX_CHARS)).is_ok());
    }

    #[test]
    fn names_refused() {
        assert_eq!(key(PersonName::parse(F, "")), "err.required");
        assert_eq!(key(PersonName::parse(F, " \u{3000} ")), "err.required");
        for raw in [
            "张3",
            "张三1",
            "张\u{0007}三",
            "张\u{0000}三",
            "张\u{202E}三",
            "·张三",
            "张三·",
            "张··三",
            "张-'三",
            "O'",
            "-",
            "张三!",
            "张三@example.com",
            "ᠪᠠᠲᠤ᠑",
            "\u{0308}Lu",
            "😀",
            "Ivаn",             // a Cyrillic а among Latin letters
            "\u{180B}ᠮᠣᠩ",      // a variation selector with no letter before it
            "\u{3164}\u{3164}", // Hangul fillers: a name that looks blank
            "张\u{200D}",
            "Ⅻ", // a Roman numeral
            ".John",
            "J.Smith",
            "张三.",
        ] {
            assert_eq!(key(PersonName::parse(F, raw)), "err.name.format", "{raw:?}");
        }
        let e = PersonName::parse(F, &"张".repeat(NAME_MAX_CHARS + 1)).unwrap_err();
        assert_eq!(e.key, "err.text.too_long");
        assert_eq!(e.args, vec![("max", "40".to_string())]);
    }

    #[test]
    fn name_masking() {
        let m = |s: &str| PersonName::parse(F, s).unwrap().masked();
        assert_eq!(m("张三"), "张*");
        assert_eq!(m("欧阳明明"), "欧**明");
        assert_eq!(m("欧阳明"), "欧*明");
        assert_eq!(m("李"), "*");
        assert_eq!(m("阿依古丽·买买提"), "阿******提");
        assert_eq!(m("John Smith"), "J*** S***");
        assert_eq!(m("Lü"), "L***");
        assert_eq!(m("ᠪᠠᠲᠤ"), "ᠪ***");
        let n = PersonName::parse(F, "欧阳明明").unwrap();
        assert!(!format!("{n:?}").contains("阳"));
    }

    // --- area codes ----------------------------------------------------------------------

    #[test]
    fn area_codes() {
        for (raw, level) in [
            ("15", 0),
            ("1508", 0),
            ("150800", 1),
            ("150802", 2),
            ("150802001", 3),
            ("150802001001", 4),
            ("150802001001001", 5),
            ("150802001001001002", 6),
            (" １５０８０２ ", 2),
        ] {
            let a = AreaCode::parse(F, raw).unwrap();
            assert_eq!(a.level(), level, "{raw}");
        }
        let county = AreaCode::parse(F, "150802").unwrap();
        let town = AreaCode::parse(F, "150802001").unwrap();
        assert_eq!(town.as_str(), "150802001");
        assert!(town.is_within(&county) && !county.is_within(&town));
        assert_eq!(key(AreaCode::parse(F, "")), "err.required");
        for raw in [
            "1",
            "150",
            "15080",
            "1508021",
            "15080200",
            "1508020011",
            "15a802",
            "150-802",
            "150 802",
            "١٥٠٨٠٢",
        ] {
            assert_eq!(
                key(AreaCode::parse(F, raw)),
                "err.area_code.format",
                "{raw}"
            );
        }
    }

    // --- free text -----------------------------------------------------------------------

    #[test]
    fn free_text() {
        assert_eq!(
            validate_text(F, "  你好 ", 10, true),
            Ok(Some("你好".to_string()))
        );
        assert_eq!(validate_text(F, "   ", 10, false), Ok(None));
        assert_eq!(key(validate_text(F, " ", 10, true)), "err.required");
        // zero-width characters alone are as empty as spaces; inside a text they stay
        assert_eq!(
            key(validate_text(F, "\u{200B}\u{FEFF} \u{2060}", 10, true)),
            "err.required"
        );
        assert_eq!(
            key(validate_multiline_text(F, "\u{200B}\n\u{200C}", 10, true)),
            "err.required"
        );
        assert_eq!(
            key(validate_text(F, "\u{200E}\u{00AD}\u{3164}", 10, true)),
            "err.required"
        );
        assert_eq!(
            validate_text(F, "流\u{200D}调", 10, true)
                .unwrap()
                .as_deref(),
            Some("流\u{200D}调")
        );
        // Characters, not bytes: 10 Chinese characters are 30 bytes.
        assert!(validate_text(F, &"字".repeat(10), 10, true).is_ok());
        let e = validate_text(F, &"字".repeat(11), 10, true).unwrap_err();
        assert_eq!(e.key, "err.text.too_long");
        assert_eq!(e.args, vec![("max", "10".to_string())]);
        assert!(e.message(Lang::Zh).contains("10"));
        for raw in [
            "a\nb",
            "a\tb",
            "a\u{0}b",
            "a\u{7F}b",
            "a\u{85}b",
            "a\u{202E}b",
            "a\u{2066}b",
            "a\u{FFFD}b",
        ] {
            assert_eq!(
                key(validate_text(F, raw, 10, true)),
                "err.text.invalid_chars",
                "{raw:?}"
            );
        }
        assert_eq!(
            validate_multiline_text(F, " line 1\r\nline 2\rline 3 \n", 30, true),
            Ok(Some("line 1\nline 2\nline 3".to_string()))
        );
        assert_eq!(
            key(validate_multiline_text(F, "a\tb", 30, true)),
            "err.text.invalid_chars"
        );
        assert_eq!(
            key(validate_multiline_text(F, "a\r\nb", 2, true)),
            "err.text.too_long"
        );
        assert_eq!(validate_multiline_text(F, "\r\n", 2, false), Ok(None));
    }

    // --- properties ----------------------------------------------------------------------

    /// A 17-digit body with a valid province and city prefix and a birth date in 1900..=2020.
    fn id_body() -> impl Strategy<Value = String> {
        let days = (date(2020, 12, 31) - date(1900, 1, 1)).num_days() as u64;
        (
            proptest::sample::select(PROVINCE_CODES.to_vec()),
            prop_oneof![1u32..=70, Just(90u32)],
            0u32..100,
            0..=days,
            0u32..1000,
        )
            .prop_map(|(p, city, county, d, seq)| {
                let b = date(1900, 1, 1) + chrono::Days::new(d);
                format!(
                    "{p:02}{city:02}{county:02}{:04}{:02}{:02}{seq:03}",
                    b.year(),
                    b.month(),
                    b.day()
                )
            })
    }

    proptest! {
        #[test]
        fn valid_bodies_with_their_check_char_parse(body in id_body()) {
            let check = IdNumber::check_char_for(&body).unwrap();
            let id = IdNumber::parse(F, &format!("{body}{check}")).unwrap();
            prop_assert_eq!(id.as_str(), format!("{body}{check}"));
            prop_assert_eq!(id.region_code(), &body[..6]);
            let b = id.birth_date();
            prop_assert_eq!(format!("{:04}{:02}{:02}", b.year(), b.month(), b.day()), &body[6..14]);
            for other in ID_CHECK.iter().filter(|c| **c != check) {
                let e = IdNumber::parse(F, &format!("{body}{other}")).unwrap_err();
                prop_assert_eq!(e.key, "err.id_number.check_digit");
            }
        }

        #[test]
        fn masked_id_never_contains_the_middle_digits(body in id_body()) {
            let raw = with_check(&body);
            let id = IdNumber::parse(F, &raw).unwrap();
            let middle = &raw[6..14];
            prop_assert!(!id.masked().contains(middle));
            prop_assert_eq!(id.masked().chars().count(), 18);
            let doc = Document::parse(F, DocType::CnId, &raw).unwrap();
            prop_assert!(!doc.masked().contains(middle));
            let debug = format!("{doc:?}");
            prop_assert!(!debug.contains(middle));
        }

        #[test]
        fn id_parse_never_panics(s in any::<String>()) {
            let _ = IdNumber::parse(F, &s);
        }

        #[test]
        fn id_parse_never_panics_on_near_misses(s in "[0-9xX０-９Ｘ \u{3000}]{0,20}") {
            if let Ok(id) = IdNumber::parse(F, &s) {
                prop_assert_eq!(id.as_str().len(), 18);
                let _ = (id.sex(), id.masked(), id.region_code());
            }
        }

        #[test]
        fn other_parsers_never_panic(s in any::<String>()) {
            if let Ok(p) = Plate::parse(F, &s) {
                let _ = p.display();
            }
            if let Ok(p) = MobilePhone::parse(F, &s) {
                prop_assert_eq!(p.masked().chars().count(), 11);
            }
            if let Ok(t) = Temperature::parse(F, &s) {
                prop_assert!(Temperature::MIN <= t && t <= Temperature::MAX);
            }
            if let Ok(n) = PersonName::parse(F, &s) {
                let _ = n.masked();
                prop_assert!(n.as_str().chars().count() <= NAME_MAX_CHARS);
            }
            if let Ok(a) = AreaCode::parse(F, &s) {
                let _ = a.level();
            }
            for d in DocType::ALL {
                if let Ok(doc) = Document::parse(F, d, &s) {
                    prop_assert_eq!(doc.masked().chars().count(), doc.number().chars().count());
                }
            }
            let _ = validate_text(F, &s, 5, true);
            let _ = validate_multiline_text(F, &s, 5, false);
            let _ = Symptoms::parse(F, &[s.clone(), "fever".to_string()]);
        }

        #[test]
        fn shaped_input_never_panics(
            plate in "[京蒙粤A-Z0-9·•挂港\\- ]{0,10}",
            phone in "[+0-9\\- ]{0,18}",
            temp in "[-+0-9.,℃°C ]{0,12}",
            name in "[张三·ᠪᠠ'\\- a-zA-Z0-9]{0,45}",
        ) {
            let _ = Plate::parse(F, &plate);
            let _ = MobilePhone::parse(F, &phone);
            let _ = Temperature::parse(F, &temp);
            let _ = PersonName::parse(F, &name);
        }

        #[test]
        fn temperature_from_any_f64_never_panics(v in any::<f64>()) {
            if let Ok(t) = Temperature::from_f64(F, v) {
                prop_assert!(Temperature::MIN <= t && t <= Temperature::MAX);
                prop_assert!((t.celsius() - v).abs() <= 0.05 + 1e-9);
            }
        }

        #[test]
        fn temperature_string_and_f64_agree(tenths in 300i32..450, hundredths in 0i32..10) {
            let s = format!("{}.{}{}", tenths / 10, tenths % 10, hundredths);
            let v: f64 = s.parse().unwrap();
            prop_assert_eq!(Temperature::parse(F, &s), Temperature::from_f64(F, v));
        }

        #[test]
        fn valid_phones_round_trip(second in 3u8..=9, rest in "[0-9]{9}") {
            let raw = format!("+86 1{second}{rest}");
            let p = MobilePhone::parse(F, &raw).unwrap();
            prop_assert_eq!(p.as_str(), format!("1{second}{rest}"));
        }
    }
}
