//! What staff and clients see of stored records: JSON views with personal fields masked, and
//! display helpers (local time, names of codes).

use chrono::{DateTime, FixedOffset, Utc};
use epigrid_core::divisions;
use epigrid_core::model::{Registration, Site};
use epigrid_core::validate::{PersonName, Symptoms};
use serde_json::{json, Value};

/// A person's name masked for display (`张*三`); names that no longer parse are fully hidden.
pub fn mask_name(name: &str) -> String {
    PersonName::parse("name", name)
        .map(|n| n.masked())
        .unwrap_or_else(|_| "*".repeat(name.chars().count().clamp(1, 4)))
}

/// A home address as staff see it by default: the street, not the door (everything from
/// the first digit on is hidden, and at most eight characters show): `团结路88号3单元502室`
/// → `团结路***`. The whole address is for an audited unmask.
pub fn mask_address(a: &str) -> String {
    // house numbers in Chinese numerals too (`幸福里二十三号`, `五零一`)
    let number = |c: &char| {
        c.is_numeric() || "〇零一二两三四五六七八九十百千壹贰叁肆伍陆柒捌玖拾佰仟".contains(*c)
    };
    // and never more than half of it, so an address without numbers is not shown whole
    let half = a.chars().count() / 2;
    let shown: String = a
        .chars()
        .take_while(|c| !number(c))
        .take(8.min(half))
        .collect();
    format!("{}***", shown.trim_end())
}

pub fn local(t: DateTime<Utc>, tz: FixedOffset) -> String {
    use chrono::Datelike;
    // what `format("%Y-%m-%d %H:%M:%S")` gives, without parsing a format string each time
    let l = t.with_timezone(&tz);
    if !(0..=9999).contains(&l.year()) {
        // outside four digits, as strftime writes it (`+10000`)
        return l.format("%Y-%m-%d %H:%M:%S").to_string();
    }
    let mut out = String::with_capacity(19);
    push_date_time(&mut out, &l, ' ');
    out
}

/// `t` as chrono's serde writes a `DateTime<Utc>` (RFC 3339 with `Z`, fractional seconds in 3,
/// 6 or 9 digits as needed, none when whole), without chrono's formatting machinery: a
/// registration's receipt, on every registration's path, spent ~0.3 µs there.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&t.year()) || nanos >= 1_000_000_000 {
        return t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    }
    let mut out = String::with_capacity(30);
    push_date_time(&mut out, &t, 'T');
    let (digits, fraction) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    if digits > 0 {
        out.push('.');
        push_digits(&mut out, fraction, digits);
    }
    out.push('Z');
    out
}

/// For `#[serde(serialize_with)]`: [`rfc3339`].
#[cfg(test)]
fn serialize_rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// Appends `YYYY-MM-DD<sep>HH:MM:SS` (a year of four digits).
fn push_date_time(out: &mut String, t: &(impl chrono::Datelike + chrono::Timelike), sep: char) {
    push_digits(out, t.year() as u32, 4);
    for (sep, n) in [
        ('-', t.month()),
        ('-', t.day()),
        (sep, t.hour()),
        (':', t.minute()),
        (':', t.second()),
    ] {
        out.push(sep);
        push_digits(out, n, 2);
    }
}

/// Appends `n` as exactly `width` decimal digits (zero-padded; `n` < 10^width).
fn push_digits(out: &mut String, n: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10u32.pow(i) % 10) as u8));
    }
}

pub fn temperature(tenths: Option<i16>) -> Option<f64> {
    tenths.map(|t| f64::from(t) / 10.0)
}

/// A temperature as a page shows it (`36.6`), empty when none was taken.
pub fn temperature_text(tenths: Option<i16>) -> String {
    temperature(tenths)
        .map(|t| format!("{t:.1}"))
        .unwrap_or_default()
}

/// A temperature with its unit (`36.6 ℃`), when one was taken.
pub fn temperature_celsius(tenths: Option<i16>) -> Option<String> {
    temperature(tenths).map(|t| format!("{t:.1} ℃"))
}

/// The symptoms of a bit set in words, joined with `、`.
pub fn symptom_labels(bits: u8, lang: epigrid_core::Lang) -> String {
    Symptoms::from_bits(bits)
        .iter()
        .map(|x| epigrid_core::i18n::t(lang, x.label_key()))
        .collect::<Vec<_>>()
        .join(list_separator(lang))
}

