//! Shared test fixtures: fresh databases of each backend, a small area tree, a running server.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use epigrid_core::area::Area;
use epigrid_core::model::{Role, Site, SiteKind, User};
use epigrid_core::store::Store;
use epigrid_core::vault::{random_token, Vault};
use epigrid_store_postgres::PgStore;
use epigrid_store_sqlite::{Durability, SqliteStore};
use epigrid_web::{AppState, WebConfig};
use uuid::Uuid;

pub const PASSWORD: &str = "test-password-123";

/// This test process's scratch folder, `$TMPDIR/epigrid-it/<pid>`. The first call removes
/// the folders of earlier runs whose process is gone (tests leave databases behind while
/// servers still hold them open, so nothing is removed while its process lives).
fn run_dir() -> &'static PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join("epigrid-it");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().to_string();
                let alive = std::path::Path::new("/proc").join(&pid).exists();
                if !alive && pid.chars().all(|c| c.is_ascii_digit()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        root.join(std::process::id().to_string())
    })
}

/// A fresh scratch directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = run_dir().join(format!("{tag}-{}", random_token(6)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

pub fn sqlite() -> (Arc<dyn Store>, PathBuf) {
    let dir = temp_dir("sqlite");
    let store =
        SqliteStore::open(&dir.join("epigrid.db"), Durability::Process).expect("open sqlite");
    (Arc::new(store), dir)
}

/// A PostgreSQL store in a schema of its own, when `EPIGRID_TEST_PG` is set. When it is set
/// and the server cannot be reached, the test fails: CI must test both stores.
pub async fn postgres() -> Option<Arc<dyn Store>> {
    postgres_with_client().await.map(|(store, _, _)| store)
}

/// [`postgres`], with a client of the same server and the name of the store's schema.
pub async fn postgres_with_client() -> Option<(Arc<dyn Store>, tokio_postgres::Client, String)> {
    let url = std::env::var("EPIGRID_TEST_PG")
        .ok()
        .filter(|u| !u.is_empty())?;
    let schema = format!("it_{}", random_token(6));
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("EPIGRID_TEST_PG is set but PostgreSQL cannot be reached");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create test schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-csearch_path%3D{schema}");
    let store = PgStore::connect(&scoped)
        .await
        .expect("open postgres store");
    Some((Arc::new(store), client, schema))
}

/// The first of `sites` in the county `county` (a code such as "150802").
pub fn site_in<'a>(sites: &'a [Site], county: &str) -> &'a Site {
    sites
        .iter()
        .find(|s| s.area_code.starts_with(county))
        .expect("a site in that county")
}

