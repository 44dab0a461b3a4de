//! `epigrid import areas FILE`: loads the area hierarchy from a spreadsheet (CSV).
//!
//! The file has a header row naming the columns `code`, `name`, `parent_code` and `level` in
//! any order (case-insensitive; the Chinese headers `代码`/`编码`, `名称`, `上级代码`/`上级编码`
//! and `级别`/`层级` work too; other columns are ignored). It may be UTF-8, with or without a
//! byte-order mark, or GBK as saved by Excel in a Chinese locale.
//!
//! Every row is checked against the rest of the file and the store before anything is
//! written; if any row is bad, every problem is reported with its line number (as a
//! spreadsheet user sees it: the header is line 1) and nothing is written. Otherwise all rows
//! are written in one transaction, parents before children. Importing the same file twice
//! changes nothing the second time.

use std::collections::HashMap;

use anyhow::Context as _;

use epigrid_core::area::{code_fits, Area};
use epigrid_core::i18n::tf;
use epigrid_core::store::Store;
use epigrid_core::Lang;

/// The outcome of a successful import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaImportReport {
    /// Data rows in the file (blank rows not counted).
    pub rows: usize,
    /// Areas that were new or changed.
    pub changed: usize,
}

/// A problem with one row (or with the header, line 1, or the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Line number as shown in a spreadsheet (header = 1). A quoted cell spanning several
    /// lines counts from the line where its row starts.
    pub line: usize,
    /// The column (`code`, `name`, `parent_code`, `level`), or `row`, `header`, `file`.
    pub field: String,
    /// The message in the requested language.
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.line, self.field, self.message)
    }
}

/// Longest accepted area name, in characters.
const NAME_MAX_CHARS: usize = 60;

/// The columns, by canonical name, with the header spellings accepted for each.
const COLUMNS: [(&str, &[&str]); 4] = [
    ("code", &["code", "代码", "编码", "区划代码"]),
    ("name", &["name", "名称"]),
    (
        "parent_code",
        &["parent_code", "parent", "上级代码", "上级编码"],
    ),
    ("level", &["level", "级别", "层级"]),
];

