//! The message catalogue: every user-visible string goes through [`t`].
//!
//! Catalogues are plain `key = value` files embedded at build time, one set per language
//! (`locales/<lang>/*.txt`). A key missing in a language falls back to Chinese, then to the key
//! itself, so a partly translated language (Mongolian) still renders a complete page.
//! `{name}` placeholders are filled by [`tf`].

use std::collections::HashMap;
use std::sync::OnceLock;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, Default,
)]
pub enum Lang {
    /// Simplified Chinese, the default.
    #[default]
    #[serde(rename = "zh-CN")]
    Zh,
    #[serde(rename = "en")]
    En,
    /// Mongolian in traditional script (ᠮᠣᠩᠭᠣᠯ), Inner Mongolia's second official language.
    #[serde(rename = "mn")]
    Mn,
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::Zh, Lang::En, Lang::Mn];

    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
            Lang::Mn => "mn",
        }
    }

    /// Parses a language tag such as `zh`, `zh-CN`, `en-GB`: a language pages and messages
    /// can be read in. Mongolian (`mn`) is not one: its catalogue holds only the poster's
    /// line beside Chinese, so a page asked for in Mongolian would be Chinese labelled as
    /// Mongolian; the reader's next language is taken instead.
    pub fn from_tag(tag: &str) -> Option<Lang> {
        let t = tag.trim().to_ascii_lowercase();
        let primary = t.split(['-', '_']).next().unwrap_or("");
        match primary {
            "zh" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// Picks the best language from an `Accept-Language` header (q-values honoured).
    pub fn from_accept_language(header: &str) -> Lang {
        let mut best: Option<(f32, Lang)> = None;
        for part in header.split(',') {
            let mut it = part.split(';');
            let tag = it.next().unwrap_or("");
            let q = it
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|v| v.parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            // q=0 means "not this one"
            if let Some(l) = Lang::from_tag(tag).filter(|_| q > 0.0) {
                if best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, l));
                }
            }
        }
        best.map(|(_, l)| l).unwrap_or_default()
    }
}

const ZH: &[&str] = &[
    include_str!("../locales/zh-CN/core.txt"),
    include_str!("../locales/zh-CN/web.txt"),
    include_str!("../locales/zh-CN/cli.txt"),
];
const EN: &[&str] = &[
    include_str!("../locales/en/core.txt"),
    include_str!("../locales/en/web.txt"),
    include_str!("../locales/en/cli.txt"),
];
const MN: &[&str] = &[include_str!("../locales/mn/web.txt")];

type Catalogue = HashMap<&'static str, &'static str>;

fn parse(files: &[&'static str]) -> Catalogue {
    let mut map = HashMap::new();
    for file in files {
        for line in file.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(" = ") {
                map.insert(k.trim(), v.trim());
            }
        }
    }
    map
}

fn catalogue(lang: Lang) -> &'static Catalogue {
    static C: OnceLock<[Catalogue; 3]> = OnceLock::new();
    let all = C.get_or_init(|| [parse(ZH), parse(EN), parse(MN)]);
    match lang {
        Lang::Zh => &all[0],
        Lang::En => &all[1],
        Lang::Mn => &all[2],
    }
}

/// The message for `key` in `lang`, falling back to Chinese; `None` when the catalogue has no
/// such key (for keys made from data, which may name nothing: [`t`] is for keys in the code).
pub fn lookup(lang: Lang, key: &str) -> Option<&'static str> {
    catalogue(lang)
        .get(key)
        .or_else(|| catalogue(Lang::Zh).get(key))
        .copied()
}

/// The message for `key` in `lang`, falling back to Chinese, then to the key itself.
pub fn t(lang: Lang, key: &str) -> &'static str {
    if let Some(v) = lookup(lang, key) {
        return v;
    }
    // Unknown keys are a programming error; show the key rather than nothing. Leaking a
    // static str keeps the signature simple and happens at most once per distinct key.
    static MISSING: OnceLock<std::sync::Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let m = MISSING.get_or_init(Default::default);
    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = g.get(key) {
        return v;
    }
    let leaked: &'static str = Box::leak(key.to_string().into_boxed_str());
    g.insert(key.to_string(), leaked);
    leaked
}

/// Like [`t`], with `{name}` placeholders replaced from `args`.
pub fn tf(lang: Lang, key: &str, args: &[(&str, &str)]) -> String {
    let mut s = t(lang, key).to_string();
    for (k, v) in args {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Every key of a language's own files (for the completeness test).
pub fn keys(lang: Lang) -> Vec<&'static str> {
    let mut v: Vec<_> = catalogue(lang).keys().copied().collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_prefers_highest_q() {
        assert_eq!(
            Lang::from_accept_language("en-US,en;q=0.9,zh-CN;q=0.8"),
            Lang::En
        );
        assert_eq!(
            Lang::from_accept_language("fr, zh;q=0.5, en;q=0.4"),
            Lang::Zh
        );
        assert_eq!(Lang::from_accept_language("fr"), Lang::Zh);
        assert_eq!(Lang::from_accept_language("mn-Mong"), Lang::Zh);
        assert_eq!(
            Lang::from_accept_language("mn,en;q=0.9"),
            Lang::En,
            "pages are not in Mongolian: the next language is"
        );
        assert_eq!(
            Lang::from_accept_language("en;q=0"),
            Lang::Zh,
            "q=0: not English"
        );
        assert_eq!(Lang::from_accept_language("en;q=0, mn;q=0.1"), Lang::Zh);
    }

    #[test]
    fn english_and_chinese_catalogues_have_the_same_keys() {
        let zh = keys(Lang::Zh);
        let en = keys(Lang::En);
        let missing_en: Vec<_> = zh.iter().filter(|k| !en.contains(k)).collect();
        let missing_zh: Vec<_> = en.iter().filter(|k| !zh.contains(k)).collect();
        assert!(
            missing_en.is_empty(),
            "keys without English: {missing_en:?}"
        );
        assert!(
            missing_zh.is_empty(),
            "keys without Chinese: {missing_zh:?}"
        );
    }

    #[test]
    fn placeholders_are_filled_and_unknown_keys_fall_back() {
        assert_eq!(t(Lang::Mn, "no.such.key"), "no.such.key");
        let s = tf(
            Lang::En,
            "err.temperature.range",
            &[("min", "34.0"), ("max", "43.0")],
        );
        assert!(s.contains("34.0") && s.contains("43.0"), "{s}");
    }
}
