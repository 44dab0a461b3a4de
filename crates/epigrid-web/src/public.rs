//! `/s/{token}`: the public self-registration forms (one per site kind) and confirmation
//! screens. Server-rendered, usable without JavaScript; a few lines of script add the cascading
//! origin picker and the opt-in "remember me on this phone" prefill (kept in localStorage only).

use std::collections::HashMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::Utc;
use epigrid_core::divisions;
use epigrid_core::i18n::{t, Lang};
use epigrid_core::model::{Channel, Direction, Registration, Site, SiteKind};
use epigrid_core::register::RegistrationInput;
use epigrid_core::validate::{DocType, FieldError, Symptom, Symptoms};
use uuid::Uuid;

use crate::api::submit;
use crate::auth::{MaybeStaff, Staff};
use crate::error::ApiError;
use crate::state::AppState;
use crate::view::{local, mask_name};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/s/{token}", get(form).post(form_submit))
        .route("/s/{token}/lang", post(form_in_language))
        .route("/s/{token}/r/{id}", get(confirmation))
        .route("/s/{token}/r/{id}/out", post(check_out))
}

/// Translator handed to templates: `{{ tr.t("key") }}`.
#[derive(Clone, Copy)]
pub struct Tr(pub Lang);
impl Tr {
    /// ` lang="zh-CN"` for a name in Chinese on a page that is not (so that a screen reader
    /// reads it as Chinese), else nothing.
    pub fn lang_of(&self, name: &str) -> &'static str {
        if self.0 != Lang::Zh && divisions::has_han(name) {
            " lang=\"zh-CN\""
        } else {
            ""
        }
    }
    pub fn t(&self, key: impl AsRef<str>) -> &'static str {
        t(self.0, key.as_ref())
    }
    pub fn code(&self) -> &'static str {
        self.0.code()
    }
    /// The same message in English and in Mongolian, for bilingual posters.
    pub fn t_mn(&self, key: &str) -> &'static str {
        t(Lang::Mn, key)
    }
    /// The second language of a bilingual sign: English, or Chinese on an English one.
    pub fn other(&self) -> Tr {
        Tr(if self.0 == Lang::En {
            Lang::Zh
        } else {
            Lang::En
        })
    }
}

/// One form control, described in Rust so one template renders every kind of form.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    /// text, tel, number, date, select, radio, checks, textarea, bool
    pub kind: &'static str,
    pub value: String,
    pub error: String,
    pub required: bool,
    pub attrs: &'static str,
    /// The latest value a date field takes (`max`), when it has one.
    pub max: String,
    pub hint: &'static str,
    pub options: Vec<(String, String, bool)>,
    /// Starts a new fieldset with this legend.
    pub section: &'static str,
}

impl Field {
    fn new(name: &'static str, label: &'static str, kind: &'static str) -> Field {
        Field {
            name,
            label,
            kind,
            value: String::new(),
            error: String::new(),
            required: false,
            attrs: "",
            max: String::new(),
            hint: "",
            options: Vec::new(),
            section: "",
        }
    }
    fn req(mut self) -> Field {
        self.required = true;
        self
    }
    fn attrs(mut self, a: &'static str) -> Field {
        self.attrs = a;
        self
    }
    fn hint(mut self, h: &'static str) -> Field {
        self.hint = h;
        self
    }
    fn section(mut self, s: &'static str) -> Field {
        self.section = s;
        self
    }
    fn options(mut self, o: Vec<(String, String)>) -> Field {
        self.options = o.into_iter().map(|(v, l)| (v, l, false)).collect();
        self
    }
}

#[derive(Template)]
#[template(path = "form.html")]
struct FormPage<'a> {
    tr: Tr,
    site: &'a Site,
    kind_label: &'static str,
    action: String,
    fields: Vec<Field>,
    /// The error summary: (the field's box to jump to, its label, the message); a message no
    /// field shows has no box and no label.
    errors: Vec<(String, String, String)>,
    staff_user: String,
    csrf: String,
    /// One value per form shown: sent twice (a double tap), it is stored once.
    nonce: String,
    origin_picker: bool,
    /// The origin the script's picker had chosen, sent back with a form that had errors.
    origin: String,
    /// How long a registration is kept, when it is not kept for good.
    retention: String,
    /// Nothing typed yet: only then does "remember me" fill the form in.
    fresh: bool,
    /// Staff mode was asked for (`?staff=1`) and is not given: why, as a catalogue key (not
    /// signed in, or not here), or empty.
    staff_note: &'static str,
    /// Where to sign in and come back to staff mode, when not signed in.
    staff_login: String,
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage<'a> {
    tr: Tr,
    site: &'a Site,
    reg: &'a Registration,
    name: String,
    time: String,
    at_ms: i64,
    temperature: String,
    /// What staff must see at a glance (a high temperature, symptoms, a high-risk area), in
    /// the page's language; the card turns red when there is any.
    flags: Vec<String>,
    /// The site's offset from UTC in minutes: the live clock shows the site's time, whatever
    /// the phone's own time zone.
    tz_minutes: i32,
    direction: &'static str,
    checkout: bool,
    checked_out: String,
    again: String,
    /// Entered by staff for someone without a phone: the screen is theirs, not to show.
    by_staff: bool,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub tr: Tr,
    pub title: &'static str,
    /// Already in the page's language.
    pub text: String,
    /// A link back to the staff overview: on staff pages, not on the public forms and links,
    /// whose users have no account.
    pub home: bool,
}

