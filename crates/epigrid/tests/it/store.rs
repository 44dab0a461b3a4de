//! The Store conformance suite: every test runs against SQLite and, when `EPIGRID_TEST_PG` is
//! set, against PostgreSQL, and expects the same behaviour from both.

use chrono::{Duration, FixedOffset, Utc};
use epigrid_core::area::{Area, Scope};
use epigrid_core::model::*;
use epigrid_core::register::{self, Context, RegistrationInput};
use epigrid_core::store::StoreError;
use epigrid_core::vault::{token_hash, Vault};
use uuid::Uuid;

use crate::support::*;

fn tz() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("offset")
}

fn new_reg(site: &Site, id_number: &str, name: &str, at: chrono::DateTime<Utc>) -> NewRegistration {
    reg_of(site, checkpoint_body(id_number, name, "13912345678"), at)
}

/// The registration a checkpoint-style `body` makes at `site` at `at`.
fn reg_of(site: &Site, mut body: serde_json::Value, at: chrono::DateTime<Utc>) -> NewRegistration {
    if site.kind == SiteKind::Gate {
        body["direction"] = "in".into();
    }
    if site.kind == SiteKind::Arrival {
        body["arrival_date"] = (at + Duration::hours(8)).date_naive().to_string().into();
        body["residence_code"] = site.area_code.clone().into();
        body["address"] = "胜利路1号".into();
    }
    let input = RegistrationInput::from_json(&body).expect("object");
    let ctx = Context {
        site,
        channel: Channel::SelfService,
        by_user: None,
        now: at,
        tz: tz(),
    };
    let valid = register::validate(&input, &ctx).expect("valid registration");
    register::seal(valid, &ctx, &vault())
}

