//! The epigrid binary: command-line interface and wiring of store, vault and web server.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use epigrid::{bench, demo, import, say, tell};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{FixedOffset, Utc};
use clap::{Args, Parser, Subcommand};
use epigrid_core::area::Scope;
use epigrid_core::i18n::{tf, Lang};
use epigrid_core::model::{Role, SiteKind, User};
use epigrid_core::store::{Store, StoreError};
use epigrid_core::vault::Vault;
use epigrid_store_postgres::PgStore;
use epigrid_store_sqlite::{Durability, SqliteStore};
use epigrid_web::{AppState, WebConfig};
use uuid::Uuid;

const DEFAULT_DB: &str = "sqlite://data/epigrid.db";

#[derive(Parser)]
#[command(
    name = "epigrid",
    version,
    about = "Outbreak response: QR self-registration, people under observation, contact tracing, dashboards."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DbArgs {
    /// Database: sqlite://PATH (embedded, the default) or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "EPIGRID_DB", default_value = DEFAULT_DB)]
    db: String,
    /// Key file for personal data at rest (created if missing). Default: next to an SQLite
    /// database, or ./data/epigrid.key for PostgreSQL. EPIGRID_KEY (64 hex characters) overrides it.
    #[arg(long, env = "EPIGRID_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// SQLite durability: "process" (a commit survives the process being killed) or "power"
    /// (fsync on every commit; survives power loss, slower).
    #[arg(long, env = "EPIGRID_SQLITE_DURABILITY", default_value = "process")]
    durability: String,
}

#[derive(Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Address to listen on.
    #[arg(long, env = "EPIGRID_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    /// Public base URL put in QR codes (e.g. https://epigrid.example.org); default: the
    /// address the request came in on.
    #[arg(long, env = "EPIGRID_BASE_URL", value_parser = parse_base_url)]
    base_url: Option<String>,
    /// Local time offset from UTC for days and display (China: +08:00).
    // (read, and checked, with the command line: before anything is made)
    #[arg(long, env = "EPIGRID_TZ_OFFSET", default_value = "+08:00", value_parser = parse_offset)]
    tz_offset: FixedOffset,
    /// Log format: text or json.
    #[arg(long, env = "EPIGRID_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Send cookies with the Secure flag (set this behind HTTPS; on by itself when --base-url is
    /// https).
    #[arg(long, env = "EPIGRID_SECURE_COOKIES")]
    secure_cookies: bool,
    /// Take clients' addresses (for the audit log) from X-Forwarded-For: set this only behind
    /// a reverse proxy that sets it, or anyone could write any address into the log.
    #[arg(long, env = "EPIGRID_TRUST_PROXY")]
    trust_proxy: bool,
    /// Observation length per category, e.g. "close_contact=14,confirmed=28" (defaults:
    /// confirmed 28, fever 7, others 14 days).
    #[arg(long, env = "EPIGRID_OBSERVATION_DAYS", default_value = "")]
    observation_days: String,
    /// Hours without a daily report after which a person under observation is overdue.
    #[arg(long, env = "EPIGRID_OVERDUE_HOURS", default_value_t = 36,
          value_parser = clap::value_parser!(i64).range(1..=24 * 14))]
    overdue_hours: i64,
    /// Days a registration is kept, unless its person is one staff have acted on (a category,
    /// an observation, a lab result, a contact, a list match, ...): older ones are deleted
    /// hourly, then the people left with nothing. 0 keeps everything. Default: 60 for
    /// `serve` (two months: a late-confirmed case's trace still finds who was near), 0 for
    /// `demo` (its generated history is kept).
    #[arg(long, env = "EPIGRID_RETENTION_DAYS",
          value_parser = clap::value_parser!(u32).range(0..=3660))]
    retention_days: Option<u32>,
    /// A token that `/metrics` then asks for (`Authorization: Bearer TOKEN`, at least 16
    /// characters); without it `/metrics` is open, for a Prometheus on a private network.
    #[arg(long, env = "EPIGRID_METRICS_TOKEN", value_parser = parse_metrics_token)]
    metrics_token: Option<String>,
}

/// A metrics token: 16 to 200 visible ASCII characters, as an HTTP header carries them.
fn parse_metrics_token(s: &str) -> std::result::Result<String, String> {
    if (16..=200).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        // not echoed: it is a secret
        Err("expected 16 to 200 visible ASCII characters (no spaces)".to_string())
    }
}

/// Days `serve` keeps registrations when not told (`--retention-days`).
const RETENTION_DAYS: u32 = 60;