/// Between the items of a list in running text: `、` in Chinese, `, ` otherwise.
pub fn list_separator(lang: epigrid_core::Lang) -> &'static str {
    match lang {
        epigrid_core::Lang::Zh => "、",
        _ => ", ",
    }
}

/// A registration as clients see it: name, document and phone masked.
#[derive(serde::Serialize)]
pub struct RegistrationOut<'a> {
    pub id: uuid::Uuid,
    pub seq: i64,
    pub site_id: uuid::Uuid,
    pub site_name: &'a str,
    pub kind: epigrid_core::model::SiteKind,
    pub area_code: &'a str,
    pub at: DateTime<Utc>,
    pub at_local: String,
    pub verification_code: &'a str,
    pub person_id: uuid::Uuid,
    pub name: String,
    pub id_type: Option<epigrid_core::validate::DocType>,
    pub id_number: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub provisional: bool,
    pub channel: epigrid_core::model::Channel,
    pub by_user: Option<uuid::Uuid>,
    pub temperature: Option<f64>,
    pub fever: bool,
    pub symptoms: Vec<&'static str>,
    pub high_risk_travel: Option<bool>,
    pub plate: Option<&'a str>,
    pub companions: i32,
    pub origin: Option<&'a str>,
    pub origin_name: Option<String>,
    pub destination: Option<&'a str>,
    pub direction: Option<epigrid_core::model::Direction>,
    pub visitor: Option<bool>,
    pub unit_code: Option<&'a str>,
    pub visit_reason: Option<&'a str>,
    pub arrival_date: Option<chrono::NaiveDate>,
    pub residence_code: Option<&'a str>,
    /// masked ([`mask_address`])
    pub address: Option<String>,
    pub employer: Option<&'a str>,
    pub stay_days: Option<i32>,
    pub purpose: Option<&'a str>,
    pub left_at: Option<DateTime<Utc>>,
}

/// What an anonymous self-registration gets back: enough to show the staff at the gate (the
/// code, the time, the site) and to tell a feverish person where to go, and nothing about the
/// person that the caller did not type in themselves. Written by [`receipt_body`]; this is
/// the shape it is tested against.
#[cfg(test)]
#[derive(serde::Serialize)]
pub struct ReceiptOut<'a> {
    pub id: uuid::Uuid,
    pub verification_code: &'a str,
    #[serde(serialize_with = "serialize_rfc3339")]
    pub at: DateTime<Utc>,
    pub at_local: String,
    pub site_name: &'a str,
    pub kind: epigrid_core::model::SiteKind,
    pub fever: bool,
}

/// The receipt ([`ReceiptOut`], its fields in their order) written out as JSON, without
/// serde's field-by-field serialising (one of session 16's changes that together took a
/// registration from 111.8k to 106.5k instructions, `tools/callgrind-per-registration`).
pub(crate) fn receipt_body(
    r: &crate::api::Submitted,
    site: &epigrid_core::model::Site,
    tz: FixedOffset,
) -> Vec<u8> {
    // a string serde_json writes cannot fail into a `Vec`
    fn text(b: &mut Vec<u8>, s: &str) {
        let _ = serde_json::to_writer(&mut *b, s);
    }
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(b"{\"id\":\"");
    let mut id = uuid::Uuid::encode_buffer();
    b.extend_from_slice(r.id.hyphenated().encode_lower(&mut id).as_bytes());
    b.extend_from_slice(b"\",\"verification_code\":");
    text(&mut b, &r.verification_code);
    b.extend_from_slice(b",\"at\":");
    text(&mut b, &rfc3339(r.at));
    b.extend_from_slice(b",\"at_local\":");
    text(&mut b, &local(r.at, tz));
    b.extend_from_slice(b",\"site_name\":");
    text(&mut b, &site.name);
    b.extend_from_slice(b",\"kind\":");
    text(&mut b, site.kind.as_str());
    b.extend_from_slice(if r.fever {
        b",\"fever\":true}"
    } else {
        b",\"fever\":false}"
    });
    b
}