pub fn message(
    lang: Lang,
    status: StatusCode,
    title: &'static str,
    text: &'static str,
) -> Response {
    page_text(lang, status, title, t(lang, text), false)
}

/// Like [`message`], with text already in `lang`, and a link to the staff overview when
/// `home`.
pub fn page_text(
    lang: Lang,
    status: StatusCode,
    title: &'static str,
    text: &str,
    home: bool,
) -> Response {
    let page = MessagePage {
        tr: Tr(lang),
        title,
        text: text.to_string(),
        home,
    };
    (status, Html(page.render().unwrap_or_default())).into_response()
}

fn kind_label(kind: SiteKind) -> &'static str {
    match kind {
        SiteKind::Checkpoint => "site.kind.checkpoint",
        SiteKind::Gate => "site.kind.gate",
        SiteKind::Arrival => "site.kind.arrival",
        SiteKind::Venue => "site.kind.venue",
    }
}

fn tl(lang: Lang, k: &str) -> String {
    t(lang, k).to_string()
}

/// The origin picker: a province, then (typed, or picked with JavaScript) a city or county.
fn origin_fields(lang: Lang) -> [Field; 2] {
    let provinces = std::iter::once((String::new(), tl(lang, "form.choose")))
        .chain(divisions::provinces().iter().map(|p| {
            let name = match (lang, divisions::province_name_en(p.code)) {
                (Lang::En, Some(en)) => format!("{en} {}", p.name),
                _ => p.name.to_string(),
            };
            (p.code.to_string(), name)
        }))
        .collect();
    [
        Field::new("origin_province", "form.origin", "select")
            .req()
            .options(provinces),
        Field::new("origin_text", "form.origin_place", "text")
            .attrs("maxlength=\"30\"")
            .hint("form.origin_place.hint"),
    ]
}

/// Where an arrival may say they live, from the areas under the site (down to communities):
/// every community, named with its town, and every town without communities, when there are
/// few enough for one list on a phone; otherwise the towns, named with their county. Every
/// place under the site can be chosen (at worst the site's own area), and no two entries read
/// the same.
fn residence_options(areas: &[epigrid_core::area::Area]) -> Vec<(String, String)> {
    /// Communities one list holds and stays small (a page under 30 KB without script).
    const MAX_COMMUNITIES: usize = 120;
    named_leaves(areas, 3, MAX_COMMUNITIES, usize::MAX)
}

/// The buildings and units behind a gate: every unit, named with its building (and its
/// community when the gate serves several), and every building without units, when there are
/// few enough for one list on a phone; otherwise the buildings, named with their community
/// (at most 300: a gate is a compound's, not a county's).
fn unit_options(areas: &[epigrid_core::area::Area]) -> Vec<(String, String)> {
    named_leaves(areas, 5, 150, 300)
        .into_iter()
        // buildings and units only (15- and 18-digit codes): a gate's unit must be one
        .filter(|(code, _)| code.len() >= 15)
        .collect()
}