#[derive(Subcommand)]
enum Command {
    /// Run the web server.
    Serve(ServeArgs),
    /// Build the demo city (Bayannur) if the database is empty, then serve it.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// Seed of the generated data (same seed, same people and registrations).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of synthetic people.
        #[arg(long, default_value_t = 3000)]
        people: u32,
        /// Days of registrations, ending today (at most ten years).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Create or update the database schema, then exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Import data from files.
    Import {
        #[command(subcommand)]
        what: ImportCommand,
    },
    /// Manage staff accounts.
    User {
        #[command(subcommand)]
        what: UserCommand,
    },
    /// Benchmarks (figures for the release notes; not tests).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Registrations/s through HTTP vs. /healthz requests/s on the same server, in one run.
    Http {
        /// Database to run against; default: a fresh SQLite database in a temporary folder.
        #[arg(long, env = "EPIGRID_DB")]
        db: Option<String>,
        /// Seconds of load for each of the two endpoints.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Rounds of (/healthz, registrations), one after the other; the ratio reported is
        /// the median of the rounds' ratios (a shared machine's speed drifts between runs).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: u32,
    },
    /// The tracing engine on uniform random visits: (a) first degree for one person, (b) first
    /// and second degree for 100 people; with --pg, the same answered by indexed SQL.
    Trace {
        #[arg(long, default_value_t = 10_000_000)]
        registrations: usize,
        #[arg(long, default_value_t = 1_000_000)]
        people: u32,
        #[arg(long, default_value_t = 2_000)]
        sites: u32,
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// PostgreSQL to compare with (a table bench_visits is created there).
        #[arg(long)]
        pg: Option<String>,
    },
    /// List matching (比对): rows/s of the exact pass (reading, validation, blind indexes,
    /// hash join) and of the fuzzy pass, on synthetic people and a synthetic list.
    Match {
        #[arg(long, default_value_t = 1_000_000)]
        people: u32,
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Also time loading the match index from this database (its people, not the
        /// synthetic ones).
        #[arg(long)]
        db: Option<String>,
    },
    /// Person search latency (p50/p95) by ID number, phone, plate and part of a name.
    Search {
        /// Database to run against; default: a fresh SQLite database in a temporary folder.
        #[arg(long, env = "EPIGRID_DB")]
        db: Option<String>,
        /// People in the demo city built when the database is empty.
        #[arg(long, default_value_t = 1_000_000)]
        people: u32,
        /// Queries of each kind.
        #[arg(long, default_value_t = 200)]
        queries: usize,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A list from another agency (CSV in UTF-8 or GBK, or XLSX; columns by name: 身份证号/id_number,
    /// 手机/phone, 姓名/name, 车牌/plate, 出生日期/birth_date) matched against the people epigrid knows.
    List {
        /// The file.
        file: PathBuf,
        /// A name for the list (e.g. "K1234 passengers 11-28").
        #[arg(long)]
        name: String,
        /// A column with another heading: TARGET=HEADING or TARGET=NUMBER (1 = first column),
        /// TARGET one of name, id_number, phone, plate, birth_date. Repeatable.
        #[arg(long, value_name = "TARGET=HEADING")]
        column: Vec<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Proximity records (contact tokens, studies): CSV time,a,b[,duration_s] or "t i j";
    /// a and b are ID numbers of registered people.
    Proximity {
        /// The file.
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
        /// Where the records come from (kept with each record).
        #[arg(long, default_value = "import")]
        source: String,
    },
    /// Areas from a CSV file with columns code,name,parent_code,level (UTF-8 or GBK).
    Areas {
        /// The CSV file.
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a staff account scoped to an area and everything under it.
    Add {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        username: String,
        /// At least 10 characters.
        #[arg(long, env = "EPIGRID_NEW_PASSWORD")]
        password: String,
        /// admin, manager, epidemiologist, grid_worker, site_staff or analyst.
        #[arg(long)]
        role: String,
        /// Area code the account is scoped to (e.g. 150802).
        #[arg(long)]
        area: String,
    },
}

fn cli_lang() -> Lang {
    ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .and_then(|v| Lang::from_tag(&v))
        .unwrap_or(Lang::En)
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // colours only for a person at a terminal, not in a file or a journal
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// `--base-url`: an absolute http(s) URL with a host, which QR codes and posters print.
fn parse_base_url(s: &str) -> std::result::Result<String, String> {
    let t = s.trim().trim_end_matches('/');
    let host = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .map(|r| r.split('/').next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => Ok(t.to_string()),
        _ => Err(format!(
            "expected an address like https://epigrid.example.org, not {s:?}"
        )),
    }
}

fn parse_offset(s: &str) -> Result<FixedOffset> {
    let t = s.trim();
    let (sign, rest) = match t.chars().next() {
        Some('+') => (1, &t[1..]),
        Some('-') => (-1, &t[1..]),
        _ => (1, t),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let part = |p: &str, max: u8| {
        p.parse::<u8>()
            .ok()
            .filter(|n| *n <= max && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| anyhow!("--tz-offset: expected +HH:MM from -14:00 to +14:00, got {s}"))
    };
    // (hours checked before they are multiplied: 600000 hours overflowed)
    let (h, m) = (i32::from(part(h, 14)?), i32::from(part(m, 59)?));
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
        .filter(|o| o.local_minus_utc().abs() <= 14 * 3600)
        .ok_or_else(|| anyhow!("--tz-offset: expected +HH:MM from -14:00 to +14:00, got {s}"))
}

async fn open_store(db: &DbArgs) -> Result<Arc<dyn Store>> {
    if db.db.starts_with("sqlite:") {
        let durability = match db.durability.as_str() {
            "process" => Durability::Process,
            "power" => Durability::Power,
            other => bail!("--durability must be \"process\" or \"power\", not {other:?}"),
        };
        let url = db.db.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open_url(&url, durability))
            .await?
            .with_context(|| format!("cannot open the SQLite database {}", db.db))?;
        Ok(Arc::new(store))
    } else if db.db.starts_with("postgres://") || db.db.starts_with("postgresql://") {
        Ok(Arc::new(
            PgStore::connect(&db.db)
                .await
                .with_context(|| "cannot open the PostgreSQL database")?,
        ))
    } else {
        bail!(
            "--db must start with sqlite:// or postgres://, not {:?}",
            db.db
        )
    }
}

/// For commands that work on what a database holds (people, areas, accounts): a mistyped
/// SQLite path must not leave a new, empty database (and key) behind and report success.
fn require_database(db: &DbArgs) -> Result<()> {
    let missing = epigrid_store_sqlite::path_from_url(&db.db)
        .filter(|p| db.db.starts_with("sqlite:") && !p.exists());
    if let Some(path) = missing {
        bail!(
            "no database at {} (create one with: epigrid migrate --db {})",
            path.display(),
            db.db
        );
    }
    Ok(())
}

fn key_path(db: &DbArgs) -> PathBuf {
    if let Some(p) = &db.key_file {
        return p.clone();
    }
    if let Some(p) = epigrid_store_sqlite::path_from_url(&db.db) {
        if db.db.starts_with("sqlite:") {
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            return dir.join("epigrid.key");
        }
    }
    PathBuf::from("data/epigrid.key")
}

/// The master key, checked against the database: a database whose personal data is sealed
/// with another key is refused (started with it, a server could read none of it and would
/// record every returning person again), and no new key is made for one that has a key.
async fn open_vault(db: &DbArgs, store: &dyn Store, lang: Lang) -> Result<Vault> {
    let recorded = store.key_check().await?;
    let (vault, source) = match std::env::var("EPIGRID_KEY") {
        Ok(hex) => (
            Vault::from_hex(&hex).context("EPIGRID_KEY")?,
            "EPIGRID_KEY".to_string(),
        ),
        Err(_) => {
            let path = key_path(db);
            if recorded.is_some() && !path.exists() {
                bail!(tf(
                    lang,
                    "cli.key.missing",
                    &[("path", &path.display().to_string())]
                ));
            }
            // the error names the file
            (Vault::load_or_create(&path)?, path.display().to_string())
        }
    };
    let check = vault.key_check();
    let fits = match recorded {
        Some(r) => r == check,
        None => {
            // a database sealed before key checks were recorded: a document must open with it
            let opens = match store.sealed_sample().await? {
                Some((id, sealed)) => vault.open(&format!("persons.doc:{id}"), &sealed).is_ok(),
                None => true,
            };
            // two processes starting on a new database: the first key recorded wins
            opens && store.claim_key_check(&check).await? == check
        }
    };
    if !fits {
        bail!(tf(lang, "cli.key.wrong", &[("source", &source)]));
    }
    // birth dates stored whole by an earlier version become a blind index and a year
    let sealed = store
        .seal_birth_dates(&|d| epigrid_core::matching::birth_index(&vault, d))
        .await?;
    if sealed > 0 {
        tracing::info!(
            people = sealed,
            "birth dates kept as a blind index and a year"
        );
    }
    Ok(vault)
}

/// The listening socket, taken before anything else so that a bad or busy address fails a
/// start before it creates a database or a key file (or builds a demo city).
async fn listen(args: &ServeArgs) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))
}

async fn serve(
    args: &ServeArgs,
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    vault: Vault,
    retention_days: u32,
    after_bind: impl FnOnce(SocketAddr),
) -> Result<()> {
    let cfg = WebConfig {
        base_url: args.base_url.clone(),
        tz: args.tz_offset,
        session_hours: 12,
        secure_cookies: epigrid_web::secure_cookies(args.secure_cookies, args.base_url.as_deref()),
        observation_days: epigrid_web::parse_observation_days(&args.observation_days)
            .map_err(|e| anyhow!("--observation-days: {e}"))?,
        overdue_hours: args.overdue_hours,
        trust_proxy: args.trust_proxy,
        retention_days,
        metrics_token: args.metrics_token.clone(),
    };
    let state = AppState::new(store.clone(), vault, cfg);
    let app = epigrid_web::router(state.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = store.backend(), "epigrid listening");
    after_bind(addr);
    // Expired sessions are purged hourly.
    let purge = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            if let Err(e) = purge.purge_sessions(Utc::now()).await {
                tracing::warn!(error = %e, "session purge failed");
            }
        }
    });
    // Registrations past their retention are purged at start and hourly (a purge that takes
    // longer delays the next; runs never overlap or bunch up).
    if retention_days > 0 {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = epigrid_web::purge_expired(&state).await {
                    tracing::warn!(error = %e, "retention purge failed");
                }
            }
        });
    }
    epigrid_web::serve::serve(
        listener,
        app,
        epigrid_web::serve::HEADER_TIMEOUT,
        shutdown(),
    )
    .await;
    Ok(())
}