/// A JSON response of `body`, already written.
pub(crate) fn json_bytes_response(
    status: axum::http::StatusCode,
    body: Vec<u8>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A JSON response written into a buffer that holds a registration at once (axum's `Json`
/// starts at 128 bytes and grows, copying, on the way to a masked registration's ~900 bytes).
pub fn json_response<T: serde::Serialize>(
    status: axum::http::StatusCode,
    value: &T,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut buf = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => json_bytes_response(status, buf),
        Err(e) => {
            tracing::error!(error = %e, "response not serialisable");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub fn registration_json(r: &Registration, tz: FixedOffset) -> RegistrationOut<'_> {
    let f = &r.fields;
    RegistrationOut {
        id: r.id,
        seq: r.seq,
        site_id: r.site_id,
        site_name: &r.site_name,
        kind: r.kind,
        area_code: &r.area_code,
        at: r.at,
        at_local: local(r.at, tz),
        verification_code: &r.verification_code,
        person_id: r.person_id,
        name: mask_name(&r.name),
        id_type: r.id_type,
        id_number: r.doc_masked.as_deref(),
        phone: r.phone_masked.as_deref(),
        provisional: r.provisional,
        channel: r.channel,
        by_user: r.by_user,
        temperature: temperature(f.temperature),
        fever: epigrid_core::store::is_fever(f),
        symptoms: Symptoms::from_bits(f.symptoms).names(),
        high_risk_travel: f.high_risk_travel,
        plate: f.plate.as_deref(),
        companions: f.companions,
        origin: f.origin_code.as_deref(),
        origin_name: f.origin_code.as_deref().and_then(divisions::full_name),
        destination: f.destination.as_deref(),
        direction: f.direction,
        visitor: f.visitor,
        unit_code: f.unit_code.as_deref(),
        visit_reason: f.visit_reason.as_deref(),
        arrival_date: f.arrival_date,
        residence_code: f.residence_code.as_deref(),
        address: f.address.as_deref().map(mask_address),
        employer: f.employer.as_deref(),
        stay_days: f.stay_days,
        purpose: f.purpose.as_deref(),
        left_at: r.left_at,
    }
}

/// The public form URL of a site.
pub fn site_url(base: &str, site: &Site) -> String {
    format!("{}/s/{}", base.trim_end_matches('/'), site.token)
}

pub fn site_json(site: &Site, base: &str) -> Value {
    json!({
        "id": site.id,
        "token": site.token,
        "kind": site.kind,
        "name": site.name,
        "area_code": site.area_code,
        "active": site.active,
        "default_stay_min": site.default_stay_min,
        "created_at": site.created_at,
        "url": site_url(base, site),
        "qr_svg": format!("/api/v1/sites/{}/qr.svg", site.id),
        "qr_png": format!("/api/v1/sites/{}/qr.png", site.id),
        "poster": format!("/sites/{}/poster", site.id),
    })
}

/// One registration as a table row on staff pages (masked).
pub struct RowView {
    pub id: String,
    pub at: String,
    pub site_name: String,
    pub kind_label: &'static str,
    pub name: String,
    pub doc: String,
    pub phone: String,
    pub temperature: String,
    pub fever: bool,
    /// What the confirmation screen flags: a fever, other symptoms, or a risk area in the
    /// last 14 days.
    pub attention: bool,
    /// The symptoms, less a fever the row flags already.
    pub symptoms: String,
    pub summary: String,
    pub code: String,
    pub staff_entry: bool,
}

pub fn kind_key(k: epigrid_core::model::SiteKind) -> &'static str {
    use epigrid_core::model::SiteKind;
    match k {
        SiteKind::Checkpoint => "site.kind.checkpoint",
        SiteKind::Gate => "site.kind.gate",
        SiteKind::Arrival => "site.kind.arrival",
        SiteKind::Venue => "site.kind.venue",
    }
}

pub fn row_view(r: &Registration, tz: FixedOffset, lang: epigrid_core::Lang) -> RowView {
    use epigrid_core::i18n::t;
    use epigrid_core::model::Direction;
    let f = &r.fields;
    let mut summary = Vec::new();
    if let Some(d) = f.direction {
        summary.push(
            t(
                lang,
                if d == Direction::In {
                    "form.direction.in"
                } else {
                    "form.direction.out"
                },
            )
            .to_string(),
        );
    }
    if f.visitor == Some(true) {
        summary.push(t(lang, "form.visitor.visitor").to_string());
    }
    if let Some(p) = &f.plate {
        summary.push(p.clone());
    }
    if let Some(o) = &f.origin_code {
        summary.push(format!(
            "{} {}",
            t(lang, "form.origin"),
            origin_name(o, lang)
        ));
    }
    if f.companions > 0 {
        summary.push(format!("+{}", f.companions));
    }
    if f.high_risk_travel == Some(true) {
        summary.push(t(lang, "row.high_risk").to_string());
    }
    if let Some(d) = f.arrival_date {
        summary.push(format!("{} {d}", t(lang, "form.arrival_date")));
    }
    let fever = epigrid_core::store::is_fever(f);
    RowView {
        id: r.id.to_string(),
        at: local(r.at, tz),
        site_name: r.site_name.clone(),
        kind_label: kind_key(r.kind),
        name: mask_name(&r.name),
        doc: r.doc_masked.clone().unwrap_or_default(),
        phone: r.phone_masked.clone().unwrap_or_default(),
        temperature: temperature_text(f.temperature),
        fever,
        attention: fever || f.high_risk_travel == Some(true) || f.symptoms != 0,
        // a fever bit always makes `fever` true: the row flags it already
        symptoms: symptom_labels(
            f.symptoms & !epigrid_core::validate::Symptom::Fever.bit(),
            lang,
        ),
        summary: summary.join(" · "),
        code: r.verification_code.clone(),
        staff_entry: r.channel == epigrid_core::model::Channel::Staff,
    }
}

/// Every field of a registration as (label key, value) pairs for the detail page.
pub fn detail_pairs(
    r: &Registration,
    tz: FixedOffset,
    lang: epigrid_core::Lang,
) -> Vec<(&'static str, String)> {
    use epigrid_core::i18n::t;
    let f = &r.fields;
    let mut v: Vec<(&'static str, String)> = vec![
        ("detail.time", local(r.at, tz)),
        ("detail.site", r.site_name.clone()),
        ("detail.kind", t(lang, kind_key(r.kind)).to_string()),
        ("detail.code", r.verification_code.clone()),
        (
            "detail.channel",
            t(
                lang,
                if r.channel == epigrid_core::model::Channel::Staff {
                    "detail.channel.staff"
                } else {
                    "detail.channel.self"
                },
            )
            .to_string(),
        ),
    ];
    let mut opt = |k: &'static str, val: Option<String>| {
        if let Some(x) = val.filter(|x| !x.is_empty()) {
            v.push((k, x));
        }
    };
    // flagged as the lists and the feed flag it
    let fever = epigrid_core::store::is_fever(f);
    opt(
        "form.temperature",
        temperature_celsius(f.temperature).map(|text| {
            if fever {
                format!("{text} {}", t(lang, "row.fever"))
            } else {
                text
            }
        }),
    );
    opt("detail.symptoms", Some(symptom_labels(f.symptoms, lang)));
    // staff read short labels, not the questions the form asked
    opt(
        "detail.high_risk_travel",
        f.high_risk_travel
            .map(|b| t(lang, if b { "form.yes" } else { "form.no" }).to_string()),
    );
    opt("form.plate", f.plate.clone());
    opt(
        "detail.companion_count",
        (f.companions > 0).then(|| f.companions.to_string()),
    );
    opt(
        "form.origin",
        f.origin_code.as_ref().map(|o| origin_name(o, lang)),
    );
    opt("form.destination", f.destination.clone());
    opt(
        "form.direction",
        f.direction.map(|d| {
            t(
                lang,
                if d == epigrid_core::model::Direction::In {
                    "form.direction.in"
                } else {
                    "form.direction.out"
                },
            )
            .to_string()
        }),
    );
    opt(
        "detail.visitor",
        f.visitor.map(|b| {
            t(
                lang,
                if b {
                    "form.visitor.visitor"
                } else {
                    "form.visitor.resident"
                },
            )
            .to_string()
        }),
    );
    opt("form.unit", f.unit_code.clone());
    opt("form.visit_reason", f.visit_reason.clone());
    opt("form.arrival_date", f.arrival_date.map(|d| d.to_string()));
    opt("detail.residence", f.residence_code.clone());
    opt("form.address", f.address.as_deref().map(mask_address));
    opt("form.employer", f.employer.clone());
    opt("form.stay_days", f.stay_days.map(|d| d.to_string()));
    opt("form.purpose", f.purpose.clone());
    opt("confirm.checked_out", r.left_at.map(|t| local(t, tz)));
    v
}

/// A rendered page, never cached (pages show personal or live data); a template error is a 500.
pub(crate) fn html<T: askama::Template>(
    status: axum::http::StatusCode,
    t: T,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match t.render() {
        Ok(page) => (
            status,
            [(axum::http::header::CACHE_CONTROL, "no-store")],
            axum::response::Html(page),
        )
            .into_response(),
        Err(e) => crate::error::ApiError::Internal(e.to_string()).into_response(),
    }
}

/// A place of origin named in the reader's language: `Linhe District, Bayannur, Inner
/// Mongolia` in English, `内蒙古自治区 巴彦淖尔市 临河区` otherwise; an unknown code as itself.
pub(crate) fn origin_name(code: &str, lang: epigrid_core::Lang) -> String {
    let name = match lang {
        epigrid_core::Lang::En => divisions::full_name_en(code),
        _ => divisions::full_name(code),
    };
    name.unwrap_or_else(|| code.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_receipt_is_written_as_serde_writes_its_fields() {
        use chrono::{TimeZone, Utc};
        use epigrid_core::model::{Site, SiteKind};
        let tz = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
        let base = Utc.with_ymd_and_hms(2026, 11, 30, 23, 7, 5).unwrap();
        for (i, (name, kind)) in [
            ("110国道临河东检查站", SiteKind::Checkpoint),
            ("a \"quoted\" \\ name\twith\u{1}controls", SiteKind::Venue),
            ("", SiteKind::Gate),
        ]
        .into_iter()
        .enumerate()
        {
            let site = Site {
                id: uuid::Uuid::now_v7(),
                token: "t".into(),
                kind,
                name: name.into(),
                area_code: "150802".into(),
                area_path: "/150800/150802/".into(),
                active: true,
                default_stay_min: 10,
                created_at: base,
            };
            let r = crate::api::Submitted {
                id: uuid::Uuid::now_v7(),
                verification_code: "EV\"F".into(),
                at: base + chrono::Duration::nanoseconds(744_430_224 * i as i64),
                fever: i == 1,
            };
            let serde = serde_json::to_vec(&super::ReceiptOut {
                id: r.id,
                verification_code: &r.verification_code,
                at: r.at,
                at_local: super::local(r.at, tz),
                site_name: &site.name,
                kind: site.kind,
                fever: r.fever,
            })
            .unwrap();
            let body = super::receipt_body(&r, &site, tz);
            assert_eq!(
                String::from_utf8(body).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn a_time_is_written_as_chrono_writes_it() {
        use chrono::{TimeZone, Utc};
        let base = Utc.with_ymd_and_hms(2026, 11, 30, 13, 7, 5).unwrap();
        let times = [
            0u32,
            1,
            744_430_224,
            744_430_000,
            744_000_000,
            7_000,
            999_999_999,
        ]
        .into_iter()
        .map(|ns| base + chrono::Duration::nanoseconds(i64::from(ns)))
        .chain([
            Utc.with_ymd_and_hms(999, 1, 2, 3, 4, 5).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 12, 31, 23, 59, 59).unwrap(),
        ]);
        for t in times {
            let chrono = serde_json::to_string(&t).unwrap();
            assert_eq!(format!("\"{}\"", super::rfc3339(t)), chrono, "{t:?}");
        }
    }

    #[test]
    fn an_address_shows_its_street_not_its_door() {
        for (raw, shown) in [
            ("团结路88号3单元502室", "团结路***"),
            ("幸福里二十三号", "幸福里***"),
            ("团结小区五号楼三单元五零一", "团结小区***"),
            ("12 High Street", "***"),
            ("Flat 5, 12 High Street", "Flat***"),
            ("红星村张家大院", "红星村***"),
            ("幸福里叁拾号", "幸福里***"),
        ] {
            assert_eq!(super::mask_address(raw), shown, "{raw}");
        }
    }

    #[test]
    fn local_time_reads_like_strftime() {
        let tz = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
        for secs in [0, 1_700_000_000, 1_764_460_799, 4_102_444_800] {
            let t = chrono::DateTime::from_timestamp(secs, 0).unwrap();
            assert_eq!(
                super::local(t, tz),
                t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
            );
        }
    }
}