/// Every backend to run a store test against.
pub async fn stores() -> Vec<(&'static str, Arc<dyn Store>)> {
    let mut v: Vec<(&'static str, Arc<dyn Store>)> = vec![("sqlite", sqlite().0)];
    if let Some(pg) = postgres().await {
        v.push(("postgres", pg));
    }
    v
}

pub fn vault() -> Vault {
    Vault::new(&[42u8; 32])
}

/// City 150800 with counties 150802 (Linhe) and 150821 (Wuyuan), a town, a community with a
/// building and two units in each.
pub fn areas() -> Vec<Area> {
    let city = Area::new("150800", "巴彦淖尔市", 1, None);
    let mut v = vec![city.clone()];
    for (county, cname, town, community) in [
        ("150802", "临河区", "150802001", "150802001001"),
        ("150821", "五原县", "150821100", "150821100001"),
    ] {
        let c = Area::new(county, cname, 2, Some(&city));
        let t = Area::new(town, "测试街道", 3, Some(&c));
        let m = Area::new(community, "测试社区", 4, Some(&t));
        let b = Area::new(&format!("{community}001"), "1号楼", 5, Some(&m));
        let u1 = Area::new(&format!("{community}001001"), "1单元", 6, Some(&b));
        let u2 = Area::new(&format!("{community}001002"), "2单元", 6, Some(&b));
        v.extend([c, t, m, b, u1, u2]);
    }
    v
}

pub fn site(kind: SiteKind, area: &Area, name: &str) -> Site {
    Site {
        id: Uuid::now_v7(),
        token: random_token(16),
        kind,
        name: name.to_string(),
        area_code: area.code.clone(),
        area_path: area.path.clone(),
        active: true,
        default_stay_min: kind.default_stay_min(),
        // stores keep microseconds
        created_at: chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
            .unwrap_or_default(),
    }
}

/// The areas plus one site of every kind in each county's community.
pub async fn seed(store: &dyn Store) -> Vec<Site> {
    let areas = areas();
    store.upsert_areas(&areas).await.expect("areas");
    let mut sites = Vec::new();
    for a in areas.iter().filter(|a| a.level == 4) {
        for kind in SiteKind::ALL {
            let s = site(*kind, a, &format!("{} {}", a.code, kind.as_str()));
            store.insert_site(&s).await.expect("site");
            sites.push(s);
        }
    }
    sites
}

pub async fn user(store: &dyn Store, username: &str, role: Role, area_code: &str) -> User {
    let area = store
        .area(area_code)
        .await
        .expect("area")
        .expect("area exists");
    let u = User {
        id: Uuid::now_v7(),
        username: username.to_string(),
        password_hash: epigrid_web::hash_password(PASSWORD).expect("hash"),
        role,
        area_code: area.code,
        area_path: area.path,
        active: true,
        created_at: Utc::now(),
    };
    store.insert_user(&u).await.expect("user");
    u
}

/// A valid-check-digit mainland ID number.
pub fn cn_id(county: &str, birth: &str, seq: u32) -> String {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let body = format!("{county}{birth}{:03}", seq % 1000);
    let sum: u32 = body
        .chars()
        .zip(W)
        .map(|(c, w)| c.to_digit(10).unwrap_or(0) * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

/// A running epigrid server (the real router on a real socket) over an SQLite store.
pub struct TestApp {
    pub base: String,
    pub store: Arc<dyn Store>,
    pub sites: Vec<Site>,
    pub client: reqwest::Client,
    #[allow(dead_code)]
    pub dir: PathBuf,
}

impl TestApp {
    pub async fn start() -> TestApp {
        let (store, dir) = sqlite();
        TestApp::start_with(store, dir).await
    }

    pub async fn start_with(store: Arc<dyn Store>, dir: PathBuf) -> TestApp {
        TestApp::start_configured(store, dir, WebConfig::default()).await
    }

    pub async fn start_configured(store: Arc<dyn Store>, dir: PathBuf, cfg: WebConfig) -> TestApp {
        TestApp::serving(store, dir, cfg, epigrid_web::serve::HEADER_TIMEOUT).await
    }

    /// A server that gives clients `header_timeout` to send a request's headers.
    pub async fn serving(
        store: Arc<dyn Store>,
        dir: PathBuf,
        cfg: WebConfig,
        header_timeout: std::time::Duration,
    ) -> TestApp {
        let sites = seed(store.as_ref()).await;
        let state = AppState::new(store.clone(), vault(), cfg);
        let app = epigrid_web::router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(epigrid_web::serve::serve(
            listener,
            app,
            header_timeout,
            std::future::pending(),
        ));
        TestApp {
            base: format!("http://{addr}"),
            store,
            sites,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            dir,
        }
    }

    /// The newest `limit` registrations in the store, whoever may see them.
    pub async fn stored_registrations(&self, limit: u32) -> Vec<epigrid_core::model::Registration> {
        let filter = epigrid_core::model::RegistrationFilter {
            limit,
            ..Default::default()
        };
        let scope = epigrid_core::area::Scope::all();
        self.store
            .registrations(&scope, &filter)
            .await
            .expect("registrations")
    }

    pub fn site(&self, kind: SiteKind, county: &str) -> &Site {
        self.sites
            .iter()
            .find(|s| s.kind == kind && s.area_code.starts_with(county))
            .expect("seeded site")
    }

    /// The stored registration behind an anonymous 201 (a receipt that says nothing about the
    /// person), as an admin of the whole city reads it: personal fields masked.
    pub async fn stored(&self, receipt: reqwest::Response) -> serde_json::Value {
        assert_eq!(receipt.status(), 201);
        let r: serde_json::Value = receipt.json().await.expect("json");
        assert_eq!(
            r["verification_code"].as_str().map(str::len),
            Some(4),
            "{r}"
        );
        for personal in [
            "name",
            "id_number",
            "phone",
            "person_id",
            "plate",
            "address",
        ] {
            assert!(
                r.get(personal).is_none(),
                "the receipt shows {personal}: {r}"
            );
        }
        let id = r["id"].as_str().expect("receipt id");
        // one reader per receipt: registration ids are unique, verification codes need not be
        let token = self
            .token(&format!("reader-{id}"), Role::Admin, "150800")
            .await;
        let got = self
            .get(&format!("/api/v1/registrations/{id}"), Some(&token))
            .await;
        assert_eq!(got.status(), 200);
        got.json().await.expect("json")
    }

    /// Creates a user and returns a bearer token for them.
    pub async fn token(&self, username: &str, role: Role, area: &str) -> String {
        user(self.store.as_ref(), username, role, area).await;
        let r = self
            .client
            .post(format!("{}/api/v1/auth/token", self.base))
            .json(&serde_json::json!({"username": username, "password": PASSWORD}))
            .send()
            .await
            .expect("token request");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        v["token"].as_str().expect("token").to_string()
    }

    /// Logs an existing user in through the login form; returns the session cookie
    /// (`name=value`) for browser-style requests.
    pub async fn login_cookie(&self, username: &str) -> String {
        let login = self
            .client
            .post(format!("{}/login", self.base))
            .form(&[("username", username), ("password", PASSWORD)])
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), 303, "login redirects to the home page");
        login.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .split(';')
            .next()
            .expect("name=value")
            .to_string()
    }

    /// Creates a user and logs them in through the login form: their session cookie.
    pub async fn cookie(&self, username: &str, role: Role, area: &str) -> String {
        user(self.store.as_ref(), username, role, area).await;
        self.login_cookie(username).await
    }

    /// `POST path` with `form`, as the browser holding `cookie` sends it (redirects not
    /// followed).
    pub async fn post_page<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        cookie: &str,
        form: &T,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .form(form)
            .send()
            .await
            .expect("POST page")
    }

    /// A staff page as a logged-in browser gets it (status checked), as text.
    pub async fn page(&self, path: &str, cookie: &str) -> String {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .expect("GET page");
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.expect("page text")
    }

    /// A page as anyone would get it (no login), as text.
    pub async fn public_page(&self, path: &str) -> String {
        let r = self.get(path, None).await;
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.text().await.expect("text")
    }

    /// `GET path` as `token`, read as JSON (whatever the status).
    pub async fn get_json(&self, path: &str, token: &str) -> serde_json::Value {
        self.get(path, Some(token))
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut rq = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        rq.send().await.expect("GET")
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
    ) -> reqwest::Response {
        self.send_json(reqwest::Method::POST, path, body, token)
            .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
    ) -> reqwest::Response {
        self.send_json(reqwest::Method::PATCH, path, body, token)
            .await
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut rq = self
            .client
            .request(method, format!("{}{path}", self.base))
            .json(body);
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        rq.send().await.expect("request with a JSON body")
    }

    /// `POST url` (a whole address, as forms have) with form fields, as a browser without
    /// JavaScript sends them.
    pub async fn post_form<T: serde::Serialize + ?Sized>(
        &self,
        url: &str,
        form: &T,
    ) -> reqwest::Response {
        self.client
            .post(url)
            .form(form)
            .send()
            .await
            .expect("POST form")
    }

    /// The status of `POST path` with a JSON body.
    pub async fn post_status(
        &self,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
    ) -> reqwest::StatusCode {
        self.post_json(path, body, token).await.status()
    }

    /// The status of putting person `pid` in `category` as `token`.
    pub async fn set_category(
        &self,
        pid: &str,
        category: &str,
        reason: &str,
        token: &str,
    ) -> reqwest::StatusCode {
        self.post_status(
            &format!("/api/v1/persons/{pid}/category"),
            &serde_json::json!({"category": category, "reason": reason}),
            Some(token),
        )
        .await
    }

    pub async fn register(&self, site: &Site, body: &serde_json::Value) -> reqwest::Response {
        self.post_json(
            &format!("/api/v1/sites/{}/registrations", site.token),
            body,
            None,
        )
        .await
    }
}