/// Parses and validates a CSV of areas and writes it in one transaction.
///
/// Returns `Ok(Ok(report))` when written, `Ok(Err(errors))` when the file was refused (the
/// store is then unchanged), and `Err` when the store failed.
pub async fn import_areas(
    store: &dyn Store,
    bytes: &[u8],
    lang: Lang,
) -> anyhow::Result<Result<AreaImportReport, Vec<RowError>>> {
    let msg = |key: &str, args: &[(&str, &str)]| tf(lang, key, args);
    let text = match decode(bytes) {
        Some(t) => t,
        None => {
            return Ok(Err(vec![RowError {
                line: 1,
                field: "file".into(),
                message: msg("import.file.encoding", &[]),
            }]))
        }
    };
    let rows = match parse_rows(&text, lang) {
        Ok(rows) => rows,
        Err(errors) => return Ok(Err(errors)),
    };

    let mut errors = Vec::new();
    // First occurrence of each code in the file: line and level (when the level is valid).
    let mut in_file: HashMap<&str, (usize, Option<u8>)> = HashMap::new();
    for row in &rows {
        if !row.code.is_empty() {
            in_file
                .entry(row.code.as_str())
                .or_insert((row.line, row.level));
        }
    }
    // Parents that are not in the file, looked up once each in the store.
    let mut stored: HashMap<String, Option<Area>> = HashMap::new();
    for row in &rows {
        let Some(parent) = row.parent.as_deref() else {
            continue;
        };
        if !in_file.contains_key(parent) && !stored.contains_key(parent) && is_digits(parent) {
            let area = store
                .area(parent)
                .await
                .with_context(|| format!("looking up parent area {parent}"))?;
            stored.insert(parent.to_string(), area);
        }
    }

    for row in &rows {
        let err = |field: &str, key: &str, args: &[(&str, &str)]| RowError {
            line: row.line,
            field: field.to_string(),
            message: msg(key, args),
        };
        errors.extend(row.errors.iter().cloned());
        if row.shifted {
            continue;
        }

        // code
        if row.code.is_empty() {
            errors.push(err("code", "import.required", &[]));
        } else if looks_scientific(&row.code) {
            errors.push(err(
                "code",
                "import.code.scientific",
                &[("code", &row.code)],
            ));
        } else if !is_digits(&row.code) {
            errors.push(err("code", "import.code.digits", &[("code", &row.code)]));
        } else if let Some(&(first, _)) = in_file.get(row.code.as_str()) {
            if first != row.line {
                let first = first.to_string();
                errors.push(err(
                    "code",
                    "import.code.duplicate",
                    &[("code", &row.code), ("line", &first)],
                ));
            }
        }

        // name
        if row.name.is_empty() {
            errors.push(err("name", "import.required", &[]));
        } else if row.name.chars().any(char::is_control) {
            errors.push(err("name", "import.name.invalid", &[]));
        } else if row.name.contains('"') && row.broken_quoting {
            // what is left of broken quoting (`"bad "quote"`), not a name
            errors.push(err("name", "import.name.quote", &[]));
        } else if row.name.chars().count() > NAME_MAX_CHARS {
            let max = NAME_MAX_CHARS.to_string();
            errors.push(err("name", "import.name.too_long", &[("max", &max)]));
        }

        // level, and the code's shape for it
        let Some(level) = row.level else {
            continue; // reported while parsing
        };
        let level_s = level.to_string();
        if is_digits(&row.code) && !code_shape_fits(level, &row.code) {
            let key = match level {
                1 => "import.code.shape_city",
                2 => "import.code.shape_county",
                _ => "import.code.length",
            };
            let digits = expected_digits(level).to_string();
            errors.push(err(
                "code",
                key,
                &[
                    ("code", &row.code),
                    ("level", &level_s),
                    ("digits", &digits),
                ],
            ));
        }

        // parent
        match (level, row.parent.as_deref()) {
            (1, None) => {}
            (1, Some(_)) => errors.push(err("parent_code", "import.parent.not_allowed", &[])),
            (_, None) => errors.push(err("parent_code", "import.parent.required", &[])),
            (_, Some(parent)) => {
                let parent_level = match in_file.get(parent) {
                    Some(&(_, l)) => Some(l),
                    None => stored
                        .get(parent)
                        .and_then(|a| a.as_ref())
                        .map(|a| Some(a.level)),
                };
                match parent_level {
                    None => errors.push(err(
                        "parent_code",
                        "import.parent.unknown",
                        &[("parent", parent)],
                    )),
                    // The parent's own row has a bad level; that row reports it.
                    Some(None) => {}
                    Some(Some(pl)) if pl + 1 != level => {
                        let pl = pl.to_string();
                        errors.push(err(
                            "parent_code",
                            "import.parent.level",
                            &[
                                ("parent", parent),
                                ("parent_level", &pl),
                                ("level", &level_s),
                            ],
                        ));
                    }
                    Some(Some(_)) => {
                        if is_digits(&row.code)
                            && code_shape_fits(level, &row.code)
                            && !code_fits(level, &row.code, Some(parent))
                        {
                            errors.push(err(
                                "code",
                                "import.code.not_under_parent",
                                &[("code", &row.code), ("parent", parent)],
                            ));
                        }
                    }
                }
            }
        }
    }

    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        return Ok(Err(errors));
    }

    // Parents before children: every parent is exactly one level up, so sorting by level
    // suffices (stable, so the file's order is kept within a level).
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| r.level);
    let mut built: HashMap<&str, Area> = HashMap::new();
    let mut areas = Vec::with_capacity(sorted.len());
    for row in sorted {
        let level = row.level.unwrap_or(1);
        let parent = match row.parent.as_deref() {
            None => None,
            Some(p) => match built.get(p) {
                Some(a) => Some(a.clone()),
                None => stored.get(p).cloned().flatten(),
            },
        };
        if level > 1 && parent.is_none() {
            // Validation guarantees a parent; refuse rather than write a rootless area.
            anyhow::bail!("internal error: parent of line {} vanished", row.line);
        }
        let area = Area::new(&row.code, &row.name, level, parent.as_ref());
        built.insert(row.code.as_str(), area.clone());
        areas.push(area);
    }
    let changed = store
        .upsert_areas(&areas)
        .await
        .context("writing the areas")?;
    Ok(Ok(AreaImportReport {
        rows: rows.len(),
        changed,
    }))
}