/// Prints a refused import's problems, one per line, and says how many rows were wrong (a
/// row may have several problems).
fn refused(lang: Lang, errors: &[import::RowError]) -> anyhow::Error {
    for e in errors {
        tell!(
            "{}",
            tf(
                lang,
                "cli.import.row_error",
                &[
                    ("line", &e.line.to_string()),
                    ("field", &e.field),
                    ("message", &e.message)
                ]
            )
        );
    }
    let rows = errors
        .iter()
        .map(|e| e.line)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let key = if rows == 1 {
        "cli.import.refused.one"
    } else {
        "cli.import.refused"
    };
    anyhow!(tf(lang, key, &[("n", &rows.to_string())]))
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn add_user(
    store: &dyn Store,
    username: &str,
    password: &str,
    role: &str,
    area: &str,
    lang: Lang,
) -> Result<User> {
    let mut problems = Vec::new();
    if !epigrid_web::valid_username(username) {
        problems.push(tf(lang, "cli.user.username", &[]));
    }
    if !epigrid_web::password_long_enough(password) {
        problems.push(tf(lang, "cli.user.password", &[("min", "10")]));
    }
    let role_v = Role::parse(role);
    if role_v.is_none() {
        problems.push(tf(lang, "cli.user.role", &[("value", role)]));
    }
    let area_v = store.area(area).await?;
    if area_v.is_none() {
        problems.push(tf(lang, "cli.user.area", &[("value", area)]));
    }
    let (Some(role), Some(area)) = (role_v, area_v) else {
        bail!(problems.join("\n"));
    };
    if !problems.is_empty() {
        bail!(problems.join("\n"));
    }
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || epigrid_web::hash_password(&pw))
        .await?
        .map_err(|e| anyhow!(e))?;
    let user = User {
        id: Uuid::now_v7(),
        username: username.to_string(),
        password_hash: hash,
        role,
        area_code: area.code,
        area_path: area.path,
        active: true,
        created_at: Utc::now(),
    };
    match store.insert_user(&user).await {
        Err(StoreError::Conflict(_)) => bail!(tf(lang, "cli.user.exists", &[("value", username)])),
        r => r?,
    }
    cli_audit(
        store,
        "user.create",
        &format!("user:{}", user.id),
        &user.area_path,
        user.role.as_str(),
    )
    .await?;
    Ok(user)
}

