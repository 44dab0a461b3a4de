//! The six-level area hierarchy and the scope (subtree) every staff query is filtered by.

use serde::{Deserialize, Serialize};

/// Level of an area in the hierarchy: 1 city … 6 unit.
pub const LEVEL_NAMES: [&str; 6] = [
    "level.city",
    "level.county",
    "level.town",
    "level.community",
    "level.building",
    "level.unit",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Area {
    pub code: String,
    pub name: String,
    /// 1 = city (市/盟), 2 = county (区/县/旗), 3 = town (街道/镇/苏木), 4 = community
    /// (社区/村/嘎查), 5 = building (楼栋/组), 6 = unit (单元/户).
    pub level: u8,
    pub parent_code: Option<String>,
    /// Materialised path: `/150800/150802/150802001/`, always ending in `/`.
    pub path: String,
}

impl Area {
    /// Builds an area under `parent` (None for a root city), computing its path.
    pub fn new(code: &str, name: &str, level: u8, parent: Option<&Area>) -> Area {
        let path = match parent {
            Some(p) => format!("{}{}/", p.path, code),
            None => format!("/{code}/"),
        };
        Area {
            code: code.to_string(),
            name: name.to_string(),
            level,
            parent_code: parent.map(|p| p.code.clone()),
            path,
        }
    }

    /// The codes of this area and its ancestors, root first.
    pub fn lineage(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// The expected code length for a level, and whether `code` fits under `parent_code`.
pub fn code_fits(level: u8, code: &str, parent_code: Option<&str>) -> bool {
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let len_ok = match level {
        1 => code.len() == 6 && code.ends_with("00"),
        2 => code.len() == 6 && !code.ends_with("00"),
        3 => code.len() == 9,
        4 => code.len() == 12,
        5 => code.len() == 15,
        6 => code.len() == 18,
        _ => false,
    };
    if !len_ok {
        return false;
    }
    match (level, parent_code) {
        (1, None) => true,
        (1, Some(_)) => false,
        (_, None) => false,
        // counties share the city's first four digits
        // (bytes: a parent code from a file need not be digits, nor split at a character)
        (2, Some(p)) => p.len() == 6 && code.as_bytes()[..4] == p.as_bytes()[..4],
        (_, Some(p)) => code.starts_with(p),
    }
}

/// The subtree a user may see: every area whose path starts with `path`.
///
/// Stores filter with a range on the `path` column (`path >= lo AND path < hi`) so an index is
/// used on both SQLite and PostgreSQL (with `COLLATE "C"`), instead of a `LIKE` that is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub path: String,
}

impl Scope {
    pub fn new(path: impl Into<String>) -> Scope {
        Scope { path: path.into() }
    }

    /// A scope that contains everything (used by the CLI and internal jobs).
    pub fn all() -> Scope {
        Scope { path: "/".into() }
    }

    pub fn contains(&self, path: &str) -> bool {
        path.starts_with(&self.path)
    }

    /// Half-open bounds `[lo, hi)` of the paths in this scope: paths end in '/', and the byte
    /// after '/' is '0', so `hi` is the path with its final '/' replaced by '0'.
    pub fn bounds(&self) -> (String, String) {
        let lo = self.path.clone();
        let mut hi = self.path.clone();
        hi.pop();
        hi.push('0');
        (lo, hi)
    }

    /// The area code at the root of this scope (None for the everything scope).
    pub fn root_code(&self) -> Option<&str> {
        self.path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_cover_the_subtree_and_nothing_else() {
        let s = Scope::new("/150800/150802/");
        let (lo, hi) = s.bounds();
        let inside = [
            "/150800/150802/",
            "/150800/150802/150802001/",
            "/150800/150802/1/",
        ];
        let outside = [
            "/150800/",
            "/150800/1508021/",
            "/150800/150821/",
            "/150800/150802",
        ];
        for p in inside {
            assert!(p >= lo.as_str() && p < hi.as_str(), "{p} should be inside");
            assert!(s.contains(p));
        }
        for p in outside {
            assert!(
                !(p >= lo.as_str() && p < hi.as_str()),
                "{p} should be outside"
            );
            assert!(!s.contains(p));
        }
        assert_eq!(s.root_code(), Some("150802"));
        assert_eq!(Scope::all().root_code(), None);
    }

    #[test]
    fn codes_must_extend_their_parent() {
        assert!(code_fits(1, "150800", None));
        assert!(code_fits(2, "150802", Some("150800")));
        assert!(!code_fits(2, "150102", Some("150800")));
        assert!(code_fits(3, "150802001", Some("150802")));
        assert!(!code_fits(3, "150821001", Some("150802")));
        assert!(code_fits(4, "150802001001", Some("150802001")));
        assert!(code_fits(5, "150802001001001", Some("150802001001")));
        assert!(code_fits(6, "150802001001001002", Some("150802001001001")));
        assert!(!code_fits(4, "15080200100A", Some("150802001")));
        // a six-byte parent that is not six digits, cut inside a character at byte 4
        assert!(!code_fits(2, "150802", Some("€€")));
        assert!(!code_fits(2, "150802", Some("15€0")));
        assert!(!code_fits(7, "150802001001001002", Some("150802001001001")));
    }

    #[test]
    fn lineage_lists_codes_root_first() {
        let city = Area::new("150800", "巴彦淖尔市", 1, None);
        let county = Area::new("150802", "临河区", 2, Some(&city));
        assert_eq!(county.path, "/150800/150802/");
        assert_eq!(county.lineage(), vec!["150800", "150802"]);
    }
}