/// One data row, trimmed, with the problems found while parsing it.
#[derive(Debug)]
struct Row {
    line: usize,
    code: String,
    name: String,
    parent: Option<String>,
    /// `None` if missing or not understood (then an error is in `errors`).
    level: Option<u8>,
    /// The row has the wrong number of cells, so its cells are not checked one by one.
    shifted: bool,
    /// A quotation mark in the row's text is neither a cell's opening or closing quote nor
    /// doubled inside a quoted cell (`"bad "quote"`): what the reader made of it is a guess.
    broken_quoting: bool,
    errors: Vec<RowError>,
}

/// Decodes the file: valid UTF-8 (a byte-order mark is dropped) as is, anything else as GBK.
/// `None` if it is neither.
fn decode(bytes: &[u8]) -> Option<String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Some(s.to_string());
    }
    encoding_rs::GBK
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(|s| s.into_owned())
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A number Excel shortened to scientific notation (`1.50802E+14`): digits are lost.
fn looks_scientific(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    upper.contains("E+") && upper.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// The number of digits of a code at `level`.
fn expected_digits(level: u8) -> usize {
    match level {
        1 | 2 => 6,
        3 => 9,
        4 => 12,
        5 => 15,
        _ => 18,
    }
}

/// Whether a code of digits has the right length (and ending) for its level, whatever its
/// parent: a city ends in `00`, a county does not.
fn code_shape_fits(level: u8, code: &str) -> bool {
    match level {
        1 => code_fits(1, code, None),
        2 => code.len() == 6 && !code.ends_with("00"),
        _ => code.len() == expected_digits(level),
    }
}

/// A level as a number 1–6 or a Chinese (or English) level name.
fn parse_level(raw: &str) -> Option<u8> {
    let level = match raw.trim().to_lowercase().as_str() {
        "1" | "市" | "盟" | "地级市" | "city" => 1,
        "2" | "区" | "县" | "旗" | "县级市" | "county" | "district" | "banner" => 2,
        "3" | "街道" | "镇" | "苏木" | "乡" | "town" | "street" => 3,
        "4" | "社区" | "村" | "嘎查" | "community" | "village" => 4,
        "5" | "楼栋" | "楼" | "组" | "building" | "group" => 5,
        "6" | "单元" | "户" | "unit" | "household" => 6,
        _ => return None,
    };
    Some(level)
}

/// Undoes the ways spreadsheets keep codes as text: `="150802"` and a leading `'`.
fn unwrap_text_cell(s: &str) -> &str {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix("=\"").and_then(|r| r.strip_suffix('"')) {
        return inner.trim();
    }
    s.strip_prefix('\'').map_or(s, str::trim)
}

/// Whether the CSV record at the start of `raw` has a quotation mark that is not a cell's
/// opening or closing quote nor doubled inside a quoted cell (`a,"bad "quote",b` or
/// `a,b"c`). Reads up to the end of the record (a line break outside quotes).
fn broken_quoting(raw: &str) -> bool {
    let mut chars = raw.chars().peekable();
    let mut quoted = false;
    let mut cell_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') => match chars.peek() {
                Some('"') => {
                    chars.next();
                }
                None | Some(',' | '\r' | '\n') => quoted = false,
                // spaces before the separator, which the reader trims
                Some(' ' | '\t') => {
                    while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                        chars.next();
                    }
                    if !matches!(chars.peek(), None | Some(',' | '\r' | '\n')) {
                        return true;
                    }
                    quoted = false;
                }
                Some(_) => return true,
            },
            (true, _) => {}
            (false, '"') if cell_start => {
                quoted = true;
                cell_start = false;
            }
            (false, '"') => return true,
            (false, ',') => cell_start = true,
            (false, '\r' | '\n') => return false,
            (false, ' ' | '\t') => {}
            (false, _) => cell_start = false,
        }
    }
    false
}