/// Writes what a command did into the audit log, as a staff action on a page would be: by
/// `cli:<the machine's user>`, from `local`.
async fn cli_audit(
    store: &dyn Store,
    action: &str,
    subject: &str,
    area_path: &str,
    detail: &str,
) -> Result<()> {
    let by = std::env::var("USER").unwrap_or_else(|_| "?".into());
    store
        .append_audit(&epigrid_core::model::AuditEntry::now(
            None,
            &format!("cli:{by}"),
            action,
            subject,
            area_path,
            "local",
            detail,
        ))
        .await?;
    Ok(())
}

async fn demo(serve_args: &ServeArgs, seed: u64, people: u32, days: u32, lang: Lang) -> Result<()> {
    let listener = listen(serve_args).await?;
    let store = open_store(&serve_args.db).await?;
    let vault = open_vault(&serve_args.db, store.as_ref(), lang).await?;
    let tz = serve_args.tz_offset;
    if store.area_count().await? == 0 {
        tell!(
            "{}",
            tf(
                lang,
                "cli.demo.building",
                &[("people", &people.to_string()), ("days", &days.to_string())]
            )
        );
        let started = std::time::Instant::now();
        let opts = demo::DemoOptions {
            seed,
            people,
            days,
            now: Utc::now(),
            tz,
        };
        let summary = demo::build(store.as_ref(), &vault, &opts).await?;
        store.mark_demo().await?;
        tell!(
            "{}",
            tf(
                lang,
                "cli.demo.built",
                &[
                    ("areas", &summary.areas.to_string()),
                    ("sites", &summary.sites.len().to_string()),
                    ("registrations", &summary.registrations.to_string()),
                    ("secs", &format!("{:.1}", started.elapsed().as_secs_f64())),
                ]
            )
        );
    } else if store.is_demo().await? {
        tell!("{}", tf(lang, "cli.demo.exists", &[]));
    } else {
        // a database `demo` did not build (a real deployment's, through EPIGRID_DB, say):
        // its admin's password is not replaced, nor a deactivated admin brought back
        return Err(anyhow!(tf(lang, "cli.demo.not_demo", &[])));
    }
    // A fresh admin password on every demo start, printed once.
    let password = format!("demo-{}", &epigrid_core::vault::random_token(6));
    let hash = epigrid_web::hash_password(&password).map_err(|e| anyhow!(e))?;
    match store.user_by_username("admin").await? {
        Some(mut u) => {
            u.password_hash = hash;
            u.active = true;
            store.update_user(&u).await?;
            cli_audit(
                store.as_ref(),
                "user.password",
                &format!("user:{}", u.id),
                &u.area_path,
                "demo",
            )
            .await?;
        }
        None => {
            add_user(
                store.as_ref(),
                "admin",
                &password,
                "admin",
                divisions_city(),
                lang,
            )
            .await?;
        }
    }
    let sites = store.sites(&Scope::all()).await?;
    let configured_base = serve_args.base_url.clone();
    let retention = serve_args.retention_days.unwrap_or(0);
    serve(serve_args, listener, store, vault, retention, move |addr| {
        let base = configured_base.unwrap_or_else(|| format!("http://{addr}"));
        say!("\n  epigrid demo: {base}/");
        say!("  {}: admin / {password}", tf(lang, "cli.demo.login", &[]));
        for kind in SiteKind::ALL {
            if let Some(s) = sites.iter().find(|s| s.kind == *kind && s.active) {
                say!("  {:<10} {}  {base}/s/{}", kind.as_str(), s.name, s.token);
            }
        }
        say!("  {}: {base}/feed\n", tf(lang, "cli.demo.feed", &[]));
    })
    .await
}