/// The areas at `level` or, when their children number at most `max_children`, those
/// children instead (with the areas at `level` that have none); each named with its parent
/// when siblings of several parents are listed. At most `max` entries; when `level` itself
/// is absent, the deepest areas there are.
fn named_leaves(
    areas: &[epigrid_core::area::Area],
    level: u8,
    max_children: usize,
    max: usize,
) -> Vec<(String, String)> {
    let name_of = |code: &Option<String>| {
        areas
            .iter()
            .find(|p| Some(&p.code) == code.as_ref())
            .map(|p| p.name.as_str())
    };
    let at = |l: u8| areas.iter().filter(move |a| a.level == l);
    let level = if at(level).next().is_none() {
        match areas.iter().map(|a| a.level).filter(|l| *l <= level).max() {
            Some(l) => l,
            None => return Vec::new(),
        }
    } else {
        level
    };
    let children = at(level + 1).count();
    let chosen: Vec<&epigrid_core::area::Area> = if children > 0 && children <= max_children {
        at(level)
            .flat_map(|parent| {
                let kids: Vec<_> = at(level + 1)
                    .filter(|c| c.parent_code.as_deref() == Some(parent.code.as_str()))
                    .collect();
                if kids.is_empty() {
                    vec![parent]
                } else {
                    kids
                }
            })
            .collect()
    } else {
        at(level).collect()
    };
    let parent_of = |a: &epigrid_core::area::Area| {
        areas
            .iter()
            .find(|p| Some(&p.code) == a.parent_code.as_ref())
    };
    // how many distinct (parents, grandparents) the listed areas of a level have
    let spread = |l: u8| {
        let listed: Vec<_> = chosen.iter().filter(|a| a.level == l).collect();
        let count = |f: &dyn Fn(&epigrid_core::area::Area) -> Option<String>| {
            listed
                .iter()
                .filter_map(|a| f(a))
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        (
            count(&|a| a.parent_code.clone()),
            count(&|a| parent_of(a).and_then(|p| p.parent_code.clone())),
        )
    };
    let spreads = [spread(level), spread(level + 1)];
    chosen
        .into_iter()
        .take(max)
        .map(|a| {
            let (parents, grandparents) = spreads[usize::from(a.level != level)];
            let mut label = a.name.clone();
            if parents > 1 {
                if let Some(p) = parent_of(a) {
                    label = format!("{} · {label}", p.name);
                    if grandparents > 1 {
                        if let Some(g) = name_of(&p.parent_code) {
                            label = format!("{g} · {label}");
                        }
                    }
                }
            }
            (a.code.clone(), label)
        })
        .collect()
}

/// The fields of a site's form, filled with `values` and `errors`.
async fn build_fields(
    st: &AppState,
    site: &Site,
    lang: Lang,
    values: &[(String, String)],
    errors: &[FieldError],
    staff: bool,
) -> Vec<Field> {
    let yes_no = vec![
        ("false".to_string(), tl(lang, "form.no")),
        ("true".to_string(), tl(lang, "form.yes")),
    ];
    let doc_types: Vec<(String, String)> = DocType::ALL
        .iter()
        .map(|d| (d.as_str().to_string(), tl(lang, d.label_key())))
        .collect();
    let mut symptom_opts: Vec<(String, String)> = Symptom::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), tl(lang, s.label_key())))
        .collect();
    symptom_opts.push(("none".into(), tl(lang, "symptom.none")));

    let mut f = vec![Field::new("name", "form.name", "text")
        .req()
        .attrs("autocomplete=\"name\" maxlength=\"40\"")
        .section("form.section.identity")];
    let doc_required = site.kind != SiteKind::Gate;
    f.push(Field::new("id_type", "form.id_type", "select").options(doc_types));
    let mut idn = Field::new("id_number", "form.id_number", "text")
        .attrs("autocomplete=\"off\" autocapitalize=\"characters\" maxlength=\"30\" spellcheck=\"false\"")
        .hint(if doc_required { "form.id_number.hint" } else { "form.id_number.optional" });
    idn.required = doc_required;
    f.push(idn);
    f.push(Field {
        // staff may register someone without a phone
        required: !staff,
        ..Field::new("phone", "form.phone", "tel")
            .attrs("autocomplete=\"tel\" inputmode=\"tel\" maxlength=\"20\"")
    });

    match site.kind {
        SiteKind::Checkpoint => {
            f.push(
                Field::new("plate", "form.plate", "text")
                    .attrs("autocapitalize=\"characters\" maxlength=\"12\"")
                    .hint("form.plate.hint")
                    .section("form.section.trip"),
            );
            f.push(
                Field::new("companions", "form.companions", "text")
                    .attrs("inputmode=\"numeric\" maxlength=\"4\" autocomplete=\"off\"")
                    .hint("form.companions.hint"),
            );
            for i in 1..=3 {
                let mut n = Field::new(
                    ["companion_name_1", "companion_name_2", "companion_name_3"][i - 1],
                    "form.companion_name",
                    "text",
                )
                .attrs("maxlength=\"40\" autocomplete=\"off\"");
                n.hint = "";
                f.push(n);
                f.push(
                    Field::new(
                        ["companion_id_1", "companion_id_2", "companion_id_3"][i - 1],
                        "form.companion_id",
                        "text",
                    )
                    .attrs("autocomplete=\"off\" maxlength=\"30\""),
                );
            }
            f.extend(origin_fields(lang));
            f.push(
                Field::new("destination", "form.destination", "text")
                    .req()
                    .attrs("maxlength=\"100\""),
            );
            f.push(
                Field::new("high_risk_travel", "form.high_risk_travel", "radio")
                    .req()
                    .options(yes_no.clone()),
            );
        }
        SiteKind::Gate => {
            f.push(
                Field::new("direction", "form.direction", "radio")
                    .req()
                    .options(vec![
                        (Direction::In.as_str().into(), tl(lang, "form.direction.in")),
                        (
                            Direction::Out.as_str().into(),
                            tl(lang, "form.direction.out"),
                        ),
                    ])
                    .section("form.section.visit"),
            );
            f.push(Field::new("visitor", "form.visitor", "radio").options(vec![
                ("false".into(), tl(lang, "form.visitor.resident")),
                ("true".into(), tl(lang, "form.visitor.visitor")),
            ]));
            let units = st
                .store
                .areas_in(&epigrid_core::area::Scope::new(site.area_path.clone()), 6)
                .await
                .unwrap_or_default();
            let opts: Vec<(String, String)> =
                std::iter::once((String::new(), tl(lang, "form.choose")))
                    .chain(unit_options(&units))
                    .collect();
            f.push(Field::new("unit_code", "form.unit", "select").options(opts));
            f.push(
                Field::new("visit_reason", "form.visit_reason", "text")
                    .attrs("maxlength=\"100\"")
                    .hint("form.visit_reason.hint"),
            );
        }
        SiteKind::Arrival => {
            f.push(Field {
                // no arrival after today (the server refuses one), so the picker offers none
                max: Utc::now()
                    .with_timezone(&st.cfg.tz)
                    .date_naive()
                    .to_string(),
                ..Field::new("arrival_date", "form.arrival_date", "date")
                    .req()
                    .section("form.section.arrival")
            });
            f.extend(origin_fields(lang));
            let scope_root = site.area_path.clone();
            let areas = st
                .store
                .areas_in(&epigrid_core::area::Scope::new(scope_root), 4)
                .await
                .unwrap_or_default();
            let opts = std::iter::once((String::new(), tl(lang, "form.choose")))
                .chain(residence_options(&areas))
                .collect();
            f.push(
                Field::new("residence_code", "form.residence", "select")
                    .req()
                    .options(opts),
            );
            f.push(
                Field::new("address", "form.address", "text")
                    .req()
                    .attrs("maxlength=\"200\" autocomplete=\"off\""),
            );
            f.push(
                Field::new("employer", "form.employer", "text")
                    .attrs("maxlength=\"100\" autocomplete=\"organization\""),
            );
            f.push(
                Field::new("stay_days", "form.stay_days", "text")
                    .attrs("inputmode=\"numeric\" maxlength=\"6\" autocomplete=\"off\""),
            );
            f.push(
                Field::new("purpose", "form.purpose", "text")
                    .attrs("maxlength=\"100\"")
                    .hint("form.purpose.hint"),
            );
            f.push(
                Field::new("high_risk_travel", "form.high_risk_travel", "radio")
                    .options(yes_no.clone()),
            );
        }
        SiteKind::Venue => {
            f.push(
                Field::new("high_risk_travel", "form.high_risk_travel", "radio")
                    .options(yes_no.clone())
                    .section("form.section.trip"),
            );
        }
    }
    // text, not number: a browser sends a number field it cannot read as empty, and the
    // server reads "36,5", "３６．５" and "36.5℃" on purpose
    let mut temp = Field::new("temperature", "form.temperature", "text")
        .attrs("inputmode=\"decimal\" maxlength=\"8\" autocomplete=\"off\"")
        .hint("form.temperature.hint")
        .section("form.section.health");
    temp.required = matches!(site.kind, SiteKind::Checkpoint | SiteKind::Gate);
    f.push(temp);
    f.push(
        Field::new("symptoms", "form.symptoms", "checks")
            .req()
            .options(symptom_opts),
    );

    // Fill values and errors.
    for field in &mut f {
        let mut vals = values
            .iter()
            .filter(|(k, _)| k == field.name)
            .map(|(_, v)| v.as_str());
        match field.kind {
            "checks" => {
                let chosen: Vec<&str> = vals.collect();
                for o in &mut field.options {
                    o.2 = chosen.contains(&o.0.as_str());
                }
            }
            "select" | "radio" => {
                let v = vals.next().unwrap_or("");
                // a resident unless they say otherwise; health and travel questions are
                // answered, never assumed
                let v = if v.is_empty() && field.name == "visitor" {
                    "false"
                } else {
                    v
                };
                if field.name == "id_type" && v.is_empty() {
                    if let Some(o) = field.options.first_mut() {
                        o.2 = true;
                    }
                }
                for o in &mut field.options {
                    if o.0 == v {
                        o.2 = true;
                    }
                }
            }
            _ => field.value = vals.next().unwrap_or("").to_string(),
        }
        if let Some(e) = errors.iter().find(|e| shows_error_of(field.name, &e.field)) {
            if field.name != "origin_text" {
                // a choice left empty is asked to be chosen, not "filled in"
                field.error = if e.key == "err.required"
                    && matches!(field.kind, "radio" | "checks" | "select")
                {
                    t(lang, "err.choose").to_string()
                } else {
                    e.message(lang)
                };
            }
        }
    }
    // companion field errors arrive as companions[i].name / .id_number, i counting only the
    // rows that were filled in
    let rows = epigrid_core::register::form_companions(values);
    for e in errors {
        if let Some(rest) = e.field.strip_prefix("companions[") {
            let (i, what) = rest.split_once("].").unwrap_or(("", ""));
            let Some(&(idx, _)) = i.parse::<usize>().ok().and_then(|i| rows.get(i)) else {
                continue;
            };
            let name = match what {
                "name" => format!("companion_name_{idx}"),
                _ => format!("companion_id_{idx}"),
            };
            if let Some(field) = f.iter_mut().find(|x| x.name == name) {
                field.error = e.message(lang);
            }
        }
    }
    f
}