#[tokio::test(flavor = "multi_thread")]
async fn areas_upsert_is_idempotent_scoped_and_all_or_nothing() {
    for (name, store) in stores().await {
        let areas = areas();
        assert_eq!(
            store.upsert_areas(&areas).await.unwrap(),
            areas.len(),
            "{name}"
        );
        assert_eq!(
            store.upsert_areas(&areas).await.unwrap(),
            0,
            "{name}: second import changes nothing"
        );
        let kids = store.area_children(Some("150800")).await.unwrap();
        assert_eq!(
            kids.iter().map(|a| a.code.as_str()).collect::<Vec<_>>(),
            ["150802", "150821"],
            "{name}"
        );
        assert_eq!(store.area_children(None).await.unwrap().len(), 1, "{name}");
        let linhe = Scope::new("/150800/150802/");
        let inside = store.areas_in(&linhe, 6).await.unwrap();
        assert!(
            inside.iter().all(|a| a.path.starts_with("/150800/150802/")),
            "{name}"
        );
        assert_eq!(inside.len(), 6, "{name}");
        assert_eq!(store.areas_in(&linhe, 3).await.unwrap().len(), 2, "{name}");
        // A batch with one orphan is refused whole.
        let before = store.area_count().await.unwrap();
        let city = store.area("150800").await.unwrap().unwrap();
        let ok = Area::new("150899", "新区", 2, Some(&city));
        let mut orphan = Area::new("150898001", "孤儿街道", 3, Some(&ok));
        orphan.parent_code = Some("150897".into());
        let err = store.upsert_areas(&[ok, orphan]).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{name}: {err:?}");
        assert_eq!(
            store.area_count().await.unwrap(),
            before,
            "{name}: nothing half-imported"
        );
        // A rename is an update.
        let mut renamed = store.area("150802").await.unwrap().unwrap();
        renamed.name = "临河区（新）".into();
        assert_eq!(store.upsert_areas(&[renamed]).await.unwrap(), 1, "{name}");
        assert_eq!(
            store.area("150802").await.unwrap().unwrap().name,
            "临河区（新）",
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sites_are_found_by_token_and_filtered_by_scope() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let wuyuan = Scope::new("/150800/150821/");
        let visible = store.sites(&wuyuan).await.unwrap();
        assert_eq!(visible.len(), 4, "{name}");
        assert!(
            visible.iter().all(|s| s.area_code.starts_with("150821")),
            "{name}"
        );
        assert_eq!(store.sites(&Scope::all()).await.unwrap().len(), 8, "{name}");
        let linhe_site = site_in(&sites, "150802");
        assert!(
            store.site(linhe_site.id, &wuyuan).await.unwrap().is_none(),
            "{name}: out of scope"
        );
        let mut s = store
            .site_by_token(&linhe_site.token)
            .await
            .unwrap()
            .expect("by token");
        assert_eq!(s, *linhe_site, "{name}: round trip");
        let read = s.clone();
        s.active = false;
        s.token = "rotated-token".into();
        store.update_site(&read, &s).await.unwrap();
        // a rename made from the older read does not bring the old token or the active site
        // back: it is refused
        let mut renamed = read.clone();
        renamed.name = "新名字".into();
        assert!(
            matches!(
                store.update_site(&read, &renamed).await,
                Err(epigrid_core::store::StoreError::Conflict(_))
            ),
            "{name}"
        );
        assert!(
            store
                .site_by_token(&linhe_site.token)
                .await
                .unwrap()
                .is_none(),
            "{name}: old token dead"
        );
        assert!(
            !store
                .site_by_token("rotated-token")
                .await
                .unwrap()
                .unwrap()
                .active,
            "{name}"
        );
        let mut dup = site(
            SiteKind::Venue,
            &store.area("150802").await.unwrap().unwrap(),
            "dup",
        );
        dup.token = "rotated-token".into();
        assert!(
            matches!(store.insert_site(&dup).await, Err(StoreError::Conflict(_))),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_link_persons_respect_scope_and_keep_rollups_exact() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let linhe: Vec<&Site> = sites
            .iter()
            .filter(|s| s.area_code.starts_with("150802"))
            .collect();
        let wuyuan: Vec<&Site> = sites
            .iter()
            .filter(|s| s.area_code.starts_with("150821"))
            .collect();
        let now = Utc::now();
        let id1 = cn_id("150802", "19900101", 11);
        let id2 = cn_id("150821", "19800202", 22);
        let mut seqs = Vec::new();
        let mut ids = Vec::new();
        for (i, s) in linhe.iter().enumerate() {
            let r = new_reg(s, &id1, "张三", now - Duration::minutes(10 - i as i64));
            ids.push(r.id);
            seqs.push(store.insert_registration(r).await.unwrap());
        }
        let other = new_reg(wuyuan[0], &id2, "李四", now);
        let other_id = other.id;
        store.insert_registration(other).await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{name}: seq increases"
        );

        let linhe_scope = Scope::new("/150800/150802/");
        let r = store
            .registration(ids[0], &linhe_scope)
            .await
            .unwrap()
            .expect("in scope");
        assert_eq!(
            r.doc_masked.as_deref().map(|d| d.ends_with(&id1[14..])),
            Some(true),
            "{name}"
        );
        assert!(
            store
                .registration(other_id, &linhe_scope)
                .await
                .unwrap()
                .is_none(),
            "{name}: other county hidden"
        );
        // the same document is the same person
        let all = store
            .registrations(
                &linhe_scope,
                &RegistrationFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(all.len(), linhe.len(), "{name}");
        assert!(
            all.iter().all(|x| x.person_id == all[0].person_id),
            "{name}: one person"
        );
        assert!(
            all.windows(2).all(|w| w[0].seq > w[1].seq),
            "{name}: newest first"
        );
        // filters
        let by_site = store
            .registrations(
                &Scope::all(),
                &RegistrationFilter {
                    site_id: Some(linhe[0].id),
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(by_site.len(), 1, "{name}");
        let by_kind = store
            .registrations(
                &Scope::all(),
                &RegistrationFilter {
                    kind: Some(SiteKind::Gate),
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(by_kind.len(), 1, "{name}");
        let recent = store
            .registrations(
                &Scope::all(),
                &RegistrationFilter {
                    from: Some(now - Duration::minutes(8)),
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            recent.len(),
            3,
            "{name}: the last two Linhe ones and Wuyuan's"
        );
        let after = store
            .registrations(
                &Scope::all(),
                &RegistrationFilter {
                    after_seq: Some(seqs[1]),
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        // the later registrations of Linhe and the one of Wuyuan
        assert_eq!(after.len(), linhe.len() - 1, "{name}");
        assert!(
            after.windows(2).all(|w| w[0].seq < w[1].seq),
            "{name}: live feed order is oldest first"
        );
        assert!(after.iter().all(|x| x.seq > seqs[1]), "{name}");
        // secrets are only for the person's scope and decrypt with the person-bound key
        let secrets = store
            .person_secrets(all[0].person_id, &linhe_scope)
            .await
            .unwrap()
            .expect("secrets");
        let doc = vault()
            .open(
                &format!("persons.doc:{}", secrets.person_id),
                secrets.doc_cipher.as_deref().unwrap(),
            )
            .unwrap();
        assert_eq!(doc, id1, "{name}");
        assert!(
            store
                .person_secrets(all[0].person_id, &Scope::new("/150800/150821/"))
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );
        // rollups equal a recount of the facts
        assert_eq!(
            store.rollup_rows().await.unwrap(),
            store.recount_rollups().await.unwrap(),
            "{name}"
        );
        let today = (now + Duration::hours(8)).date_naive();
        let series = store
            .rollup_series(&linhe_scope, "reg", today - Duration::days(1), today)
            .await
            .unwrap();
        assert_eq!(
            series.iter().map(|x| x.1).sum::<i64>(),
            linhe.len() as i64,
            "{name}"
        );
        assert_eq!(
            store.registration_count().await.unwrap(),
            linhe.len() as i64 + 1,
            "{name}"
        );
    }
}

/// Several registrations of one person written together (one batch under load, or a bulk
/// insert) leave the person as writing them one by one does, on both stores: who they are and
/// when first seen from the first, their phone from the last that has one (a companion gives
/// none), their area from the latest.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_leaves_a_person_as_its_registrations_one_by_one_would() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let site = sites
            .iter()
            .find(|s| s.kind == SiteKind::Checkpoint)
            .unwrap();
        let t0 = Utc::now() - Duration::hours(3);
        let wife_id = cn_id("150802", "19900303", 51);
        let husband_id = cn_id("150802", "19880404", 52);
        let wife = reg_of(site, checkpoint_body(&wife_id, "李梅", "13700001111"), t0);
        let wife_person = wife.person.id;
        let mut body = checkpoint_body(&husband_id, "王强", "13800002222");
        body["companions"] =
            serde_json::json!([{"name": "李梅", "id_type": "cn_id", "id_number": wife_id}]);
        let husband = reg_of(site, body, t0 + Duration::minutes(1));
        assert_eq!(
            husband.companion_list[0].person.as_ref().map(|p| p.id),
            Some(wife_person)
        );
        // a returning person: first seen at t0, then again an hour later
        let again_id = cn_id("150802", "19700505", 53);
        let first = new_reg(site, &again_id, "赵六", t0);
        let again_person = first.person.id;
        let later = new_reg(site, &again_id, "赵六", t0 + Duration::hours(1));
        // someone nobody manages, seen here, then listed as a companion in another county
        // under another name: the later sighting moves them there with what it gave
        let traveller_id = cn_id("150802", "19750606", 54);
        let here = reg_of(
            site,
            checkpoint_body(&traveller_id, "孙七", "13600003333"),
            t0,
        );
        let traveller = here.person.id;
        let elsewhere = sites
            .iter()
            .find(|s| s.kind == SiteKind::Checkpoint && s.area_code.starts_with("150821"))
            .unwrap();
        let mut body = checkpoint_body(&cn_id("150821", "19700707", 55), "周八", "13500004444");
        body["companions"] =
            serde_json::json!([{"name": "某人", "id_type": "cn_id", "id_number": traveller_id}]);
        let there = reg_of(elsewhere, body, t0 + Duration::minutes(5));
        store
            .insert_registrations(vec![wife, husband, first, later, here, there])
            .await
            .unwrap();
        let person = |id| {
            let store = store.clone();
            async move {
                store
                    .person(id, &Scope::all())
                    .await
                    .unwrap()
                    .expect("person")
            }
        };
        let w = person(wife_person).await;
        assert_eq!(
            w.phone_masked.as_deref(),
            Some("137****1111"),
            "{name}: her own number stays though her husband listed her later"
        );
        assert_eq!(
            w.last_seen_at.timestamp_micros(),
            (t0 + Duration::minutes(1)).timestamp_micros(),
            "{name}"
        );
        let t = person(traveller).await;
        assert_eq!(
            (
                t.name.as_str(),
                t.phone_masked.as_deref(),
                t.area_path.starts_with("/150800/150821/")
            ),
            ("某人", None, true),
            "{name}: moved with what the later sighting gave"
        );
        let a = person(again_person).await;
        assert_eq!(
            a.created_at.timestamp_micros(),
            t0.timestamp_micros(),
            "{name}: first seen"
        );
        assert_eq!(
            a.last_seen_at.timestamp_micros(),
            (t0 + Duration::hours(1)).timestamp_micros(),
            "{name}: last seen"
        );
    }
}

/// A registration older than the person's latest does not move them, even when it is written
/// in the same batch as the latest one with another write between them (which makes the
/// SQLite writer forget what it knew of people, while the latest "last seen" is still only
/// pending in the batch). Single-threaded, so all three writes queue before the batch runs.
#[tokio::test]
async fn an_older_registration_in_the_same_batch_does_not_move_a_person() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let linhe = site_in(&sites, "150802");
        let wuyuan = site_in(&sites, "150821");
        let id = cn_id("150802", "19900101", 41);
        let t0 = Utc::now() - Duration::hours(3);
        let first = new_reg(linhe, &id, "张三", t0);
        let person = first.person.id;
        store.insert_registration(first).await.unwrap();
        let (latest, _, older) = tokio::join!(
            store.insert_registration(new_reg(linhe, &id, "张三", t0 + Duration::hours(2))),
            store.purge_sessions(Utc::now()),
            store.insert_registration(new_reg(wuyuan, &id, "张三", t0 + Duration::hours(1))),
        );
        latest.unwrap();
        older.unwrap();
        let p = store
            .person(person, &Scope::all())
            .await
            .unwrap()
            .expect("person");
        assert_eq!(
            p.area_path, linhe.area_path,
            "{name}: stays where last seen"
        );
        assert_eq!(
            p.last_seen_at.timestamp_micros(),
            (t0 + Duration::hours(2)).timestamp_micros(),
            "{name}"
        );
    }
}

/// Scope filters compare area paths as bytes (`'/' < '0'`). On PostgreSQL that needs every
/// path column to collate as "C" whatever the database's default: under en_US.UTF-8, which
/// ignores '/', a list uploaded below the caller's own area fell outside their scope.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_compares_every_area_path_as_bytes() {
    let Some((_store, client, schema)) = postgres_with_client().await else {
        return;
    };
    let rows = client
        .query(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns \
             WHERE table_schema = $1 AND column_name LIKE '%path%' AND data_type = 'text'",
            &[&schema],
        )
        .await
        .unwrap();
    let names = |pick: &dyn Fn(Option<&str>) -> bool| -> Vec<String> {
        rows.iter()
            .filter(|r| pick(r.get::<_, Option<&str>>(2)))
            .map(|r| format!("{}.{}", r.get::<_, &str>(0), r.get::<_, &str>(1)))
            .collect()
    };
    let bytes = names(&|c| c == Some("C"));
    for t in ["lists", "notices", "persons", "registrations", "sites"] {
        assert!(
            bytes.contains(&format!("{t}.area_path")),
            "{t}.area_path compares as bytes: {bytes:?}"
        );
    }
    let other = names(&|c| c != Some("C"));
    assert!(
        other.is_empty(),
        "path columns with a linguistic collation: {other:?}"
    );
}

/// "Last seen" is the person's latest registration, on both stores, however the registrations
/// arrive: one at a time, several in one batch, or an older one after a newer one.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_is_last_seen_at_their_latest_registration() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let site = &sites[0];
        let id = cn_id("150802", "19900101", 31);
        let t0 = Utc::now() - Duration::hours(3);
        let first = new_reg(site, &id, "张三", t0);
        let person = first.person.id;
        store.insert_registration(first).await.unwrap();
        let seen = |p: Option<epigrid_core::person::Person>| {
            p.expect("person").last_seen_at.timestamp_micros()
        };
        assert_eq!(
            seen(store.person(person, &Scope::all()).await.unwrap()),
            t0.timestamp_micros(),
            "{name}"
        );
        // the same site, phone and everything: only the time is new
        let t1 = t0 + Duration::hours(1);
        store
            .insert_registration(new_reg(site, &id, "张三", t1))
            .await
            .unwrap();
        assert_eq!(
            seen(store.person(person, &Scope::all()).await.unwrap()),
            t1.timestamp_micros(),
            "{name}: a second registration at the same place"
        );
        // several at once (one batch under load), and a late one older than the latest
        let times = [t1 + Duration::minutes(30), t1 + Duration::minutes(50), t1];
        let tasks: Vec<_> = times
            .iter()
            .map(|t| {
                let store = store.clone();
                let r = new_reg(site, &id, "张三", *t);
                tokio::spawn(async move { store.insert_registration(r).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            seen(store.person(person, &Scope::all()).await.unwrap()),
            (t1 + Duration::minutes(50)).timestamp_micros(),
            "{name}: concurrent registrations"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_registrations_are_all_stored_with_distinct_sequence_numbers() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let site = sites[0].clone();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let store = store.clone();
            let site = site.clone();
            tasks.push(tokio::spawn(async move {
                let r = new_reg(
                    &site,
                    &cn_id("150802", "19850312", i % 50),
                    "王五",
                    Utc::now(),
                );
                (r.id, store.insert_registration(r).await.unwrap())
            }));
        }
        let mut seqs = std::collections::HashSet::new();
        let mut ids = Vec::new();
        for t in tasks {
            let (id, seq) = t.await.unwrap();
            assert!(seqs.insert(seq), "{name}: duplicate seq");
            ids.push(id);
        }
        for id in ids {
            assert!(
                store
                    .registration(id, &Scope::all())
                    .await
                    .unwrap()
                    .is_some(),
                "{name}"
            );
        }
        assert_eq!(store.registration_count().await.unwrap(), 200, "{name}");
        assert_eq!(
            store.rollup_rows().await.unwrap(),
            store.recount_rollups().await.unwrap(),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_for_an_unknown_site_is_refused_and_changes_nothing() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let mut ghost = sites[0].clone();
        ghost.id = Uuid::now_v7();
        let r = new_reg(&ghost, &cn_id("150802", "19700101", 1), "赵六", Utc::now());
        assert!(store.insert_registration(r).await.is_err(), "{name}");
        assert_eq!(store.registration_count().await.unwrap(), 0, "{name}");
        assert!(
            store.rollup_rows().await.unwrap().is_empty(),
            "{name}: no rollup from a refused write"
        );
        // and the store still works afterwards
        let ok = new_reg(
            &sites[0],
            &cn_id("150802", "19700101", 1),
            "赵六",
            Utc::now(),
        );
        store.insert_registration(ok).await.unwrap();
        assert_eq!(store.registration_count().await.unwrap(), 1, "{name}");

        // Sent together (on PostgreSQL they share a batch transaction when they queue
        // together), the refused one fails alone: its neighbours are stored and counted.
        let mut tasks = Vec::new();
        for i in 0..20u32 {
            let site = if i == 7 {
                ghost.clone()
            } else {
                sites[0].clone()
            };
            let r = new_reg(&site, &cn_id("150802", "19700102", i), "赵七", Utc::now());
            let store = store.clone();
            tasks.push(tokio::spawn(
                async move { store.insert_registration(r).await },
            ));
        }
        let mut refused = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 1, "{name}: only the unknown site's registration");
        assert_eq!(store.registration_count().await.unwrap(), 20, "{name}");
        assert_eq!(
            store.rollup_rows().await.unwrap(),
            store.recount_rollups().await.unwrap(),
            "{name}: rollups count what was stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_insert_is_all_or_nothing() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let mut batch: Vec<NewRegistration> = (0..10)
            .map(|i| {
                new_reg(
                    &sites[0],
                    &cn_id("150802", "19700101", i),
                    "孙七",
                    Utc::now(),
                )
            })
            .collect();
        let mut bad = batch[0].clone();
        bad.id = Uuid::now_v7();
        bad.site_id = Uuid::now_v7();
        batch.push(bad);
        assert!(
            store.insert_registrations(batch.clone()).await.is_err(),
            "{name}"
        );
        assert_eq!(store.registration_count().await.unwrap(), 0, "{name}");
        batch.pop();
        store.insert_registrations(batch).await.unwrap();
        assert_eq!(store.registration_count().await.unwrap(), 10, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn venue_check_out_happens_once() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let venue = sites.iter().find(|s| s.kind == SiteKind::Venue).unwrap();
        let r = new_reg(
            venue,
            &cn_id("150802", "19700101", 3),
            "周八",
            Utc::now() - Duration::minutes(30),
        );
        let id = r.id;
        store.insert_registration(r).await.unwrap();
        assert_ne!(sites[0].id, venue.id);
        assert!(
            !store.check_out(id, sites[0].id, Utc::now()).await.unwrap(),
            "{name}: wrong site"
        );
        assert!(
            store.check_out(id, venue.id, Utc::now()).await.unwrap(),
            "{name}"
        );
        assert!(
            !store.check_out(id, venue.id, Utc::now()).await.unwrap(),
            "{name}: only once"
        );
        assert!(
            store
                .registration(id, &Scope::all())
                .await
                .unwrap()
                .unwrap()
                .left_at
                .is_some(),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn names_differing_only_in_case_added_at_once_make_one_account() {
    for (name, store) in stores().await {
        seed(store.as_ref()).await;
        let base = user(store.as_ref(), "base", Role::GridWorker, "150821").await;
        // eight spellings of one name at once: one account (whether PostgreSQL's check races
        // another process is shown deterministically by the test after this one)
        let spellings = [
            "race", "Race", "RACE", "rAce", "raCe", "racE", "RAce", "raCE",
        ];
        let tries = spellings.map(|spelling| {
            let store = store.clone();
            let mut u = base.clone();
            u.id = Uuid::now_v7();
            u.username = spelling.to_string();
            tokio::spawn(async move { store.insert_user(&u).await })
        });
        let mut made = 0;
        for t in tries {
            match t.await.expect("task") {
                Ok(()) => made += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
        assert_eq!(
            made, 1,
            "{name}: one account for the name, whatever its case"
        );
    }
}

/// PostgreSQL: another process adding the same name in another case, at the same moment, is
/// waited for, and its account makes this one taken (the check and the insert are not one
/// atomic step there without the name's lock).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_name_another_process_is_adding_is_waited_for_and_taken() {
    let Some((store, mut other, schema)) = postgres_with_client().await else {
        return;
    };
    seed(store.as_ref()).await;
    let base = user(store.as_ref(), "base", Role::GridWorker, "150821").await;
    // the other process has taken the name's lock and inserted "race", not yet committed
    let tx = other.transaction().await.expect("begin");
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('epigrid.users:' || lower($1), 0))",
        &[&"race"],
    )
    .await
    .expect("lock");
    tx.execute(
        &format!(
            "INSERT INTO {schema}.users (id, username, password_hash, role, area_code, area_path, active, created_at) \
             SELECT $1, 'race', password_hash, role, area_code, area_path, active, created_at \
             FROM {schema}.users WHERE username = 'base'"
        ),
        &[&Uuid::now_v7()],
    )
    .await
    .expect("insert");
    let mut mine = base.clone();
    mine.id = Uuid::now_v7();
    mine.username = "Race".into();
    let adding = {
        let store = store.clone();
        tokio::spawn(async move { store.insert_user(&mine).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !adding.is_finished(),
        "waits for the other process's commit"
    );
    tx.commit().await.expect("commit");
    assert!(matches!(
        adding.await.expect("task"),
        Err(StoreError::Conflict(_))
    ));
    assert!(store
        .user_by_username("Race")
        .await
        .expect("read")
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn users_sessions_and_audit() {
    for (name, store) in stores().await {
        seed(store.as_ref()).await;
        let u = user(store.as_ref(), "gw1", Role::GridWorker, "150821").await;
        let mut dup = u.clone();
        dup.id = Uuid::now_v7();
        assert!(
            matches!(store.insert_user(&dup).await, Err(StoreError::Conflict(_))),
            "{name}"
        );
        // a name that differs only in case is taken as well
        dup.id = Uuid::now_v7();
        dup.username = "GW1".into();
        assert!(
            matches!(store.insert_user(&dup).await, Err(StoreError::Conflict(_))),
            "{name}: GW1"
        );
        assert!(store.user_by_username("GW1").await.unwrap().is_none());
        assert_eq!(
            store.user_by_username("gw1").await.unwrap().unwrap().id,
            u.id,
            "{name}"
        );
        assert_eq!(
            store
                .users(&Scope::new("/150800/150802/"))
                .await
                .unwrap()
                .len(),
            0,
            "{name}"
        );
        assert_eq!(
            store.users(&Scope::new("/150800/")).await.unwrap().len(),
            1,
            "{name}"
        );

        let now = Utc::now();
        let live = Session {
            token_hash: token_hash("live"),
            user_id: u.id,
            csrf: "c".into(),
            api: true,
            created_at: now,
            expires_at: now + Duration::hours(1),
        };
        let dead = Session {
            token_hash: token_hash("dead"),
            expires_at: now - Duration::seconds(1),
            ..live.clone()
        };
        store.insert_session(&live).await.unwrap();
        store.insert_session(&dead).await.unwrap();
        let (s, su) = store
            .session(&token_hash("live"), now)
            .await
            .unwrap()
            .expect("live session");
        assert_eq!((s.user_id, su.username.as_str()), (u.id, "gw1"), "{name}");
        assert!(
            store
                .session(&token_hash("dead"), now)
                .await
                .unwrap()
                .is_none(),
            "{name}: expired"
        );
        assert_eq!(store.purge_sessions(now).await.unwrap(), 1, "{name}");
        // a deactivated user's sessions stop working
        let mut off = u.clone();
        off.active = false;
        store.update_user(&off).await.unwrap();
        let live_hash = token_hash("live");
        let live_now = || store.session(&live_hash, now);
        assert!(live_now().await.unwrap().is_none(), "{name}: inactive user");
        // and do not come back with the account: it logs in afresh
        store.update_user(&u).await.unwrap();
        assert!(
            live_now().await.unwrap().is_none(),
            "{name}: reactivated user's old session"
        );
        store.delete_session(&token_hash("live")).await.unwrap();

        for (i, path) in ["/150800/150802/", "/150800/150821/", "/"]
            .iter()
            .enumerate()
        {
            store
                .append_audit(&AuditEntry {
                    seq: 0,
                    id: Uuid::now_v7(),
                    at: now + Duration::seconds(i as i64),
                    user_id: Some(u.id),
                    username: if i == 2 {
                        "nobody".into()
                    } else {
                        "gw1".into()
                    },
                    action: if i == 2 {
                        "login_failed".into()
                    } else {
                        "unmask".into()
                    },
                    subject: format!("registration:{i}"),
                    area_path: path.to_string(),
                    ip: "127.0.0.1".into(),
                    detail: String::new(),
                })
                .await
                .unwrap();
        }
        let log = |scope: &str, f: AuditFilter| {
            let (store, scope) = (store.clone(), Scope::new(scope));
            async move {
                store
                    .audit_log(&scope, &AuditFilter { limit: 10, ..f })
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.subject.clone())
                    .collect::<Vec<_>>()
            }
        };
        let all = AuditFilter::default;
        assert_eq!(
            log("/150800/150821/", all()).await,
            ["registration:1"],
            "{name}"
        );
        // an entry of no area (a failed login as nobody) only for those who ask for it
        let unplaced = || AuditFilter {
            unplaced: true,
            ..all()
        };
        assert_eq!(log("/150800/", all()).await.len(), 2, "{name}");
        assert_eq!(
            log("/150800/", unplaced()).await,
            ["registration:2", "registration:1", "registration:0"],
            "{name}: newest first"
        );
        // each filter narrows, within the scope
        let by = |f: AuditFilter| {
            log(
                "/150800/",
                AuditFilter {
                    unplaced: true,
                    ..f
                },
            )
        };
        let subject = Some("registration:1".to_string());
        assert_eq!(
            by(AuditFilter { subject, ..all() }).await,
            ["registration:1"],
            "{name}: subject"
        );
        let action = Some("login_failed".to_string());
        assert_eq!(
            by(AuditFilter { action, ..all() }).await,
            ["registration:2"],
            "{name}"
        );
        let username = Some("gw1".to_string());
        assert_eq!(
            by(AuditFilter { username, ..all() }).await.len(),
            2,
            "{name}"
        );
        let (from, to) = (
            Some(now + Duration::seconds(1)),
            Some(now + Duration::seconds(2)),
        );
        assert_eq!(
            by(AuditFilter { from, to, ..all() }).await,
            ["registration:1"],
            "{name}: from inclusive, to exclusive"
        );
        // paging back: a page of one, then the next one before it
        let first = store
            .audit_log(
                &Scope::new("/150800/"),
                &AuditFilter {
                    limit: 1,
                    ..unplaced()
                },
            )
            .await
            .unwrap();
        assert_eq!(first.len(), 1, "{name}");
        assert!(first[0].seq > 0, "{name}: the store numbers entries");
        let before_seq = Some(first[0].seq);
        assert_eq!(
            by(AuditFilter {
                before_seq,
                ..all()
            })
            .await,
            ["registration:1", "registration:0"],
            "{name}: before"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_raw_id_number_is_written_to_the_sqlite_files() {
    let (store, dir) = sqlite();
    let sites = seed(store.as_ref()).await;
    let raw = "11010519491231002X";
    for s in &sites {
        store
            .insert_registration(new_reg(s, raw, "张三", Utc::now()))
            .await
            .unwrap();
    }
    // While open (the WAL and shared memory hold the newest pages), then once closed (the
    // store's drop checkpoints into the database file and removes the WAL).
    let open = files_without(&dir, raw);
    assert!(
        open.len() >= 2,
        "the database and its WAL were read: {open:?}"
    );
    drop(store);
    let closed = files_without(&dir, raw);
    assert!(!closed.is_empty(), "the database file was read");
}

/// The files in `dir` with their sizes, once each is checked to hold neither `raw` nor the
/// test phone number; more than 10 KB in all. A file removed after the listing is skipped.
fn files_without(dir: &std::path::Path, raw: &str) -> Vec<(String, usize)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // the last connection to close (it may be a writer task finishing after the
            // store's drop) checkpoints and removes the WAL and shared memory
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !bytes.windows(raw.len()).any(|w| w == raw.as_bytes()),
            "raw ID number in {name}"
        );
        assert!(
            !bytes.windows(11).any(|w| w == b"13912345678"),
            "raw phone number in {name}"
        );
        // the birth date beside the masked number (110105********002X) would be the number
        assert!(
            !bytes.windows(10).any(|w| w == b"1949-12-31"),
            "whole birth date in {name}"
        );
        files.push((name, bytes.len()));
    }
    let seen: usize = files.iter().map(|f| f.1).sum();
    assert!(seen > 10_000, "the database files were read: {files:?}");
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_key_check_recorded_stays() {
    for (name, store) in stores().await {
        assert_eq!(store.key_check().await.unwrap(), None, "{name}");
        assert_eq!(store.sealed_sample().await.unwrap(), None, "{name}");
        let first = vault().key_check();
        let other = Vault::new(&[7u8; 32]).key_check();
        assert_ne!(first, other);
        assert_eq!(
            store.claim_key_check(&first).await.unwrap(),
            first,
            "{name}"
        );
        assert_eq!(
            store.claim_key_check(&other).await.unwrap(),
            first,
            "{name}: a second key does not replace the first"
        );
        assert_eq!(
            store.key_check().await.unwrap(),
            Some(first.clone()),
            "{name}"
        );
        // the demo's mark sits beside the key check, apart from it
        assert!(!store.is_demo().await.unwrap(), "{name}");
        store.mark_demo().await.unwrap();
        store.mark_demo().await.unwrap();
        assert!(store.is_demo().await.unwrap(), "{name}");
        assert_eq!(store.key_check().await.unwrap(), Some(first), "{name}");
        let sites = seed(store.as_ref()).await;
        let id = registered_person(
            store.as_ref(),
            &sites[0],
            &cn_id("150802", "19800101", 8),
            "乙",
        )
        .await;
        let (sample, sealed) = store.sealed_sample().await.unwrap().expect("a document");
        assert_eq!(sample, id, "{name}");
        assert!(
            vault().open(&format!("persons.doc:{id}"), &sealed).is_ok()
                && Vault::new(&[7u8; 32])
                    .open(&format!("persons.doc:{id}"), &sealed)
                    .is_err(),
            "{name}: the sample tells the keys apart"
        );
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn a_new_sqlite_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("mode");
    let path = dir.join("private.db");
    let store =
        epigrid_store_sqlite::SqliteStore::open(&path, epigrid_store_sqlite::Durability::Process)
            .unwrap();
    seed(&store).await;
    for file in ["private.db", "private.db-wal"] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}