fn divisions_city() -> &'static str {
    epigrid_core::divisions::BAYANNUR_CITY
}

async fn run(cli: Cli, lang: Lang) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            init_logs(&args.log_format);
            let listener = listen(&args).await?;
            // a mistyped path must not pass as a server with nobody in it: only `migrate`
            // and `demo` make a database
            require_database(&args.db)?;
            let store = open_store(&args.db).await?;
            let vault = open_vault(&args.db, store.as_ref(), lang).await?;
            let retention = args.retention_days.unwrap_or(RETENTION_DAYS);
            serve(&args, listener, store, vault, retention, |_| {}).await
        }
        Command::Demo {
            serve,
            seed,
            people,
            days,
        } => {
            init_logs(&serve.log_format);
            demo(&serve, seed, people, days, lang).await
        }
        Command::Migrate { db } => {
            let store = open_store(&db).await?;
            say!(
                "{}",
                tf(lang, "cli.migrate.done", &[("backend", store.backend())])
            );
            Ok(())
        }
        Command::Import {
            what:
                ImportCommand::List {
                    file,
                    name,
                    column,
                    db,
                },
        } => {
            // the name as the upload page takes it: one line of 1–100 characters
            let name = epigrid_core::validate::validate_text("name", &name, 100, true)
                .map_err(|e| anyhow!("--name: {}", e.message(lang)))?
                .unwrap_or_default();
            let bytes = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            require_database(&db)?;
            let store = open_store(&db).await?;
            let vault = open_vault(&db, store.as_ref(), lang).await?;
            let mut pairs = Vec::new();
            for c in &column {
                match c.split_once('=') {
                    Some((k, v)) if epigrid_core::matching::TARGETS.contains(&k.trim()) => {
                        pairs.push((format!("col_{}", k.trim()), v.to_string()))
                    }
                    _ => bail!(
                        "--column {c:?}: use TARGET=HEADING, TARGET one of {}",
                        epigrid_core::matching::TARGETS.join(", ")
                    ),
                }
            }
            let map = epigrid_core::matching::ColumnMap::from_pairs(
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let parsed = match epigrid_web::read_list(&bytes, &map) {
                Ok(p) => p,
                Err(e) => bail!(e.messages(lang).join("\n")),
            };
            for (line, e) in &parsed.errors {
                tell!(
                    "{}",
                    tf(
                        lang,
                        "cli.import.row_error",
                        &[
                            ("line", &line.to_string()),
                            ("field", &e.field),
                            ("message", &e.message(lang))
                        ]
                    )
                );
            }
            let total = parsed.rows.len().max(1);
            let last = std::sync::atomic::AtomicUsize::new(0);
            let progress = |done: usize| {
                let pct = done * 100 / total;
                let before = last.load(std::sync::atomic::Ordering::Relaxed);
                if (pct >= before + 5 || done == total)
                    && last
                        .compare_exchange(
                            before,
                            pct,
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    eprint!(
                        "\r{} {pct:>3}% ({done}/{total})",
                        tf(lang, "cli.import.matching", &[])
                    );
                }
            };
            let found =
                epigrid_core::matching::match_rows(store.as_ref(), &vault, &parsed.rows, &progress)
                    .await?;
            tell!();
            let list = parsed.record(&name, None, "/");
            store
                .insert_list(&list, &parsed.kept_errors(), &found)
                .await?;
            say!(
                "{}",
                tf(
                    lang,
                    "cli.import.list.done",
                    &[
                        ("id", &list.id.to_string()),
                        ("rows", &parsed.rows.len().to_string()),
                        ("bad", &list.bad_rows.to_string()),
                        ("matched", &found.len().to_string()),
                        (
                            "review",
                            &found.iter().filter(|m| m.review).count().to_string()
                        ),
                    ]
                )
            );
            Ok(())
        }
        Command::Import {
            what: ImportCommand::Proximity { file, db, source },
        } => {
            let bytes = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            require_database(&db)?;
            let store = open_store(&db).await?;
            let vault = open_vault(&db, store.as_ref(), lang).await?;
            match import::import_proximity(store.as_ref(), &vault, &bytes, &source, lang).await? {
                Ok(report) => {
                    for (line, col) in &report.unknown {
                        tell!(
                            "{}",
                            tf(
                                lang,
                                "cli.import.unknown_person",
                                &[("line", &line.to_string()), ("field", col)]
                            )
                        );
                    }
                    say!(
                        "{}",
                        tf(
                            lang,
                            "cli.import.proximity.done",
                            &[
                                ("n", &report.imported.to_string()),
                                ("unknown", &report.unknown.len().to_string())
                            ]
                        )
                    );
                    Ok(())
                }
                Err(errors) => Err(refused(lang, &errors)),
            }
        }
        Command::Import {
            what: ImportCommand::Areas { file, db },
        } => {
            let bytes = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            require_database(&db)?;
            let store = open_store(&db).await?;
            match import::import_areas(store.as_ref(), &bytes, lang).await? {
                Ok(report) => {
                    say!(
                        "{}",
                        tf(
                            lang,
                            "cli.import.areas.done",
                            &[
                                ("rows", &report.rows.to_string()),
                                ("changed", &report.changed.to_string())
                            ]
                        )
                    );
                    Ok(())
                }
                Err(errors) => Err(refused(lang, &errors)),
            }
        }
        Command::Bench {
            what:
                BenchCommand::Http {
                    db,
                    seconds,
                    connections,
                    rounds,
                },
        } => bench_http(db, seconds, connections, rounds).await,
        Command::Bench {
            what: BenchCommand::Match { people, rows, db },
        } => bench_match(people, rows, db).await,
        Command::Bench {
            what:
                BenchCommand::Search {
                    db,
                    people,
                    queries,
                },
        } => bench_search(db, people, queries).await,
        Command::Bench {
            what:
                BenchCommand::Trace {
                    registrations,
                    people,
                    sites,
                    days,
                    pg,
                },
        } => bench_trace(registrations, people, sites, days, pg).await,
        Command::User {
            what:
                UserCommand::Add {
                    db,
                    username,
                    password,
                    role,
                    area,
                },
        } => {
            require_database(&db)?;
            let store = open_store(&db).await?;
            let user = add_user(store.as_ref(), &username, &password, &role, &area, lang).await?;
            say!(
                "{}",
                tf(
                    lang,
                    "cli.user.added",
                    &[
                        ("username", &user.username),
                        ("role", user.role.as_str()),
                        ("area", &user.area_code)
                    ]
                )
            );
            Ok(())
        }
    }
}