/// Renders a site's form; `staff` (when given) turns it into a staff entry on someone's behalf.
/// `staff_note`: staff mode was asked for and is not given, and why (see [`FormPage`]).
async fn render_form(
    st: &AppState,
    site: &Site,
    lang: Lang,
    staff: Option<&Staff>,
    values: &[(String, String)],
    errors: &[FieldError],
    staff_note: &'static str,
) -> Response {
    let fields = build_fields(st, site, lang, values, errors, staff.is_some()).await;
    let tr = Tr(lang);
    let mut summary: Vec<(String, String, String)> = fields
        .iter()
        .filter(|f| !f.error.is_empty())
        .map(|f| {
            // the label and what joins it to the message: a colon of the page's language,
            // none after a question
            let label = tr.t(f.label);
            let joint = if label.ends_with(['?', '？']) {
                " "
            } else if lang == Lang::Zh {
                "："
            } else {
                ": "
            };
            (
                f.name.to_string(),
                format!("{label}{joint}"),
                f.error.clone(),
            )
        })
        .collect();
    for e in errors {
        let m = e.message(lang);
        // said at its field already (perhaps in other words, as a choice left empty is)
        let at_field = fields
            .iter()
            .any(|f| !f.error.is_empty() && shows_error_of(f.name, &e.field));
        if !at_field && !summary.iter().any(|(_, _, shown)| *shown == m) {
            summary.push((String::new(), String::new(), m));
        }
    }
    let page = FormPage {
        tr: Tr(lang),
        site,
        kind_label: kind_label(site.kind),
        action: format!("/s/{}", site.token),
        fields,
        errors: summary,
        staff_user: staff.map(|s| s.user.username.clone()).unwrap_or_default(),
        csrf: staff.map(|s| s.session.csrf.clone()).unwrap_or_default(),
        nonce: epigrid_core::vault::random_token(12),
        fresh: values.is_empty(),
        origin_picker: matches!(site.kind, SiteKind::Checkpoint | SiteKind::Arrival),
        origin: values
            .iter()
            .find(|(k, _)| k == "origin")
            .map(|(_, v)| v.trim())
            .filter(|v| matches!(v.len(), 2 | 4 | 6) && v.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or_default()
            .to_string(),
        retention: match st.cfg.retention_days {
            0 => String::new(),
            days => epigrid_core::i18n::tf(lang, "form.retention", &[("days", &days.to_string())]),
        },
        staff_note,
        staff_login: if staff_note == "form.staff_entry.login" {
            format!(
                "/login?next={}",
                crate::error::encode(&format!("/s/{}?staff=1", site.token))
            )
        } else {
            String::new()
        },
    };
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    crate::view::html(status, page)
}

async fn form(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    form_with(&st, lang, &staff, &token, &q, &[]).await
}

/// `POST /s/{token}/lang?lang=…`: the form in another language with what was typed so far
/// (the language buttons send the form here); nothing is stored.
async fn form_in_language(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let pairs: Vec<(String, String)> = url_decode_pairs(&body)
        .into_iter()
        .filter(|(k, _)| k != "nonce" && k != "csrf")
        .collect();
    form_with(&st, lang, &staff, &token, &q, &pairs).await
}

/// Whether the form field `name` shows an error reported for `field`: the origin's error
/// shows at the province picker (the place typed as text is one input with it).
fn shows_error_of(name: &str, field: &str) -> bool {
    name == field || (field == "origin" && matches!(name, "origin_province" | "origin_text"))
}

/// The active site a form link names; else the page saying there is none (404) or that it
/// no longer takes registrations (410).
async fn open_site(
    st: &AppState,
    token: &str,
    lang: Lang,
) -> Result<std::sync::Arc<Site>, Box<Response>> {
    let site = match st.site_by_token(token).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Box::new(unknown_site(lang))),
        Err(e) => return Err(Box::new(ApiError::from(e).into_response())),
    };
    if !site.active {
        return Err(Box::new(inactive_site(lang)));
    }
    Ok(site)
}