/// The value of the first `<input name="NAME" value="...">` of a page (e.g. the CSRF token).
pub fn input_value(html: &str, name: &str) -> String {
    html.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no input {name} on the page"))
        .to_string()
}

/// A valid checkpoint registration body.
pub fn checkpoint_body(id_number: &str, name: &str, phone: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "id_type": "cn_id", "id_number": id_number, "phone": phone,
        "plate": "蒙L12345", "origin": "420100", "destination": "150802", "companions": 0,
        "temperature": 36.5, "symptoms": [], "high_risk_travel": false
    })
}

/// A self-registration at a checkpoint stored at `site` now; the person's id.
pub async fn registered_person(
    store: &dyn epigrid_core::store::Store,
    site: &epigrid_core::model::Site,
    id: &str,
    name: &str,
) -> Uuid {
    let body = checkpoint_body(id, name, "13911112222");
    register_at(store, site, &body, Utc::now()).await.person.id
}

/// A self-registration of `body` at `site` made at `now`, sealed, not stored.
pub fn seal_at(
    site: &epigrid_core::model::Site,
    body: &serde_json::Value,
    now: chrono::DateTime<Utc>,
) -> epigrid_core::model::NewRegistration {
    let input = epigrid_core::register::RegistrationInput::from_json(body).unwrap();
    let ctx = epigrid_core::register::Context {
        site,
        channel: epigrid_core::model::Channel::SelfService,
        by_user: None,
        now,
        tz: chrono::FixedOffset::east_opt(8 * 3600).unwrap(),
    };
    epigrid_core::register::seal(
        epigrid_core::register::validate(&input, &ctx).unwrap(),
        &ctx,
        &vault(),
    )
}

/// Stores a self-registration of `body` at `site` made at `now`; the stored registration.
pub async fn register_at(
    store: &dyn epigrid_core::store::Store,
    site: &epigrid_core::model::Site,
    body: &serde_json::Value,
    now: chrono::DateTime<Utc>,
) -> epigrid_core::model::NewRegistration {
    let reg = seal_at(site, body, now);
    store.insert_registration(reg.clone()).await.unwrap();
    reg
}

/// An error body's errors as `field:code` (`:code` for one about the whole request).
pub fn error_codes_of(v: &serde_json::Value) -> Vec<String> {
    let errors = v["errors"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    errors
        .iter()
        .map(|e| {
            let field = e["field"].as_str().unwrap_or("");
            format!("{field}:{}", e["code"].as_str().unwrap_or(""))
        })
        .collect()
}

/// A response's status and [`error_codes_of`] its body.
pub async fn status_and_codes(r: reqwest::Response) -> (u16, Vec<String>) {
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    (status, error_codes_of(&v))
}

/// Today in the servers' time zone (UTC+8, the default): the day observations count in.
pub fn local_today() -> chrono::NaiveDate {
    chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .date_naive()
}