/// Where each line of `text` starts (byte offsets); a line ends with `\r\n`, `\n` or a lone
/// `\r` (old Mac files).
fn line_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut starts = vec![0];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => starts.push(i + 1),
            b'\r' => {
                if b.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                starts.push(i + 1);
            }
            _ => {}
        }
        i += 1;
    }
    starts
}

/// Reads the header and the rows. Header problems (or unreadable CSV) refuse the whole file.
fn parse_rows(text: &str, lang: Lang) -> Result<Vec<Row>, Vec<RowError>> {
    let msg = |key: &str, args: &[(&str, &str)]| tf(lang, key, args);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    // the line a record starts on, as an editor counts them: csv's own count leaves out blank
    // lines and is one short after every \r\n
    // (a record's position is where reading it began: before the blank lines it skipped)
    let starts = line_starts(text);
    let start_of = |p: &csv::Position| {
        let from = (p.byte() as usize).min(text.len());
        from + text.as_bytes()[from..]
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count()
    };
    let line_of = |pos: Option<&csv::Position>| {
        pos.map_or(1, |p| starts.partition_point(|&s| s <= start_of(p)).max(1))
    };
    let csv_error = |e: csv::Error| RowError {
        line: line_of(e.position()),
        field: "file".into(),
        message: msg("import.file.malformed", &[]),
    };

    let header = match records.next() {
        None => {
            return Err(vec![RowError {
                line: 1,
                field: "file".into(),
                message: msg("import.file.empty", &[]),
            }])
        }
        Some(Err(e)) => return Err(vec![csv_error(e)]),
        Some(Ok(h)) => h,
    };
    let header_line = line_of(header.position());
    let mut columns: HashMap<&str, usize> = HashMap::new();
    let mut errors = Vec::new();
    for (i, cell) in header.iter().enumerate() {
        let cell = cell.trim().to_lowercase();
        let Some((canonical, _)) = COLUMNS
            .iter()
            .find(|(_, names)| names.iter().any(|n| n.to_lowercase() == cell))
        else {
            continue;
        };
        if columns.insert(canonical, i).is_some() {
            errors.push(RowError {
                line: header_line,
                field: "header".into(),
                message: msg("import.header.duplicate", &[("column", canonical)]),
            });
        }
    }
    for (canonical, _) in COLUMNS {
        if !columns.contains_key(canonical) {
            errors.push(RowError {
                line: header_line,
                field: "header".into(),
                message: msg("import.header.missing", &[("column", canonical)]),
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let width = header.len();
    let col = |name: &str| columns.get(name).copied().unwrap_or(0);
    let (c_code, c_name, c_parent, c_level) =
        (col("code"), col("name"), col("parent_code"), col("level"));

    let mut rows = Vec::new();
    for record in records {
        let record = record.map_err(|e| vec![csv_error(e)])?;
        if record.iter().all(|c| c.trim().is_empty()) {
            continue; // blank rows, including Excel's trailing `,,,`
        }
        let line = line_of(record.position());
        let cell = |i: usize| record.get(i).unwrap_or("").trim();
        let mut row = Row {
            line,
            code: unwrap_text_cell(cell(c_code)).to_string(),
            name: cell(c_name).to_string(),
            parent: Some(unwrap_text_cell(cell(c_parent)).to_string()).filter(|p| !p.is_empty()),
            level: None,
            shifted: record.len() != width,
            broken_quoting: record
                .position()
                .and_then(|p| text.get(start_of(p)..))
                .is_some_and(broken_quoting),
            errors: Vec::new(),
        };
        if row.shifted {
            let (expected, found) = (width.to_string(), record.len().to_string());
            row.errors.push(RowError {
                line,
                field: "row".into(),
                message: msg(
                    "import.row.columns",
                    &[("expected", &expected), ("found", &found)],
                ),
            });
            // The cells are probably shifted: check nothing else on this row, but keep its
            // code so that children pointing at it are not reported too.
            rows.push(row);
            continue;
        }
        let raw_level = cell(c_level);
        row.level = parse_level(raw_level);
        if row.level.is_none() {
            let key = if raw_level.is_empty() {
                "import.required"
            } else {
                "import.level.invalid"
            };
            row.errors.push(RowError {
                line,
                field: "level".into(),
                message: msg(key, &[("level", raw_level)]),
            });
        }
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use epigrid_core::area::Scope;
    use epigrid_store_sqlite::{Durability, SqliteStore};

    /// A fresh SQLite store in its own temporary directory (removed when dropped).
    struct TempStore {
        store: SqliteStore,
        dir: std::path::PathBuf,
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn temp_store() -> TempStore {
        let dir = std::env::temp_dir().join(format!(
            "epigrid-import-{}",
            epigrid_core::vault::random_token(8)
        ));
        let store = SqliteStore::open(&dir.join("t.db"), Durability::Process).expect("open store");
        TempStore { store, dir }
    }

    /// Header in an unusual order, Chinese level names, a quoted name, a blank trailing row.
    const GOOD: &str = "level,Code,name,parent_code\n\
        1,150800,巴彦淖尔市,\n\
        区,150802,临河区,150800\n\
        3,150802001,团结街道,150802\n\
        社区,150802001001,\"今日社区\",150802001\n\
        5,150802001001001,1号楼,150802001001\n\
        单元,150802001001001001,1单元,150802001001001\n\
        ,,,\n";

    fn with_bom(s: &str) -> Vec<u8> {
        let mut v = b"\xEF\xBB\xBF".to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_good_utf8_file_with_bom_is_imported_with_paths() {
        let t = temp_store();
        let report = import_areas(&t.store, &with_bom(GOOD), Lang::En)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            report,
            AreaImportReport {
                rows: 6,
                changed: 6
            }
        );
        let unit = t.store.area("150802001001001001").await.unwrap().unwrap();
        assert_eq!(unit.name, "1单元");
        assert_eq!(unit.level, 6);
        assert_eq!(
            unit.path,
            "/150800/150802/150802001/150802001001/150802001001001/150802001001001001/"
        );
        assert_eq!(t.store.area_count().await.unwrap(), 6);
        assert_eq!(t.store.areas_in(&Scope::all(), 6).await.unwrap().len(), 6);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_gbk_file_is_decoded() {
        let t = temp_store();
        let (gbk, _, unmappable) = encoding_rs::GBK.encode(GOOD);
        assert!(!unmappable);
        assert!(
            std::str::from_utf8(&gbk).is_err(),
            "the test needs non-UTF-8 bytes"
        );
        let report = import_areas(&t.store, &gbk, Lang::Zh)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.changed, 6);
        let town = t.store.area("150802001").await.unwrap().unwrap();
        assert_eq!(town.name, "团结街道");
        assert_eq!(town.path, "/150800/150802/150802001/");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reimporting_the_same_file_changes_nothing() {
        let t = temp_store();
        let first = import_areas(&t.store, GOOD.as_bytes(), Lang::En)
            .await
            .unwrap();
        assert_eq!(first.unwrap().changed, 6);
        let again = import_areas(&t.store, &with_bom(GOOD), Lang::En)
            .await
            .unwrap();
        assert_eq!(
            again.unwrap(),
            AreaImportReport {
                rows: 6,
                changed: 0
            }
        );
        // A renamed area is the one change.
        let renamed = GOOD.replace("1号楼", "一号楼");
        let third = import_areas(&t.store, renamed.as_bytes(), Lang::En)
            .await
            .unwrap();
        assert_eq!(third.unwrap().changed, 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_rows_are_reported_by_line_and_nothing_is_written() {
        let t = temp_store();
        import_areas(&t.store, GOOD.as_bytes(), Lang::En)
            .await
            .unwrap()
            .unwrap();
        let before = t.store.area_count().await.unwrap();
        let bad = "code,name,parent_code,level\n\
            150802002,车站街道,150802,3\n\
            15080200200X,坏社区,150802002,4\n\
            150802002002,平安社区,150802002,4\n\
            150802002003,,150802002,4\n\
            150802003,先锋街道,150800,3\n\
            150802002004,恒鑫社区,150802002\n";
        let errors = import_areas(&t.store, bad.as_bytes(), Lang::En)
            .await
            .unwrap()
            .unwrap_err();
        let lines: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(
            lines,
            vec![(3, "code"), (5, "name"), (6, "parent_code"), (7, "row")],
            "{errors:#?}"
        );
        assert!(
            errors[2].message.contains("150800"),
            "{}",
            errors[2].message
        );
        assert_eq!(t.store.area_count().await.unwrap(), before);
        assert!(t.store.area("150802002").await.unwrap().is_none());
    }

    /// Lines as an editor numbers them, whatever ends them and with blank lines between
    /// rows (csv's own count was one short after each \r\n and left blank lines out).
    #[tokio::test(flavor = "multi_thread")]
    async fn bad_rows_keep_their_lines_with_crlf_blank_lines_and_lone_cr() {
        let t = temp_store();
        import_areas(&t.store, GOOD.as_bytes(), Lang::En)
            .await
            .unwrap()
            .unwrap();
        let lf = "\u{feff}code,name,parent_code,level\n150802002,车站街道,150802,3\n\n\n\
            15080200200X,坏社区,150802002,4\n150802002002,平安社区,150802002,4\n\n\
            150802002003,,150802002,4\n";
        for (ending, text) in [
            ("lf", lf.to_string()),
            ("crlf", lf.replace('\n', "\r\n")),
            ("cr", lf.replace('\n', "\r")),
        ] {
            let errors = import_areas(&t.store, text.as_bytes(), Lang::En)
                .await
                .unwrap()
                .unwrap_err();
            let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
            assert_eq!(lines, [5, 8], "{ending}: {errors:#?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_child_may_hang_under_an_area_already_in_the_store() {
        let t = temp_store();
        import_areas(&t.store, GOOD.as_bytes(), Lang::En)
            .await
            .unwrap()
            .unwrap();
        let file = "code,name,parent_code,level\n\
            150802002001,金穗社区,150802002,社区\n\
            150802002,车站街道,150802,街道\n\
            150802001002,五星社区,150802001,4\n";
        let report = import_areas(&t.store, file.as_bytes(), Lang::En)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            report,
            AreaImportReport {
                rows: 3,
                changed: 3
            }
        );
        let child = t.store.area("150802002001").await.unwrap().unwrap();
        assert_eq!(child.path, "/150800/150802/150802002/150802002001/");
        let sibling = t.store.area("150802001002").await.unwrap().unwrap();
        assert_eq!(sibling.path, "/150800/150802/150802001/150802001002/");
        assert_eq!(sibling.parent_code.as_deref(), Some("150802001"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn header_problems_refuse_the_file_in_the_users_language() {
        let t = temp_store();
        let file = "code,name,level,code\n150800,巴彦淖尔市,1,150800\n";
        let zh = import_areas(&t.store, file.as_bytes(), Lang::Zh)
            .await
            .unwrap()
            .unwrap_err();
        let en = import_areas(&t.store, file.as_bytes(), Lang::En)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(zh.len(), 2, "{zh:#?}"); // duplicate `code`, missing `parent_code`
        assert!(zh.iter().all(|e| e.line == 1 && e.field == "header"));
        assert_ne!(zh[0].message, en[0].message);
        assert!(
            en.iter().any(|e| e.message.contains("parent_code")),
            "{en:#?}"
        );
        let empty = import_areas(&t.store, b"", Lang::En)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(empty[0].field, "file");
        let binary = import_areas(&t.store, &[0xff, 0xfe, 0xff], Lang::En)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(binary[0].field, "file");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn broken_quoting_is_a_row_error_not_a_strange_name() {
        let t = temp_store();
        // also after blank lines (where reading the row began)
        let file = format!("{GOOD}\n\n4,150802001003,\"bad \"quote\",150802001\n");
        let errors = import_areas(&t.store, file.as_bytes(), Lang::En)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].field, "name");
        assert!(t.store.area("150802001003").await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_name_with_quotation_marks_quoted_properly_is_kept() {
        let t = temp_store();
        let file = format!("{GOOD}4,150802001003,\"楼,22 \"\"x\"\"\" ,150802001\n");
        import_areas(&t.store, file.as_bytes(), Lang::En)
            .await
            .unwrap()
            .unwrap();
        let area = t.store.area("150802001003").await.unwrap().unwrap();
        assert_eq!(area.name, "楼,22 \"x\"");
    }

    #[test]
    fn broken_quoting_is_told_from_doubled_quotes() {
        assert!(!broken_quoting("a,\"b \"\"c\"\"\",d\nnext,\"x"));
        assert!(!broken_quoting("\"a\" , b\n"));
        assert!(!broken_quoting("plain,cells\r\n\"bad \"quote\""));
        assert!(broken_quoting("4,1,\"bad \"quote\",1\n"));
        assert!(broken_quoting("4,b\"c,1"));
        assert!(broken_quoting("\"a\" b,c"));
    }

    #[test]
    fn cells_and_levels_are_read_leniently() {
        assert_eq!(parse_level(" 旗 "), Some(2));
        assert_eq!(parse_level("Unit"), Some(6));
        assert_eq!(parse_level("7"), None);
        assert_eq!(unwrap_text_cell("=\"150802\""), "150802");
        assert_eq!(unwrap_text_cell("'150802001"), "150802001");
        assert!(looks_scientific("1.50802E+14"));
        assert!(!looks_scientific("150802"));
        assert!(code_shape_fits(1, "150800") && !code_shape_fits(2, "150800"));
        assert!(code_shape_fits(5, "150802001001001"));
    }

    #[test]
    fn every_message_key_exists_in_both_languages() {
        let keys = [
            "import.file.encoding",
            "import.file.empty",
            "import.file.malformed",
            "import.header.missing",
            "import.header.duplicate",
            "import.row.columns",
            "import.required",
            "import.level.invalid",
            "import.code.digits",
            "import.code.scientific",
            "import.code.duplicate",
            "import.code.length",
            "import.code.shape_city",
            "import.code.shape_county",
            "import.code.not_under_parent",
            "import.name.invalid",
            "import.name.quote",
            "import.name.too_long",
            "import.parent.required",
            "import.parent.not_allowed",
            "import.parent.unknown",
            "import.parent.level",
        ];
        for lang in [Lang::Zh, Lang::En] {
            let known = epigrid_core::i18n::keys(lang);
            for k in keys {
                assert!(known.contains(&k), "{k} missing in {}", lang.code());
            }
        }
    }
}

/// What an import of proximity records did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProximityReport {
    pub imported: usize,
    /// Rows naming someone epigrid does not know (skipped): (line, which column).
    pub unknown: Vec<(usize, String)>,
}

/// Imports proximity records: CSV `time,a,b[,duration_s]` with a header, or the research
/// format `t i j` (whitespace-separated, no header, 20-second resolution). `time` is Unix
/// seconds or ISO 8601; `a`/`b` are the ID numbers of registered people; the duration
/// defaults to 20 s. A malformed row refuses the whole file (nothing is written); rows naming
/// people epigrid does not know are reported and skipped.
pub async fn import_proximity(
    store: &dyn Store,
    vault: &epigrid_core::vault::Vault,
    bytes: &[u8],
    source: &str,
    lang: Lang,
) -> anyhow::Result<Result<ProximityReport, Vec<RowError>>> {
    use epigrid_core::trace::ProximityRow;
    use epigrid_core::validate::{DocType, Document};
    let Some(text) = decode(bytes) else {
        return Ok(Err(vec![RowError {
            line: 1,
            field: "file".into(),
            message: tf(lang, "import.proximity.encoding", &[]),
        }]));
    };
    let mut errors = Vec::new();
    let mut rows: Vec<(usize, ProximityRow)> = Vec::new();
    let mut people: std::collections::HashSet<uuid::Uuid> = std::collections::HashSet::new();
    let err = |line: usize, field: &str, key: &str| RowError {
        line,
        field: field.into(),
        message: tf(lang, key, &[]),
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = if l.contains(',') {
            l.split(',').map(str::trim).collect()
        } else {
            l.split_whitespace().collect()
        };
        if line == 1
            && cells
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case("time"))
        {
            continue;
        }
        if !(3..=4).contains(&cells.len()) {
            errors.push(err(line, "row", "import.proximity.columns"));
            continue;
        }
        let at = match cells[0].parse::<i64>() {
            Ok(s) => chrono::DateTime::from_timestamp(s, 0),
            Err(_) => chrono::DateTime::parse_from_rfc3339(cells[0])
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc)),
        };
        // a contact is recent: a time outside 2000–2100 is a wrong unit or a typo (and one
        // outside PostgreSQL's range failed the whole file with no line)
        let in_range =
            |t: &chrono::DateTime<chrono::Utc>| (2000..=2100).contains(&chrono::Datelike::year(t));
        let Some(at) = at.filter(in_range) else {
            errors.push(err(line, "time", "import.proximity.time"));
            continue;
        };
        let duration_s = match cells.get(3) {
            None => 20,
            Some(d) => match d.parse::<i64>() {
                Ok(n) if (1..=86_400).contains(&n) => n,
                _ => {
                    errors.push(err(line, "duration_s", "import.proximity.duration"));
                    continue;
                }
            },
        };
        let mut ids = [uuid::Uuid::nil(); 2];
        let mut ok = true;
        for (k, col) in ["a", "b"].iter().enumerate() {
            match Document::parse(col, DocType::CnId, cells[k + 1]) {
                Ok(doc) => {
                    ids[k] = epigrid_core::register::document_person_id(vault, &doc);
                    people.insert(ids[k]);
                }
                Err(e) => {
                    errors.push(RowError {
                        line,
                        field: col.to_string(),
                        message: e.message(lang),
                    });
                    ok = false;
                }
            }
        }
        if ok && ids[0] == ids[1] {
            errors.push(err(line, "b", "import.proximity.same"));
            ok = false;
        }
        if ok {
            rows.push((
                line,
                ProximityRow {
                    id: epigrid_core::vault::new_id(),
                    a: ids[0],
                    b: ids[1],
                    at,
                    duration_s,
                    source: source.to_string(),
                },
            ));
        }
    }
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    let known: std::collections::HashSet<uuid::Uuid> = store
        .existing_persons(people.into_iter().collect())
        .await?
        .into_iter()
        .collect();
    let mut unknown = Vec::new();
    let mut keep = Vec::new();
    for (line, r) in rows {
        match (known.contains(&r.a), known.contains(&r.b)) {
            (true, true) => keep.push(r),
            (a, _) => unknown.push((line, if a { "b" } else { "a" }.to_string())),
        }
    }
    let imported = store.insert_proximity(keep).await?;
    Ok(Ok(ProximityReport { imported, unknown }))
}