/// The page for a form link that names no site (404).
fn unknown_site(lang: Lang) -> Response {
    message(
        lang,
        StatusCode::NOT_FOUND,
        "public.unknown_site.title",
        "public.unknown_site.text",
    )
}

/// The page for a site that no longer takes registrations (410).
fn inactive_site(lang: Lang) -> Response {
    message(
        lang,
        StatusCode::GONE,
        "public.inactive.title",
        "public.inactive.text",
    )
}

async fn form_with(
    st: &AppState,
    lang: Lang,
    staff: &MaybeStaff,
    token: &str,
    q: &HashMap<String, String>,
    typed: &[(String, String)],
) -> Response {
    let site = match open_site(st, token, lang).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let staff_mode = q.get("staff").is_some_and(|v| v == "1");
    // staff mode only at a site in the staff member's own area (elsewhere it would end in a 403)
    let signed_in = staff.0.as_ref().filter(|s| staff_mode && s.by_cookie);
    let acting = signed_in
        .filter(|s| s.role().registers_for_others() && s.scope().contains(&site.area_path));
    let note = match (staff_mode, signed_in, acting) {
        (true, None, _) => "form.staff_entry.login",
        (true, Some(_), None) => "form.staff_entry.refused",
        _ => "",
    };
    render_form(st, &site, lang, acting, typed, &[], note).await
}

