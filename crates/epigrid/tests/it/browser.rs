//! Browser tests: the pages' JavaScript in a real headless Chromium, driven over the W3C
//! WebDriver protocol (ChromeDriver) with plain HTTP requests.
//!
//! `.ci/run` installs Debian's `chromium` and `chromium-driver` and sets
//! `EPIGRID_REQUIRE_BROWSER=1`, so there a missing browser fails the run; elsewhere these tests
//! say they were skipped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use epigrid_core::model::{Role, SiteKind};
use serde_json::{json, Value};

use crate::support::*;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    /// Ends chromedriver and the browsers it started: they share its process group (the
    /// browsers would otherwise outlive the test and keep using the CPU).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_driver() -> Option<(String, String)> {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let browser = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    Some((driver.to_string(), browser.to_string()))
}

impl Driver {
    /// A headless Chromium session, or `None` (test skipped) where none is installed.
    async fn start() -> Option<Driver> {
        let Some((driver, browser)) = find_driver() else {
            assert!(
                std::env::var("EPIGRID_REQUIRE_BROWSER").is_err(),
                "EPIGRID_REQUIRE_BROWSER is set but chromium / chromedriver are not installed"
            );
            eprintln!("browser test skipped: install chromium and chromium-driver to run it");
            return None;
        };
        let http = reqwest::Client::new();
        // A port free a moment ago may be taken before ChromeDriver binds it (tests run in
        // parallel): a driver that exits is started again on another.
        let mut d = None;
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            use std::os::unix::process::CommandExt;
            let child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let mut candidate = Driver {
                child,
                base: format!("http://127.0.0.1:{port}"),
                session: String::new(),
                http: http.clone(),
            };
            let mut up = false;
            for _ in 0..100 {
                if let Ok(r) = http.get(format!("{}/status", candidate.base)).send().await {
                    if r.status().is_success() {
                        up = true;
                        break;
                    }
                }
                if let Ok(Some(_)) = candidate.child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if up {
                d = Some(candidate);
                break;
            }
        }
        let mut d = d.expect("chromedriver answered on none of three ports");
        let profile = temp_dir("chromium");
        let v = d
            .raw(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": browser,
                        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                                 "--disable-gpu", "--lang=zh-CN",
                                 format!("--user-data-dir={}", profile.display())]
                    }
                }}}),
            )
            .await;
        d.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Some(d)
    }

    async fn raw(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let rq = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let r = rq.send().await.expect("WebDriver request");
        let v: Value = r.json().await.expect("WebDriver JSON");
        v["value"].clone()
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let v = self
            .raw(method, &format!("/session/{}{path}", self.session), body)
            .await;
        assert!(
            v.get("error").is_none(),
            "WebDriver {method} {path}: {}",
            v["message"]
        );
        v
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    async fn find(&self, css: &str) -> String {
        // pages load and scripts run asynchronously: look for a while
        for _ in 0..50 {
            let v = self
                .raw(
                    "POST",
                    &format!("/session/{}/element", self.session),
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                return id.to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no element {css} on {}",
            self.js("return location.href").await
        );
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), json!({}))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Waits until `script` (returning a boolean) is true.
    async fn wait_for(&self, what: &str, script: &str) {
        for _ in 0..100 {
            if self.js(script).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let body = self.js("return document.body.innerText").await;
        panic!("timed out waiting for {what}; the page says: {body}");
    }

    /// Picks the option with `value` in a select, as a person would (fires `change`).
    async fn select(&self, css: &str, value: &str) {
        self.wait_for(
            &format!("option {value} in {css}"),
            &format!("var s=document.querySelector('{css}');return !!s && !s.hidden && !!s.querySelector('option[value=\"{value}\"]')"),
        )
        .await;
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_public_form_picks_the_origin_remembers_the_person_and_confirms() {
    let Some(b) = Driver::start().await else {
        return;
    };
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let form = format!("{}/s/{}?lang=en", app.base, site.token);
    b.goto(&form).await;
    let id = cn_id("150802", "19800101", 123);
    b.type_into("#name", "张三").await;
    b.type_into("#id_number", &id).await;
    b.type_into("#phone", "139123").await;
    b.type_into("#temperature", "36.6").await;
    b.type_into("#destination", "临河").await;
    // origin: province → city → county, filled in by the script from the divisions API
    b.select("#origin_province", "42").await;
    b.select("#origin_city", "4201").await;
    b.select("#origin_county", "420102").await;
    assert_eq!(
        b.js("return document.getElementById('origin').value").await,
        json!("420102")
    );
    assert_eq!(
        b.js(
            "var s=document.getElementById('origin_county');return s.options[s.selectedIndex].text"
        )
        .await,
        json!("Jiang'an District 江岸区"),
        "an English page names the places in pinyin too"
    );
    b.click("input[name=symptoms][value=none]").await;
    b.click("input[name=high_risk_travel][value=false]").await;
    // a mistyped phone: the form comes back with the city and county still chosen
    b.click("#reg button[type=submit]").await;
    b.wait_for(
        "the form sent back",
        "return !!document.getElementById('errors')",
    )
    .await;
    b.wait_for(
        "the county chosen again",
        "var k=document.getElementById('origin_county');return !!k && k.value === '420102' \
         && document.getElementById('origin_city').value === '4201'",
    )
    .await;
    b.type_into("#phone", "13912345678").await;
    b.click("#remember").await;
    b.click("#reg button[type=submit]").await;
    b.wait_for(
        "the confirmation",
        "return location.pathname.indexOf('/r/') > 0",
    )
    .await;
    let code = b
        .js("return document.getElementById('vcode').textContent.trim()")
        .await;
    assert_eq!(code.as_str().map(str::len), Some(4), "a verification code");
    // the live clock runs
    b.wait_for(
        "the clock",
        "var t=document.body.innerText;return /\\d\\d:\\d\\d:\\d\\d/.test(t)",
    )
    .await;
    // stored as entered, with the county chosen in the picker
    let admin = app.token("adm", Role::Admin, "150800").await;
    let v: Value = app
        .get("/api/v1/registrations", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    let r = &v["items"][0];
    assert_eq!(
        (r["origin"].as_str(), r["verification_code"].as_str()),
        (Some("420102"), code.as_str())
    );
    // the person's details come back on this phone only (localStorage), not from the server
    b.goto(&form).await;
    b.wait_for(
        "prefill",
        &format!("return document.getElementById('id_number').value === '{id}'"),
    )
    .await;
    assert_eq!(
        b.js("return document.getElementById('name').value").await,
        json!("张三")
    );
    let html = app
        .client
        .get(&form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !html.contains(&id),
        "the server never sends the number back"
    );
    // "register another person" is not filled with this phone's owner's details, and does
    // not forget them
    b.goto(&format!("{form}?another=1")).await;
    b.wait_for("the form", "return !!document.getElementById('reg')")
        .await;
    assert_eq!(
        b.js("return [document.getElementById('id_number').value, document.getElementById('remember').checked, !!localStorage.getItem('epigrid.me')]")
            .await,
        json!(["", false, true])
    );
    b.goto(&form).await;
    b.wait_for(
        "prefill again",
        &format!("return document.getElementById('id_number').value === '{id}'"),
    )
    .await;
    // unticking "remember" forgets them
    b.click("#remember").await;
    b.type_into("#temperature", "36.5").await;
    b.type_into("#destination", "临河").await;
    b.select("#origin_province", "15").await;
    b.click("input[name=symptoms][value=none]").await;
    b.click("input[name=high_risk_travel][value=false]").await;
    b.click("#reg button[type=submit]").await;
    b.wait_for(
        "the confirmation",
        "return location.pathname.indexOf('/r/') > 0",
    )
    .await;
    assert_eq!(
        b.js("return localStorage.getItem('epigrid.me')").await,
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_see_registrations_live_and_upload_a_list_with_progress() {
    let Some(b) = Driver::start().await else {
        return;
    };
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    b.goto(&format!("{}/login?lang=en", app.base)).await;
    b.type_into("input[name=username]", "epi").await;
    b.type_into("input[name=password]", PASSWORD).await;
    b.click("form button").await;
    b.wait_for("login", "return location.pathname === '/'")
        .await;

    // the live feed gets a registration made elsewhere, without a reload
    b.goto(&format!("{}/feed", app.base)).await;
    b.wait_for(
        "the feed to connect",
        // "● Live" / "● 实时": set on open, and the server subscribes before it answers
        "return !!window.EventSource && document.getElementById('status').textContent.indexOf('●') >= 0",
    )
    .await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let known = cn_id("150802", "19850312", 84);
    let r = app
        .register(&site, &checkpoint_body(&known, "赵四", "13600000084"))
        .await;
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    let code = reg["verification_code"].as_str().unwrap().to_string();
    b.wait_for(
        "the new registration in the feed",
        &format!("return document.getElementById('feed').innerText.indexOf('{code}') >= 0"),
    )
    .await;
    let feed = b
        .js("return document.getElementById('feed').innerText")
        .await;
    assert!(
        !feed.as_str().unwrap_or_default().contains(&known),
        "masked in the feed"
    );
    // the live item says what the server-rendered one does (plate, origin) and opens the
    // registration
    let feed = feed.as_str().unwrap_or_default();
    assert!(feed.contains("蒙L12345") && feed.contains("36.5"), "{feed}");
    assert_eq!(
        b.js("return document.querySelector('#feed li a').getAttribute('href')")
            .await,
        json!(format!("/registrations/{}", reg["id"].as_str().unwrap()))
    );

    // a list uploaded from the page: the script sends it with progress and opens the result
    let dir = temp_dir("browser-list");
    let file = dir.join("名单.csv");
    std::fs::write(&file, format!("姓名,身份证号\n赵四,{known}\n王五,123\n")).unwrap();
    b.goto(&format!("{}/lists?lang=en", app.base)).await;
    b.type_into("input[name=name]", "K1234 passengers").await;
    let input = b.find("input[type=file]").await;
    b.cmd(
        "POST",
        &format!("/element/{input}/value"),
        json!({ "text": file.display().to_string() }),
    )
    .await;
    b.click("#upload button").await;
    b.wait_for(
        "the list's page",
        "return location.pathname.indexOf('/lists/') === 0 && location.search === '?uploaded=1'",
    )
    .await;
    let page = b.js("return document.body.innerText").await;
    let page = page.as_str().unwrap_or_default();
    assert!(
        page.contains("K1234 passengers") && page.contains("Matched."),
        "{page}"
    );
    assert!(page.contains("ID number") && page.contains("赵*"), "{page}");
    assert_eq!(
        app.get("/api/v1/lists/x/matches", Some(&epi))
            .await
            .status(),
        404,
        "unknown list"
    );
}