/// A store for a benchmark: the given database, or a fresh SQLite one; filled with the demo
/// city of `people` people when empty.
async fn bench_store(db: Option<String>, people: u32) -> Result<(String, Arc<dyn Store>, Vault)> {
    let db = match db {
        Some(d) => d,
        None => {
            let dir = std::env::temp_dir().join(format!(
                "epigrid-bench-{}",
                epigrid_core::vault::random_token(4)
            ));
            format!("sqlite://{}/bench.db", dir.display())
        }
    };
    let args = DbArgs {
        db: db.clone(),
        key_file: None,
        durability: "process".into(),
    };
    let store = open_store(&args).await?;
    let vault = open_vault(&args, store.as_ref(), cli_lang()).await?;
    if store.area_count().await? == 0 {
        let started = std::time::Instant::now();
        let opts = demo::DemoOptions {
            seed: 1,
            people,
            days: 1,
            now: Utc::now(),
            tz: parse_offset("+08:00")?,
        };
        let s = demo::build(store.as_ref(), &vault, &opts).await?;
        tell!(
            "built {} registrations of {people} people in {:.0} s",
            s.registrations,
            started.elapsed().as_secs_f64()
        );
    }
    Ok((db, store, vault))
}

async fn bench_trace(
    n: usize,
    people: u32,
    sites: u32,
    days: u32,
    pg: Option<String>,
) -> Result<()> {
    use epigrid_core::trace::{Records, TraceParams};
    let t = std::time::Instant::now();
    let visits = bench::random_visits(n, people, sites, days, 42);
    let gen_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let records = Records::new(visits.clone());
    let index_s = t.elapsed().as_secs_f64();
    say!("{n} visits, {people} people, {sites} sites, {days} days: generated in {gen_s:.1} s, indexed in {index_s:.1} s");
    let params = TraceParams {
        from: 0,
        to: i64::from(days) * 86_400,
        ..Default::default()
    };
    let mut rng = epigrid_core::rng::Rng::new(7);
    let one: Vec<u32> = (0..200)
        .map(|_| rng.below(u64::from(people)) as u32)
        .collect();
    let mut ms = Vec::new();
    let mut found_a = 0;
    for p in &one {
        let t = std::time::Instant::now();
        found_a += records.trace(*p, &params).len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (a50, a95, _) = bench::percentiles(ms);
    let hundred: Vec<u32> = (0..100)
        .map(|_| rng.below(u64::from(people)) as u32)
        .collect();
    let p2 = TraceParams {
        degree: 2,
        ..params.clone()
    };
    let t = std::time::Instant::now();
    let found_b: usize = records.trace_many(&hundred, &p2).iter().map(Vec::len).sum();
    let b_ms = t.elapsed().as_secs_f64() * 1000.0;
    say!("engine (a) first degree, one person: p50 {a50:.3} ms, p95 {a95:.3} ms ({:.1} contacts on average)", found_a as f64 / one.len() as f64);
    say!(
        "engine (b) first + second degree, 100 people: {b_ms:.1} ms on {} threads ({found_b} contacts)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    if let Some(url) = pg {
        let t = std::time::Instant::now();
        let client = bench::load_pg(&url, &visits).await?;
        say!(
            "PostgreSQL: loaded and indexed in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        let stmt = client.prepare(bench::SQL_FIRST).await?;
        let mut ms = Vec::new();
        for p in &one {
            let t = std::time::Instant::now();
            let _ = client.query(&stmt, &[&(*p as i32)]).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let (s50, s95, _) = bench::percentiles(ms);
        let ids: Vec<i32> = hundred.iter().map(|p| *p as i32).collect();
        let t = std::time::Instant::now();
        let row = client.query_one(bench::SQL_SECOND, &[&ids]).await?;
        let sql_b = t.elapsed().as_secs_f64() * 1000.0;
        let (f, s2): (i64, i64) = (row.get(0), row.get(1));
        say!(
            "SQL (a): p50 {s50:.3} ms, p95 {s95:.3} ms  -> engine is {:.1}x faster at p50",
            s50 / a50.max(1e-6)
        );
        say!("SQL (b): {sql_b:.0} ms ({f} first-degree pairs, {s2} second-degree pairs)  -> engine is {:.1}x faster", sql_b / b_ms.max(1e-6));
        client
            .batch_execute("DROP TABLE IF EXISTS bench_visits")
            .await?;
    }
    Ok(())
}

async fn bench_match(people: u32, rows: usize, db: Option<String>) -> Result<()> {
    use epigrid_core::matching::{parse_list, MatchIndex, Passes};
    use std::time::Instant;
    let vault = Vault::new(&[42u8; 32]);
    let t = Instant::now();
    let data = epigrid::bench::match_data(&vault, people, rows);
    say!(
        "generated {} people and a {rows}-row list ({:.1} MB) in {:.1} s",
        data.people.len(),
        data.csv.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let index = MatchIndex::new(data.people, data.plates);
    let build = t.elapsed().as_secs_f64();
    say!("index of {} people built in {build:.2} s", index.len());
    let rate = |n: usize, secs: f64| n as f64 / secs;
    let mut best = (f64::MAX, f64::MAX, f64::MAX);
    let mut counts = (0, 0, 0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        let parsed = parse_list(&data.csv);
        let parse = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let exact = index.match_rows(&vault, &parsed.rows, Passes::Exact, &|_| {});
        let exact_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let fuzzy = index.match_rows(&vault, &parsed.rows, Passes::Fuzzy, &|_| {});
        let fuzzy_s = t.elapsed().as_secs_f64();
        best = (best.0.min(parse), best.1.min(exact_s), best.2.min(fuzzy_s));
        counts = (
            parsed.rows.len(),
            parsed.bad_lines(),
            exact.len(),
            fuzzy.len(),
        );
    }
    let (parse, exact, fuzzy) = best;
    say!(
        "{} valid rows, {} bad rows; {} exact matches, {} fuzzy matches (best of 3 runs, {} threads)",
        counts.0,
        counts.1,
        counts.2,
        counts.3,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    say!(
        "read + validate:            {parse:.3} s  {:>12.0} rows/s",
        rate(rows, parse)
    );
    say!(
        "exact match (blind index):  {exact:.3} s  {:>12.0} rows/s",
        rate(rows, exact)
    );
    say!(
        "exact pass (both):          {:.3} s  {:>12.0} rows/s",
        parse + exact,
        rate(rows, parse + exact)
    );
    say!(
        "fuzzy pass (name+birth, plate): {fuzzy:.3} s  {:>12.0} rows/s",
        rate(rows, fuzzy)
    );
    if let Some(db) = db {
        let args = DbArgs {
            db,
            key_file: None,
            durability: "process".into(),
        };
        let store = open_store(&args).await?;
        let t = Instant::now();
        let ix = MatchIndex::load(store.as_ref()).await?;
        say!(
            "loading the index of {} people from {}: {:.2} s",
            ix.len(),
            store.backend(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn bench_search(db: Option<String>, people: u32, queries: usize) -> Result<()> {
    use epigrid_core::person::PersonQuery;
    use epigrid_core::validate::DocType;
    let (_, store, vault) = bench_store(db, people).await?;
    // Sample people from recent registrations, with their numbers decrypted as a user would type them.
    let sample = store
        .registrations(
            &Scope::all(),
            &epigrid_core::model::RegistrationFilter {
                limit: 5000,
                ..Default::default()
            },
        )
        .await?;
    let mut docs = Vec::new();
    let mut phones = Vec::new();
    let mut plates = Vec::new();
    let mut names = Vec::new();
    for r in sample
        .iter()
        .step_by((sample.len() / queries.max(1)).max(1))
        .take(queries)
    {
        if let Some(s) = store.person_secrets(r.person_id, &Scope::all()).await? {
            let pid = s.person_id;
            if let (Some(DocType::CnId), Some(c)) = (s.doc_type, s.doc_cipher.as_ref()) {
                docs.push(vault.open(&format!("persons.doc:{pid}"), c)?);
            }
            if let Some(c) = s.phone_cipher.as_ref() {
                phones.push(vault.open(&format!("persons.phone:{pid}"), c)?);
            }
        }
        let chars: Vec<char> = r.name.chars().collect();
        names.push(
            chars[chars.len().saturating_sub(2)..]
                .iter()
                .collect::<String>(),
        );
    }
    let checkpoints = store
        .registrations(
            &Scope::all(),
            &epigrid_core::model::RegistrationFilter {
                kind: Some(SiteKind::Checkpoint),
                limit: 5000,
                ..Default::default()
            },
        )
        .await?;
    plates.extend(
        checkpoints
            .iter()
            .filter_map(|r| r.fields.plate.clone())
            .take(queries),
    );
    let scope = Scope::all();
    say!("store: {}  people: {people}", store.backend());
    let kinds: [(&str, Vec<PersonQuery>); 4] = [
        (
            "ID number",
            docs.iter()
                .map(|d| PersonQuery::Document {
                    index: vault.blind_index(DocType::CnId.index_purpose(), d),
                    doc_type: DocType::CnId,
                })
                .collect(),
        ),
        (
            "phone",
            phones
                .iter()
                .map(|p| PersonQuery::Phone(vault.blind_index("phone", p)))
                .collect(),
        ),
        (
            "plate",
            plates
                .iter()
                .map(|p| PersonQuery::Plate(p.clone()))
                .collect(),
        ),
        (
            "part of a name",
            names.iter().map(|n| PersonQuery::Name(n.clone())).collect(),
        ),
    ];
    for (label, qs) in kinds {
        let mut ms = Vec::with_capacity(qs.len());
        let mut found = 0usize;
        for q in &qs {
            let t = std::time::Instant::now();
            let hits = store.search_persons(&scope, q, 50).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            found += usize::from(!hits.is_empty());
        }
        let (p50, p95, max) = bench::percentiles(ms);
        say!("{label:<15} {:>4} queries  p50 {p50:>8.2} ms  p95 {p95:>8.2} ms  max {max:>8.2} ms  ({found} found)", qs.len());
    }
    Ok(())
}

async fn bench_http(
    db: Option<String>,
    seconds: u64,
    connections: usize,
    rounds: u32,
) -> Result<()> {
    let (db, store, vault) = bench_store(db, 500).await?;
    let site = store
        .sites(&Scope::all())
        .await?
        .into_iter()
        .find(|s| s.kind == SiteKind::Checkpoint && s.active)
        .ok_or_else(|| anyhow!("no active checkpoint site in {db}"))?;
    let state = AppState::new(store.clone(), vault, WebConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let app = epigrid_web::router(state);
    tokio::spawn(epigrid_web::serve::serve_forever(listener, app));
    let body = r#"{"name":"李四","id_type":"cn_id","id_number":"150802198503120019","phone":"13912345678","plate":"蒙L12345","origin":"420100","destination":"150802","companions":0,"temperature":36.6,"symptoms":[],"high_risk_travel":false}"#;
    let path = format!("/api/v1/sites/{}/registrations", site.token);
    say!(
        "store: {}  connections: {connections}  seconds: {seconds} each  rounds: {rounds}",
        store.backend()
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let trivial = bench::load(
            &addr,
            bench::request("GET", &addr, "/healthz", None),
            connections,
            seconds,
        )
        .await?;
        let regs = bench::load(
            &addr,
            bench::request("POST", &addr, &path, Some(body)),
            connections,
            seconds,
        )
        .await?;
        let ratio = regs.per_second / trivial.per_second.max(1.0);
        say!(
            "round {round}: GET /healthz {:>7.0} requests/s ({} failed)  POST registrations {:>7.0}/s ({} failed)  ratio {ratio:.2}",
            trivial.per_second, trivial.failed, regs.per_second, regs.failed
        );
        ratios.push(ratio);
    }
    let (median, lowest, highest) = bench::median_range(ratios);
    say!(
        "ratio registrations/healthz:  {median:.2} (median of {rounds}; lowest {lowest:.2}, highest {highest:.2})"
    );
    Ok(())
}

/// A panic's message can hold what the code was handling (a failed `unwrap` prints the value
/// it was given: a person's name or a cell of an uploaded list), and logs hold no personal
/// data: where a thread panicked is logged, not its message. `EPIGRID_PANIC_MESSAGES=1`
/// prints the whole message, for a developer on their own data.
fn quiet_panics() {
    let whole = std::env::var("EPIGRID_PANIC_MESSAGES").is_ok_and(|v| v == "1");
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if whole {
            return default(info);
        }
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if tracing::dispatcher::has_been_set() {
            tracing::error!(thread, at, "a thread panicked (its message is not logged)");
        } else {
            eprintln!("epigrid: thread '{thread}' panicked at {at} (its message is not shown)");
        }
    }));
}

fn main() -> std::process::ExitCode {
    quiet_panics();
    let cli = Cli::parse();
    let lang = cli_lang();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tell!("epigrid: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, lang)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tell!("epigrid: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