/// Resolves the no-JavaScript origin fields (a province plus a typed place name) to a code.
fn resolve_origin(pairs: &mut Vec<(String, String)>) -> Option<FieldError> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, v)| n == k && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
    };
    // The picker's choice stands when it lies in the chosen province and no place was typed
    // (a form sent back keeps it; without the script, a changed province or a typed place
    // must win over it).
    if let Some(o) = get("origin") {
        let fits = get("origin_province").is_none_or(|p| o.starts_with(p.as_str()));
        if fits && get("origin_text").is_none() {
            return None;
        }
        pairs.retain(|(k, _)| k != "origin");
    }
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, v)| n == k && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
    };
    let province = get("origin_province")?;
    // Taiwan, Hong Kong, Macao and abroad have no cities in the table: the region is the
    // origin, whatever place is typed with it
    let beyond = divisions::ORIGINS_BEYOND
        .iter()
        .any(|(code, _)| *code == province);
    let code = match get("origin_text") {
        _ if beyond => province,
        None => province,
        Some(text) => match divisions::find_place(&province, &text) {
            Ok(d) => d.code.to_string(),
            Err(divisions::PlaceError::NotFound) => {
                return Some(FieldError::new("origin", "err.origin.not_found"))
            }
            Err(divisions::PlaceError::Ambiguous) => {
                return Some(FieldError::new("origin", "err.origin.ambiguous"))
            }
        },
    };
    pairs.push(("origin".into(), code));
    None
}

