//! Tests that run the built `epigrid` binary as a user would: the CLI contract, and the
//! durability promise (an acknowledged registration survives `kill -9`).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use epigrid_core::store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_epigrid");

fn epigrid(args: &[&str]) -> (bool, String) {
    epigrid_with(args, &[])
}

/// [`epigrid`] with environment variables set.
fn epigrid_with(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("LANG", "en_US.UTF-8")
        .envs(env.iter().copied())
        .output()
        .expect("run epigrid");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts `epigrid ARGS --db DB` on a port that was free a moment ago (`serve` prints no
    /// address to read back; see [`Server::demo`] for the race-free way).
    fn start(args: &[&str], db: &str) -> Server {
        let port = free_port();
        Server::spawn(args, db, &format!("127.0.0.1:{port}"))
    }

    fn spawn(args: &[&str], db: &str, bind: &str) -> Server {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--db", db, "--bind", bind]);
        let child = Command::new(BIN)
            .args(&all)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn epigrid");
        Server {
            child,
            base: format!("http://{bind}"),
        }
    }

    /// Starts `epigrid demo ARGS` on a port the system picks, and returns it with what the
    /// demo printed once it was listening (its address, login and site URLs).
    fn demo(args: &[&str], db: &str) -> (Server, String) {
        let mut all = vec!["demo"];
        all.extend_from_slice(args);
        let mut server = Server::spawn(&all, db, "127.0.0.1:0");
        let mut out = server.child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut s = Vec::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&s).contains("/feed") {
                    break;
                }
            }
            String::from_utf8_lossy(&s).into_owned()
        });
        for _ in 0..1200 {
            if reader.is_finished() {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("epigrid demo exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(reader.is_finished(), "the demo printed no address in 120 s");
        let printed = reader.join().expect("reader");
        server.base = printed
            .lines()
            .find_map(|l| l.trim().strip_prefix("epigrid demo: "))
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| panic!("the demo's address in its output: {printed}"));
        (server, printed)
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        for _ in 0..600 {
            if let Ok(r) = client.get(format!("{}/healthz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("epigrid exited early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("epigrid did not become ready");
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["demo", "--help"],
        vec!["migrate", "--help"],
        vec!["import", "--help"],
        vec!["import", "areas", "--help"],
        vec!["import", "proximity", "--help"],
        vec!["import", "list", "--help"],
        vec!["bench", "http", "--help"],
        vec!["bench", "search", "--help"],
        vec!["bench", "match", "--help"],
        vec!["user", "--help"],
        vec!["user", "add", "--help"],
    ] {
        let (ok, out) = epigrid(&args);
        assert!(ok && out.contains("Usage"), "{args:?}: {out}");
    }
    let (ok, out) = epigrid(&["serve", "--db", "mysql://x"]);
    assert!(
        !ok && out.contains("sqlite://"),
        "a clear error for an unsupported --db: {out}"
    );
    // settings that cannot work are refused, not quietly replaced
    for (args, named) in [
        (vec!["serve", "--log-format", "xml"], "xml"),
        (vec!["serve", "--overdue-hours=-5"], "-5"),
        (vec!["serve", "--retention-days", "a month"], "a month"),
        (vec!["serve", "--base-url", "not a url"], "not a url"),
        // past chrono's dates, after half the city was built
        (vec!["demo", "--days", "100000000"], "1..=3650"),
    ] {
        let (ok, out) = epigrid(&args);
        assert!(!ok && out.contains(named), "{args:?}: {out}");
    }
    let dir = temp_dir("cli-missing");
    let missing = dir.join("typo").join("epigrid.db");
    let (ok, out) = epigrid(&[
        "user",
        "add",
        "--db",
        &format!("sqlite://{}", missing.display()),
        "--username",
        "boss",
        "--password",
        "long-enough-pw",
        "--role",
        "admin",
        "--area",
        "150800",
    ]);
    assert!(!ok && out.contains("no database"), "{out}");
    let list = dir.join("list.csv");
    std::fs::write(&list, "name,id_number\n张三,11010519491231002X\n").unwrap();
    let missing_db = format!("sqlite://{}", missing.display());
    let list_path = list.to_str().unwrap();
    for args in [
        vec![
            "import",
            "list",
            list_path,
            "--name",
            "K1",
            "--db",
            &missing_db,
        ],
        vec!["import", "proximity", list_path, "--db", &missing_db],
    ] {
        let (ok, out) = epigrid(&args);
        assert!(!ok && out.contains("no database"), "{args:?}: {out}");
    }
    assert!(
        !dir.join("typo").exists(),
        "a mistyped path leaves nothing behind"
    );
    let (ok, out) = epigrid(&["bench", "http", "--rounds", "0"]);
    assert!(
        !ok && out.contains("--rounds") && out.contains("1..=20"),
        "a clear error for zero rounds: {out}"
    );
}

/// A server or demo that cannot listen where it is told fails before it makes anything: no
/// database, no key file left behind by a mistyped address.
#[test]
fn a_bad_address_fails_a_start_before_anything_is_created() {
    let dir = temp_dir("cli-bind");
    let db = format!("sqlite://{}", dir.join("s.db").display());
    for command in ["serve", "demo"] {
        let (ok, out) = epigrid(&[command, "--db", &db, "--bind", "127.0.0.1:99999"]);
        assert!(
            !ok && out.contains("cannot listen on 127.0.0.1:99999"),
            "{out}"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{command}");
        // nor a time zone offset no place has (600000 hours overflowed, 1193047 wrapped)
        for offset in ["600000", "1193047", "+14:60", "+15:00", "-+5", "8h"] {
            let flag = format!("--tz-offset={offset}");
            let (ok, out) = epigrid(&[command, "--db", &db, "--bind", "127.0.0.1:0", &flag]);
            assert!(
                !ok && out.contains("expected +HH:MM from -14:00 to +14:00"),
                "{offset}: {out}"
            );
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{command}");
    }
}

#[test]
fn user_add_and_area_import_report_bad_input_and_keep_data() {
    let dir = temp_dir("cli");
    let db = format!("sqlite://{}/epigrid.db", dir.display());
    let csv = dir.join("areas.csv");
    std::fs::write(
        &csv,
        "code,name,parent_code,level\n150800,巴彦淖尔市,,1\n150802,临河区,150800,2\n",
    )
    .unwrap();
    // a database that is not there is not made by an import (nor by serve): migrate makes it
    let (ok, out) = epigrid(&["import", "areas", csv.to_str().unwrap(), "--db", &db]);
    assert!(!ok && out.contains("no database at"), "{out}");
    let (ok, out) = epigrid(&["serve", "--db", &db, "--bind", "127.0.0.1:0"]);
    assert!(!ok && out.contains("epigrid migrate"), "{out}");
    assert!(!dir.join("epigrid.db").exists());
    let (ok, out) = epigrid(&["migrate", "--db", &db]);
    assert!(ok, "{out}");
    let (ok, out) = epigrid(&["import", "areas", csv.to_str().unwrap(), "--db", &db]);
    assert!(ok, "{out}");
    let add_boss = |password: &str, role: &str, area: &str| {
        epigrid(&[
            "user",
            "add",
            "--db",
            &db,
            "--username",
            "boss",
            "--password",
            password,
            "--role",
            role,
            "--area",
            area,
        ])
    };
    let (ok, out) = add_boss("long-enough-pw", "king", "159999");
    assert!(
        !ok && out.contains("king") && out.contains("159999"),
        "role and area errors named: {out}"
    );
    let (ok, out) = add_boss("            ", "admin", "150802");
    assert!(
        !ok && out.contains("not counting spaces"),
        "a password of spaces: {out}"
    );
    let (ok, out) = add_boss("long-enough-pw", "admin", "150802");
    assert!(ok, "{out}");
    let (ok, out) = add_boss("long-enough-pw", "admin", "150802");
    assert!(!ok && out.contains("taken"), "{out}");
    // `demo` on a database it did not build (a deployment's, by EPIGRID_DB, say) does not
    // reset its admin's password: it refuses and serves nothing
    let (ok, out) = epigrid(&["demo", "--db", &db, "--bind", "127.0.0.1:0"]);
    assert!(
        !ok && out.contains("was not made by `epigrid demo`"),
        "{out}"
    );
    // the account made on the command line is in the audit log, once
    let created = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = epigrid_store_sqlite::SqliteStore::open(
            &dir.join("epigrid.db"),
            epigrid_store_sqlite::Durability::Process,
        )
        .unwrap();
        let filter = epigrid_core::model::AuditFilter {
            action: Some("user.create".into()),
            limit: 10,
            ..Default::default()
        };
        store
            .audit_log(&epigrid_core::area::Scope::all(), &filter)
            .await
            .unwrap()
    });
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(created[0].username.starts_with("cli:"), "{created:?}");
    assert_eq!(created[0].detail, "admin");
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "code,name,parent_code,level\n150802001,车站街道,150802,3\n15080200X,坏,150802,3\n150821001,无父,150821,3\n").unwrap();
    let (ok, out) = epigrid(&["import", "areas", bad.to_str().unwrap(), "--db", &db]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("3") && out.contains("4"),
        "line numbers of the bad rows: {out}"
    );
    assert!(
        out.contains("2 rows are wrong"),
        "rows counted, not problems: {out}"
    );
    let (ok, out) = epigrid(&["import", "areas", csv.to_str().unwrap(), "--db", &db]);
    assert!(
        ok && out.contains("0"),
        "re-import changes nothing and the refused file left nothing: {out}"
    );
    // a list with headings of its own: columns chosen on the command line
    let list = dir.join("list.csv");
    std::fs::write(
        &list,
        "证件,联系方式\n11010519491231002X,13912345678\n110105194912310021,\n",
    )
    .unwrap();
    let path = list.to_str().unwrap();
    // `import list` of this file with extra arguments
    let import_list = |extra: &[&str]| {
        let mut args = vec!["import", "list", path, "--name", "l", "--db", &db];
        args.extend_from_slice(extra);
        epigrid(&args)
    };
    let (ok, out) = import_list(&[]);
    assert!(!ok && out.contains("no column to match on"), "{out}");
    let (ok, out) = import_list(&["--column", "id_number=证件", "--column", "phone=2"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("1 valid rows, 1 with errors") && out.contains("line 3, id_number"),
        "{out}"
    );
    let (ok, out) = import_list(&["--column", "shoe=1"]);
    assert!(!ok && out.contains("TARGET=HEADING"), "{out}");
    std::fs::write(&list, "证件,联系方式\n").unwrap();
    let (ok, out) = import_list(&["--column", "id_number=证件"]);
    assert!(!ok && out.contains("no rows"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_refuses_a_key_its_data_was_not_sealed_with() {
    // a database made before key checks were recorded: people sealed with the tests' key
    let dir = temp_dir("keys");
    let path = dir.join("epigrid.db");
    {
        let store = epigrid_store_sqlite::SqliteStore::open(
            &path,
            epigrid_store_sqlite::Durability::Process,
        )
        .unwrap();
        let sites = seed(&store).await;
        registered_person(&store, &sites[0], &cn_id("150802", "19800101", 7), "甲").await;
    }
    let db = format!("sqlite://{}", path.display());
    // a list from another agency is matched against the people, so it needs their key
    let list = dir.join("list.csv");
    std::fs::write(&list, "id_number\n11010519491231002X\n").unwrap();
    let list = list.to_str().unwrap();
    let add = |name: &str, env: &[(&str, &str)], key_file: Option<&str>| {
        let mut args = vec!["import", "list", list, "--name", name, "--db", &db];
        args.extend(key_file.map(|k| ["--key-file", k]).into_iter().flatten());
        epigrid_with(&args, env)
    };
    let theirs = "2a".repeat(32); // the tests' key, [42; 32]
    let other = "07".repeat(32);
    // a list's name is one line of 1–100 characters, as the upload page takes it
    for bad in [" ", &"名".repeat(101), "a\u{7}b"] {
        let (ok, out) = add(bad, &[("EPIGRID_KEY", &theirs)], None);
        assert!(!ok && out.contains("--name"), "{bad:?}: {out}");
    }
    let (ok, out) = add("list_a", &[("EPIGRID_KEY", &other)], None);
    assert!(
        !ok && out.contains("EPIGRID_KEY") && out.contains("not the one"),
        "{out}"
    );
    // the key that opens the data is recorded on first use; another is refused from then on
    let (ok, out) = add("list_b", &[("EPIGRID_KEY", &theirs)], None);
    assert!(ok, "{out}");
    let (ok, out) = add("list_c", &[], None);
    assert!(
        !ok && out.contains("no key file at") && out.contains("epigrid.key"),
        "no new key is made for a database that has one: {out}"
    );
    assert!(!dir.join("epigrid.key").exists());
    let wrong = dir.join("wrong.key");
    std::fs::write(&wrong, &other).unwrap();
    let (ok, out) = add("list_d", &[], Some(wrong.to_str().unwrap()));
    assert!(
        !ok && out.contains("wrong.key") && out.contains("not the one"),
        "{out}"
    );
    let right = dir.join("right.key");
    std::fs::write(&right, &theirs).unwrap();
    let (ok, out) = add("list_e", &[], Some(right.to_str().unwrap()));
    assert!(ok, "{out}");
    // nothing refused was added
    let store =
        epigrid_store_sqlite::SqliteStore::open(&path, epigrid_store_sqlite::Durability::Process)
            .unwrap();
    let mut names: Vec<String> = store
        .lists(&epigrid_core::area::Scope::all(), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    names.sort();
    assert_eq!(names, ["list_b", "list_e"]);
    // the key that opened the data was recorded, and is the one the lists were made with
    assert_eq!(
        store.key_check().await.unwrap(),
        Some(vault().key_check()),
        "the first key that fits is recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_registrations_survive_kill_9() {
    let dir = temp_dir("kill9");
    let db = format!("sqlite://{}/epigrid.db", dir.display());
    let client = reqwest::Client::new();
    let (mut demo, stdout) = Server::demo(&["--seed", "3", "--people", "50", "--days", "1"], &db);
    demo.wait_ready(&client).await;
    let token = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("checkpoint"))
        .and_then(|l| l.rsplit("/s/").next())
        .expect("a checkpoint URL in the demo output")
        .trim()
        .to_string();

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let (client, base, token, acked, stop) = (
            client.clone(),
            demo.base.clone(),
            token.clone(),
            acked.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && i < 5000 {
                let body = checkpoint_body(
                    &cn_id("150802", "19850312", w * 100 + i % 100),
                    "张三",
                    "13912345678",
                );
                let r = client
                    .post(format!("{base}/api/v1/sites/{token}/registrations"))
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status() == 201 {
                        if let Ok(v) = r.json::<Value>().await {
                            if let Some(id) = v["id"].as_str() {
                                acked.lock().unwrap().push(id.to_string());
                            }
                        }
                    }
                }
                i += 1;
            }
        }));
    }
    // kill in the middle of the load (bounded: a server that stops acknowledging fails here)
    for _ in 0..3000 {
        if acked.lock().unwrap().len() >= 300 || workers.iter().all(|w| w.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    demo.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    let mut again = Server::start(&["serve"], &db);
    again.wait_ready(&client).await;
    // read back through the store directly: every acknowledged registration is there
    drop(again);
    let store = epigrid_store_sqlite::SqliteStore::open(
        &dir.join("epigrid.db"),
        epigrid_store_sqlite::Durability::Process,
    )
    .unwrap();
    let mut lost = 0;
    for id in &acked {
        let id = uuid::Uuid::parse_str(id).unwrap();
        if epigrid_core::store::Store::registration(&store, id, &epigrid_core::area::Scope::all())
            .await
            .unwrap()
            .is_none()
        {
            lost += 1;
        }
    }
    assert_eq!(
        lost,
        0,
        "{lost} of {} acknowledged registrations lost",
        acked.len()
    );
}
