//! `cargo bench --bench store_write`: registrations/s straight into each store (no HTTP), with
//! 32 concurrent writers as under load — the ceiling the HTTP path can reach.
use std::sync::Arc;
use std::time::Instant;

use chrono::{FixedOffset, Utc};
use epigrid_core::area::Area;
use epigrid_core::model::*;
use epigrid_core::register::{self, Context, RegistrationInput};
use epigrid_core::store::Store;
use epigrid_core::vault::{random_token, Vault};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("epigrid-bench-{}", random_token(4)));
        let s = epigrid_store_sqlite::SqliteStore::open(
            &dir.join("b.db"),
            epigrid_store_sqlite::Durability::Process,
        )
        .expect("open");
        run("sqlite", Arc::new(s)).await;
        if let Ok(url) = std::env::var("EPIGRID_BENCH_PG") {
            let pg = epigrid_store_postgres::PgStore::connect(&url)
                .await
                .expect("pg");
            run("postgres", Arc::new(pg)).await;
        }
    });
}

async fn run(name: &str, store: Arc<dyn Store>) {
    let city = Area::new("150800", "巴彦淖尔市", 1, None);
    let county = Area::new("150802", "临河区", 2, Some(&city));
    store.upsert_areas(&[city, county.clone()]).await.ok();
    let site = Site {
        id: uuid::Uuid::now_v7(),
        token: random_token(16),
        kind: SiteKind::Checkpoint,
        name: format!("bench {}", random_token(3)),
        area_code: county.code.clone(),
        area_path: county.path.clone(),
        active: true,
        default_stay_min: 10,
        created_at: Utc::now(),
    };
    store.insert_site(&site).await.expect("site");
    let vault = Vault::new(&[1; 32]);
    let body = serde_json::json!({"name":"李四","id_type":"cn_id","id_number":"150802198503120019","phone":"13912345678",
        "plate":"蒙L12345","origin":"420100","destination":"150802","companions":0,"temperature":36.6,"symptoms":[],"high_risk_travel":false});
    let input = RegistrationInput::from_json(&body).expect("input");
    let n = 40_000;
    let t0 = Instant::now();
    let regs: Vec<NewRegistration> = (0..n)
        .map(|_| {
            let ctx = Context {
                site: &site,
                channel: Channel::SelfService,
                by_user: None,
                now: Utc::now(),
                tz: FixedOffset::east_opt(8 * 3600).expect("tz"),
            };
            let v = register::validate(&input, &ctx).expect("valid");
            register::seal(v, &ctx, &vault)
        })
        .collect();
    let prep = t0.elapsed();
    let t1 = Instant::now();
    let regs = Arc::new(std::sync::Mutex::new(regs));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, regs) = (store.clone(), regs.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let r = regs.lock().expect("lock").pop();
                match r {
                    Some(r) => {
                        store.insert_registration(r).await.expect("insert");
                    }
                    None => break,
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let w = t1.elapsed();
    println!(
        "{name}: validate+seal {:.1} µs/registration; store {:.0} registrations/s ({:.1} µs each) with 32 concurrent writers",
        prep.as_secs_f64() * 1e6 / n as f64,
        n as f64 / w.as_secs_f64(),
        w.as_secs_f64() * 1e6 / n as f64
    );
}