async fn form_submit(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    staff: MaybeStaff,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let site = match open_site(&st, &token, lang).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut pairs: Vec<(String, String)> = url_decode_pairs(&body);
    // Staff entering for someone else must prove the form came from their session.
    let staff_entry = pairs.iter().any(|(k, v)| k == "staff_entry" && v == "1");
    let acting = if staff_entry {
        staff.0.as_ref().filter(|s| s.by_cookie)
    } else {
        None
    };
    if let Some(s) = acting {
        if s.check_csrf(crate::staff::csrf_of(&pairs)).is_err() {
            return crate::staff::stale_form(lang);
        }
    }
    if staff_entry && acting.is_none() {
        // A staff entry whose session has ended (a shift outlasts it) is not quietly taken
        // as the person's own registration: the form comes back as typed, saying so.
        let mut values = pairs;
        values.retain(|(k, _)| k != "staff_entry" && k != "csrf");
        let err = FieldError::new("staff_entry", "err.staff.session_ended");
        let res = render_form(&st, &site, lang, None, &values, &[err], "").await;
        let (mut parts, body) = res.into_parts();
        parts.status = StatusCode::UNAUTHORIZED;
        return Response::from_parts(parts, body);
    }
    let repeated = epigrid_core::register::repeated_fields(&pairs);
    let origin_err = resolve_origin(&mut pairs);
    let input = RegistrationInput::from_pairs(&pairs);
    if origin_err.is_some() || !repeated.is_empty() {
        // Report the origin together with every other bad field, and store nothing.
        let ctx = epigrid_core::register::Context {
            site: &site,
            channel: if acting.is_some() {
                Channel::Staff
            } else {
                Channel::SelfService
            },
            by_user: acting.map(|s| s.user.id),
            now: Utc::now(),
            tz: st.cfg.tz,
        };
        let mut errs = epigrid_core::register::validate(&input, &ctx)
            .err()
            .unwrap_or_default();
        if let Some(oe) = origin_err {
            errs.retain(|x| x.field != "origin");
            errs.push(oe);
        }
        // a repeated field's error stands for it (not what its last value said)
        errs.retain(|x| !repeated.iter().any(|r| r.field == x.field));
        errs.extend(repeated);
        return render_form(&st, &site, lang, acting, &pairs, &errs, "").await;
    }
    // The same form sent again (a double tap, a reload): its first confirmation. Only the
    // same answers count as the same form: a form brought back (the Back button) and filled
    // in for someone else is a registration of its own. The answers are remembered as a
    // keyed hash, for ten minutes, in memory only.
    let nonce = form_value(&pairs, "nonce")
        .filter(|n| (8..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|n| {
            let mut answers: Vec<String> = pairs
                .iter()
                .filter(|(k, _)| k != "nonce" && k != "csrf")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            answers.sort();
            let digest = st.vault.blind_index("form.answers", &answers.join("\u{0}"));
            format!("{n}.{}", hex::encode(digest))
        });
    let mut claimed = None;
    if let Some(n) = nonce {
        for _ in 0..40 {
            match st.claim_form(&n) {
                crate::state::FormClaim::New => {
                    claimed = Some(n);
                    break;
                }
                crate::state::FormClaim::Stored(id) => {
                    return Redirect::to(&format!("/s/{}/r/{id}", site.token)).into_response()
                }
                crate::state::FormClaim::Busy => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
            }
        }
    }
    let stored = submit(&st, &site, &input, acting).await;
    if let Some(n) = &claimed {
        st.settle_form(n, stored.as_ref().ok().map(|r| r.id));
    }
    match stored {
        Ok(reg) => Redirect::to(&format!("/s/{}/r/{}", site.token, reg.id)).into_response(),
        Err(ApiError::Invalid(errs)) => {
            render_form(&st, &site, lang, acting, &pairs, &errs, "").await
        }
        Err(ApiError::Gone(_)) => inactive_site(lang),
        Err(ApiError::Forbidden) => crate::staff::forbidden(lang),
        // the database out of reach: the form comes back as typed, saying nothing was saved
        Err(e @ ApiError::Unavailable(_)) => {
            let status = e.status();
            let _ = e.into_response(); // logged there
            let said = [FieldError::new("form", "err.unavailable")];
            let mut r = render_form(&st, &site, lang, acting, &pairs, &said, "").await;
            *r.status_mut() = status;
            r
        }
        Err(e) => e.into_response(),
    }
}

/// The first value of field `k` in decoded form pairs.
pub fn form_value(pairs: &[(String, String)], k: &str) -> Option<String> {
    pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

/// `application/x-www-form-urlencoded` decoding (keys may repeat).
pub fn url_decode_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn dec(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let h = std::str::from_utf8(&s[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match h {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut it = p.splitn(2, |b| *b == b'=');
            let k = it.next().unwrap_or_default();
            let v = it.next().unwrap_or_default();
            (dec(k), dec(v))
        })
        .collect()
}

async fn load_reg(
    st: &AppState,
    token: &str,
    id: &str,
) -> Result<(std::sync::Arc<Site>, Registration), ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    let site = match st.site_by_token(token).await? {
        Some(site) => site,
        // The site's link was changed since (a leaked poster): new registrations need the
        // new one, but a visitor's own confirmation and check-out, reached by its
        // unguessable id, keep working for the day.
        None => {
            let all = epigrid_core::area::Scope::all();
            let reg = st
                .store
                .registration(id, &all)
                .await?
                .filter(|r| Utc::now() - r.at < chrono::Duration::hours(24))
                .ok_or(ApiError::NotFound)?;
            let site = st
                .store
                .site(reg.site_id, &all)
                .await?
                .ok_or(ApiError::NotFound)?;
            return Ok((std::sync::Arc::new(site), reg));
        }
    };
    let reg = st
        .store
        .registration(id, &epigrid_core::area::Scope::new(site.area_path.clone()))
        .await?
        .filter(|r| r.site_id == site.id)
        .ok_or(ApiError::NotFound)?;
    Ok((site, reg))
}

/// A visitor's own registration, for its confirmation screen and the check-out on it; else
/// the page saying there is none, or that its 12 hours are over (`expired_text`): the
/// confirmation is for showing at the gate right away, not a lasting pass.
async fn visitors_reg(
    st: &AppState,
    lang: Lang,
    token: &str,
    id: &str,
    expired_text: &'static str,
) -> Result<(std::sync::Arc<Site>, Registration), Response> {
    let (site, reg) = match load_reg(st, token, id).await {
        Ok(x) => x,
        Err(ApiError::NotFound) => return Err(unknown_site(lang)),
        Err(e) => return Err(e.into_response()),
    };
    if Utc::now() - reg.at > chrono::Duration::hours(12) {
        return Err(message(
            lang,
            StatusCode::GONE,
            "public.expired.title",
            expired_text,
        ));
    }
    Ok((site, reg))
}

async fn confirmation(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    Path((token, id)): Path<(String, String)>,
) -> Response {
    let (site, reg) = match visitors_reg(&st, lang, &token, &id, "public.expired.text").await {
        Ok(x) => x,
        Err(page) => return page,
    };
    let mut flags = Vec::new();
    if let Some(t) = reg.fields.temperature.filter(|t| *t >= 373) {
        flags.push(epigrid_core::i18n::tf(
            lang,
            "confirm.flag.temperature",
            &[("t", &format!("{:.1}", f64::from(t) / 10.0))],
        ));
    }
    if !Symptoms::from_bits(reg.fields.symptoms).is_empty() {
        flags.push(epigrid_core::i18n::tf(
            lang,
            "confirm.flag.symptoms",
            &[(
                "list",
                &crate::view::symptom_labels(reg.fields.symptoms, lang),
            )],
        ));
    }
    if reg.fields.high_risk_travel == Some(true) {
        flags.push(t(lang, "confirm.flag.high_risk").to_string());
    }
    let page = ConfirmPage {
        tr: Tr(lang),
        site: &site,
        reg: &reg,
        name: mask_name(&reg.name),
        time: local(reg.at, st.cfg.tz),
        at_ms: reg.at.timestamp_millis(),
        temperature: crate::view::temperature_celsius(reg.fields.temperature).unwrap_or_default(),
        flags,
        tz_minutes: st.cfg.tz.local_minus_utc() / 60,
        direction: match reg.fields.direction {
            Some(Direction::In) => "form.direction.in",
            Some(Direction::Out) => "form.direction.out",
            None => "",
        },
        checkout: site.kind == SiteKind::Venue && reg.left_at.is_none(),
        checked_out: reg.left_at.map(|t| local(t, st.cfg.tz)).unwrap_or_default(),
        by_staff: reg.channel == Channel::Staff,
        // staff entering people one after another stay in staff mode
        again: match reg.channel {
            Channel::Staff => format!("/s/{}?staff=1", site.token),
            // someone else's form: not filled with this phone's owner's details
            _ => format!("/s/{}?another=1", site.token),
        },
    };
    crate::view::html(StatusCode::OK, page)
}

async fn check_out(
    State(st): State<AppState>,
    Extension(lang): Extension<Lang>,
    Path((token, id)): Path<(String, String)>,
) -> Response {
    // as long as its confirmation lasts; after that staff record the leaving
    let (site, reg) =
        match visitors_reg(&st, lang, &token, &id, "public.checkout_expired.text").await {
            Ok(x) => x,
            Err(page) => return page,
        };
    if site.kind == SiteKind::Venue {
        if let Err(e) = st.store.check_out(reg.id, site.id, Utc::now()).await {
            return ApiError::from(e).into_response();
        }
        st.trace_changed();
    }
    Redirect::to(&format!("/s/{}/r/{}", site.token, reg.id)).into_response()
}

#[cfg(test)]
mod tests {
    use super::residence_options;
    use epigrid_core::area::Area;

    /// A county (or city, with `counties` > 1) of `towns` towns with `per_town` communities
    /// each; every town has a 团结村, as real ones do.
    fn areas(counties: usize, towns: usize, per_town: usize) -> Vec<Area> {
        let area = |code: String, name: String, level, parent: Option<&str>| Area {
            path: format!("/{code}/"),
            parent_code: parent.map(String::from),
            code,
            name,
            level,
        };
        let mut out = vec![area("150800".into(), "巴彦淖尔市".into(), 1, None)];
        for c in 0..counties {
            let county = format!("1508{:02}", c + 2);
            out.push(area(county.clone(), format!("县{c}"), 2, Some("150800")));
            for t in 0..towns {
                let town = format!("{county}{:03}", t + 1);
                out.push(area(town.clone(), format!("镇{t}"), 3, Some(&county)));
                for k in 0..per_town {
                    let name = if k == 0 {
                        "团结村".into()
                    } else {
                        format!("村{k}")
                    };
                    out.push(area(format!("{town}{:03}", k + 1), name, 4, Some(&town)));
                }
            }
        }
        out
    }

    fn distinct(opts: &[(String, String)]) -> bool {
        let labels: std::collections::HashSet<_> = opts.iter().map(|o| &o.1).collect();
        labels.len() == opts.len()
    }

    /// `communities` communities of `buildings` buildings of 6 units each (every community
    /// has a 1号楼, every building a 1单元).
    fn compound(communities: usize, buildings: usize) -> Vec<Area> {
        let mut out = Vec::new();
        let area = |code: String, name: String, level, parent: &str| Area {
            path: format!("/{code}/"),
            parent_code: Some(parent.to_string()),
            code,
            name,
            level,
        };
        for c in 0..communities {
            let community = format!("150802001{:03}", c + 1);
            out.push(area(community.clone(), format!("社区{c}"), 4, "150802001"));
            for b in 0..buildings {
                let building = format!("{community}{:03}", b + 1);
                out.push(area(
                    building.clone(),
                    format!("{}号楼", b + 1),
                    5,
                    &community,
                ));
                for u in 0..6 {
                    let unit = format!("{building}{:03}", u + 1);
                    out.push(area(unit, format!("{}单元", u + 1), 6, &building));
                }
            }
        }
        out
    }

    #[test]
    fn a_gate_lists_units_or_buildings_each_once() {
        let small = super::unit_options(&compound(1, 10));
        assert_eq!(small.len(), 60);
        assert!(distinct(&small), "{small:?}");
        assert!(small.iter().any(|o| o.1 == "3号楼 · 2单元"), "{small:?}");
        let town = super::unit_options(&compound(5, 20));
        assert_eq!(town.len(), 100, "the buildings, every one");
        assert!(distinct(&town), "{town:?}");
        assert!(town.iter().any(|o| o.1 == "社区4 · 20号楼"), "{town:?}");
    }

    #[test]
    fn every_place_can_be_chosen_whatever_levels_were_imported() {
        // towns only: the towns
        let towns_only = super::residence_options(&areas(1, 4, 0));
        assert_eq!(towns_only.len(), 4, "{towns_only:?}");
        // one town with communities, one without: its communities and the other town
        let mut mixed = areas(1, 2, 3);
        mixed.retain(|a| !a.code.starts_with("150802002") || a.level < 4);
        let opts = super::residence_options(&mixed);
        assert_eq!(opts.len(), 4, "{opts:?}");
        assert!(opts.iter().any(|o| o.0 == "150802002"), "{opts:?}");
        // a county alone: itself
        let county = super::residence_options(&areas(1, 0, 0));
        assert_eq!(county.len(), 1, "{county:?}");
        // a gate over two small communities: units named with building and community
        let two = super::unit_options(&compound(2, 5));
        assert_eq!(two.len(), 60);
        assert!(distinct(&two), "{two:?}");
        assert!(
            two.iter().any(|o| o.1 == "社区1 · 3号楼 · 2单元"),
            "{two:?}"
        );
    }

    #[test]
    fn a_small_area_lists_its_communities_with_their_towns() {
        let opts = residence_options(&areas(1, 3, 10));
        assert_eq!(opts.len(), 30);
        assert!(distinct(&opts), "{opts:?}");
        assert!(opts.iter().any(|o| o.1 == "镇1 · 团结村"), "{opts:?}");
    }

    #[test]
    fn a_large_area_lists_every_town_with_its_county() {
        let opts = residence_options(&areas(3, 10, 20));
        assert_eq!(opts.len(), 30, "every town, none cut off");
        assert!(distinct(&opts), "{opts:?}");
        assert!(opts.iter().all(|o| o.0.len() == 9));
        assert!(opts.iter().any(|o| o.1 == "县2 · 镇9"), "{opts:?}");
    }
}
