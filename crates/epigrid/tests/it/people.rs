//! People under management: conformance of the new store operations on both backends, and the
//! API as staff and people under observation use it.

use chrono::{Duration, NaiveDate, Utc};
use epigrid_core::area::Scope;
use epigrid_core::model::{Channel, Role, SiteKind};
use epigrid_core::person::*;
use epigrid_core::register::{self, Context, RegistrationInput};
use epigrid_core::trace::Loaded;
use epigrid_core::vault::{new_id, token_hash};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

fn observation(person_id: Uuid, start: NaiveDate, days: i64, token: &str) -> Observation {
    Observation {
        id: new_id(),
        person_id,
        kind: ObservationKind::Home,
        site_id: None,
        start,
        planned_end: start + Duration::days(days - 1),
        released_at: None,
        release_reason: None,
        grid_worker_id: None,
        token_hash: token_hash(token),
        token_revoked: false,
        reports_per_day: 1,
        area_path: "/150800/150802/".into(),
        created_at: chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap(),
        created_by: None,
    }
}

/// The phone number a registration was made with (sealed) and the person it is sealed for.
async fn typed_phone(
    store: &dyn epigrid_core::store::Store,
    id: Uuid,
    scope: &Scope,
) -> Option<(Vec<u8>, Uuid)> {
    store
        .registration_secrets(id, scope)
        .await
        .unwrap()
        .and_then(|s| s.phone_cipher.zip(Some(s.came_in_as)))
}

/// Stores a self-registration at `site` with `phone`, made at `at`; the stored registration.
async fn register_with_phone(
    store: &dyn epigrid_core::store::Store,
    site: &epigrid_core::model::Site,
    id: &str,
    phone: &str,
    at: chrono::DateTime<Utc>,
) -> epigrid_core::model::NewRegistration {
    register_at(store, site, &checkpoint_body(id, "王一", phone), at).await
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_keep_their_number_and_move_only_people_nobody_manages() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let at = |county: &str| {
            sites
                .iter()
                .find(|s| s.area_code.starts_with(county) && s.kind == SiteKind::Checkpoint)
                .unwrap()
                .clone()
        };
        let (linhe, wuyuan) = (at("150802"), at("150821"));
        let t0 = Utc::now() - Duration::minutes(30);
        let ids = [
            cn_id("150802", "19900303", 31), // placed in a category
            cn_id("150802", "19900404", 41), // under observation
            cn_id("150802", "19900505", 51), // managed by nobody
            cn_id("150802", "19900606", 61), // a positive lab result, no category (yet)
            cn_id("150802", "19900707", 71), // observed once, released
        ];
        let mut first = Vec::new();
        for id in &ids {
            first.push(register_with_phone(store.as_ref(), &linhe, id, "13900000031", t0).await);
        }
        let classified = first[0].person.id;
        assert!(store
            .change_category(&CategoryChange {
                id: new_id(),
                person_id: classified,
                from: Category::None,
                to: Category::CloseContact,
                at: Utc::now(),
                by_user: None,
                by_username: "epi".into(),
                reason: "test".into(),
            })
            .await
            .unwrap());
        let o = observation(first[1].person.id, Utc::now().date_naive(), 14, "tok-pin");
        store.insert_observation(&o).await.unwrap();
        let today = Utc::now().date_naive();
        store
            .insert_lab_result(&LabResult {
                id: new_id(),
                person_id: first[3].person.id,
                test: TestKind::NucleicAcid,
                sample_date: today,
                result_date: Some(today),
                result: TestResult::Positive,
                entered_by: None,
                created_at: Utc::now(),
            })
            .await
            .unwrap();
        let mut released = observation(first[4].person.id, today, 14, "tok-released");
        store.insert_observation(&released).await.unwrap();
        let as_inserted = released.clone();
        released.released_at = Some(Utc::now());
        released.release_reason = Some("test".into());
        store
            .update_observation(&as_inserted, &released)
            .await
            .unwrap();

        // the same ID numbers registered in another county with another number, as anyone
        // holding a person's ID number could
        let mut second = Vec::new();
        for id in &ids {
            let later = t0 + Duration::minutes(10);
            second
                .push(register_with_phone(store.as_ref(), &wuyuan, id, "13000000000", later).await);
        }
        let (old_mask, new_mask) = (
            first[0].person.phone_masked.clone(),
            second[0].person.phone_masked.clone(),
        );
        assert_ne!(old_mask, new_mask);
        for (i, (a, b)) in first.iter().zip(&second).enumerate() {
            let p = store
                .person(a.person.id, &Scope::all())
                .await
                .unwrap()
                .unwrap();
            // anyone staff have acted on: a category, an observation (even released), a lab
            // result; only people nobody has acted on follow their registrations
            let managed = i != 2;
            assert_eq!(
                p.area_path.starts_with("/150800/150802/"),
                managed,
                "{name} person {i}: a managed person stays in their area, others follow"
            );
            assert_eq!(
                p.phone_masked,
                if managed { &old_mask } else { &new_mask }.clone(),
                "{name} person {i}: a managed person's number is kept"
            );
            // each registration shows and unmasks to the number it was made with
            for r in [a, b] {
                let stored = store
                    .registration(r.id, &Scope::all())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    stored.phone_masked, r.person.phone_masked,
                    "{name} person {i}"
                );
                assert_eq!(
                    typed_phone(store.as_ref(), r.id, &Scope::all()).await,
                    r.person.phone_cipher.clone().zip(Some(r.person.id)),
                    "{name} person {i}"
                );
            }
        }
        // Typing a person's ID number at a site shows back only what was typed: another name
        // and no phone give a registration with that name and no phone, not the person's.
        // (site staff may register someone without a phone)
        let body = json!({"name": "某人", "id_type": "cn_id",
            "id_number": ids[0], "temperature": 36.5, "symptoms": [], "origin": "150802",
            "destination": "150821", "high_risk_travel": false});
        let input = RegistrationInput::from_json(&body).unwrap();
        let ctx = Context {
            site: &wuyuan,
            channel: Channel::Staff,
            by_user: Some(new_id()),
            now: t0 + Duration::minutes(20),
            tz: chrono::FixedOffset::east_opt(8 * 3600).unwrap(),
        };
        let typed = register::seal(register::validate(&input, &ctx).unwrap(), &ctx, &vault());
        store.insert_registration(typed.clone()).await.unwrap();
        // The same for someone nobody manages, whom the registration moves: the record their
        // new area's staff see holds what was typed, not what other areas were told.
        let body = json!({"name": "某人", "id_type": "cn_id",
            "id_number": ids[2], "temperature": 36.5, "symptoms": [], "origin": "150821",
            "destination": "150802", "high_risk_travel": false});
        let input = RegistrationInput::from_json(&body).unwrap();
        let ctx = Context {
            site: &linhe,
            now: t0 + Duration::minutes(25),
            ..ctx
        };
        let moved = register::seal(register::validate(&input, &ctx).unwrap(), &ctx, &vault());
        store.insert_registration(moved.clone()).await.unwrap();
        let p = store
            .person(moved.person.id, &Scope::new("/150800/150802/"))
            .await
            .unwrap()
            .expect("moved into the registering area");
        assert_eq!(
            (p.name.as_str(), p.phone_masked.as_deref()),
            ("某人", None),
            "{name}: a moved person holds what moved them"
        );
        assert_eq!(
            store
                .search_persons(
                    &Scope::new("/150800/150802/"),
                    &PersonQuery::Name("某人".into()),
                    10
                )
                .await
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            vec![moved.person.id],
            "{name}: found by the name they have now"
        );
        let shown = store
            .registration(typed.id, &Scope::new("/150800/150821/"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shown.person_id, first[0].person.id, "{name}");
        assert_eq!(
            shown.name, "某人",
            "{name}: the name typed, not the person's"
        );
        assert_eq!(
            shown.phone_masked, None,
            "{name}: no number given, none shown"
        );
        assert_eq!(
            typed_phone(store.as_ref(), typed.id, &Scope::all()).await,
            None,
            "{name}"
        );
        assert_eq!(
            store
                .registration(first[0].id, &Scope::all())
                .await
                .unwrap()
                .unwrap()
                .name,
            "王一",
            "{name}"
        );
        assert_eq!(
            typed_phone(store.as_ref(), second[0].id, &Scope::new("/150800/150802/")).await,
            None,
            "{name}: not outside the caller's scope"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn name_search_ignores_case_on_every_store() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let linhe = site_in(&sites, "150802");
        let in_scope = Scope::new("/150800/150802/");
        // in any alphabet, whatever the case typed
        let ivan = registered_person(
            store.as_ref(),
            linhe,
            &cn_id("150802", "19900101", 6),
            "Ivan Petrov",
        )
        .await;
        let olga = registered_person(
            store.as_ref(),
            linhe,
            &cn_id("150802", "19900101", 7),
            "Ольга Иванова",
        )
        .await;
        for (q, want) in [
            ("ivan", vec![ivan]),
            ("PETROV", vec![ivan]),
            ("иван", vec![olga]),
            ("ОЛЬГА", vec![olga]),
        ] {
            let hits = store
                .search_persons(&in_scope, &PersonQuery::Name(q.into()), 10)
                .await
                .unwrap();
            assert_eq!(
                hits.iter().map(|p| p.id).collect::<Vec<_>>(),
                want,
                "{name}: {q}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn categories_observations_reports_and_labs_behave_the_same_on_every_store() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let linhe = site_in(&sites, "150802");
        let pid = registered_person(
            store.as_ref(),
            linhe,
            &cn_id("150802", "19900101", 5),
            "欧阳晓明",
        )
        .await;
        let in_scope = Scope::new("/150800/150802/");
        let out_scope = Scope::new("/150800/150821/");
        let p = store
            .person(pid, &in_scope)
            .await
            .unwrap()
            .expect("person in scope");
        assert_eq!(p.category, Category::None, "{name}");
        assert!(
            store.person(pid, &out_scope).await.unwrap().is_none(),
            "{name}"
        );

        // search by name fragment, in scope only
        let hits = store
            .search_persons(&in_scope, &PersonQuery::Name("晓明".into()), 10)
            .await
            .unwrap();
        assert_eq!(
            hits.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![pid],
            "{name}"
        );
        assert!(
            store
                .search_persons(&out_scope, &PersonQuery::Name("晓明".into()), 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        let by_plate = store
            .search_persons(&in_scope, &PersonQuery::Plate("蒙L12345".into()), 10)
            .await
            .unwrap();
        assert_eq!(by_plate.len(), 1, "{name}");

        // compare-and-set category changes with history
        let change = |from, to| CategoryChange {
            id: new_id(),
            person_id: pid,
            from,
            to,
            at: Utc::now(),
            by_user: None,
            by_username: "epi".into(),
            reason: "test".into(),
        };
        assert!(
            store
                .change_category(&change(Category::None, Category::CloseContact))
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            !store
                .change_category(&change(Category::None, Category::Suspected))
                .await
                .unwrap(),
            "{name}: stale from"
        );
        assert!(
            store
                .change_category(&change(Category::CloseContact, Category::Confirmed))
                .await
                .unwrap(),
            "{name}"
        );
        let history = store.category_history(pid).await.unwrap();
        assert_eq!(
            history.iter().map(|h| (h.from, h.to)).collect::<Vec<_>>(),
            vec![
                (Category::None, Category::CloseContact),
                (Category::CloseContact, Category::Confirmed)
            ],
            "{name}"
        );
        let counts = store.category_counts(&Scope::all()).await.unwrap();
        assert_eq!(
            counts,
            vec![(
                "/150800/150802/150802001/150802001001/".to_string(),
                Category::Confirmed,
                1
            )],
            "{name}"
        );
        assert!(
            store.category_counts(&out_scope).await.unwrap().is_empty(),
            "{name}"
        );

        // observation, reports one per slot, lab results and the review list
        let today = Utc::now().date_naive();
        let mut o = observation(pid, today - Duration::days(1), 14, "tok-1");
        store.insert_observation(&o).await.unwrap();
        assert_eq!(
            store
                .observation_by_token(&token_hash("tok-1"))
                .await
                .unwrap()
                .map(|x| x.id),
            Some(o.id),
            "{name}"
        );
        assert!(
            store.observation(o.id, &out_scope).await.unwrap().is_none(),
            "{name}"
        );
        let report = |day, slot| HealthReport {
            id: new_id(),
            observation_id: o.id,
            person_id: pid,
            day,
            slot,
            at: Utc::now(),
            temperature: Some(381),
            symptoms: 2,
            note: None,
            by_user: None,
        };
        store.insert_report(&report(today, 0)).await.unwrap();
        assert!(
            matches!(
                store.insert_report(&report(today, 0)).await,
                Err(epigrid_core::store::StoreError::Conflict(_))
            ),
            "{name}: one per slot"
        );
        store.insert_report(&report(today, 1)).await.unwrap();
        let rows = store
            .observation_rows(
                &in_scope,
                today,
                today - Duration::days(7),
                Utc::now() - Duration::days(8),
                None,
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{name}");
        assert_eq!(
            (
                rows[0].reports_today,
                rows[0].last_temperature,
                rows[0].last_symptoms
            ),
            (2, Some(381), 2),
            "{name}"
        );
        assert!(
            store
                .observation_rows(&out_scope, today, today, Utc::now(), None)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        let read = o.clone();
        o.planned_end += Duration::days(3);
        o.token_revoked = true;
        store.update_observation(&read, &o).await.unwrap();
        // a change made from the older read (extending it again) does not undo the revoked
        // link: it is refused
        let mut stale = read.clone();
        stale.planned_end += Duration::days(7);
        assert!(
            matches!(
                store.update_observation(&read, &stale).await,
                Err(epigrid_core::store::StoreError::Conflict(_))
            ),
            "{name}"
        );
        let back = store.observations_of(pid).await.unwrap();
        assert_eq!(
            (back[0].planned_end, back[0].token_revoked),
            (o.planned_end, true),
            "{name}"
        );
        // a move to another area (a corrected home) is not undone by a change made from a
        // read before it either
        let before_move = o.clone();
        let mut moved = o.clone();
        moved.area_path = "/150800/150821/".into();
        store
            .update_observation(&before_move, &moved)
            .await
            .unwrap();
        let mut stale = before_move.clone();
        stale.reports_per_day = 2;
        assert!(
            matches!(
                store.update_observation(&before_move, &stale).await,
                Err(epigrid_core::store::StoreError::Conflict(_))
            ),
            "{name}: a stale write over a move"
        );
        assert_eq!(
            store.observations_of(pid).await.unwrap()[0].area_path,
            "/150800/150821/",
            "{name}"
        );
        assert_eq!(store.reports_of(pid).await.unwrap().len(), 2, "{name}");
        // ended ones are listed from an instant (the caller's local midnight a week back), and
        // a record merged away is not listed beside the one it was merged into
        let cutoff = Utc::now() - Duration::days(6);
        let mut listed = Vec::new();
        for (n, released) in [
            (11, cutoff - Duration::hours(1)),
            (12, cutoff + Duration::hours(1)),
        ] {
            let p = registered_person(store.as_ref(), linhe, &cn_id("150802", "19800101", n), "乙")
                .await;
            let mut o = observation(p, today - Duration::days(30), 10, &format!("tok-{n}"));
            o.released_at = Some(released);
            o.release_reason = Some("期满".into());
            store.insert_observation(&o).await.unwrap();
            listed.push(o.id);
        }
        let kept = registered_person(
            store.as_ref(),
            linhe,
            &cn_id("150802", "19800101", 13),
            "丁",
        )
        .await;
        let gone = registered_person(
            store.as_ref(),
            linhe,
            &cn_id("150802", "19800101", 14),
            "丁",
        )
        .await;
        let kept_o = observation(kept, today, 14, "tok-kept");
        let gone_o = observation(gone, today, 14, "tok-gone");
        store.insert_observation(&kept_o).await.unwrap();
        store.insert_observation(&gone_o).await.unwrap();
        store
            .merge_persons(&epigrid_core::person::PersonMerge {
                id: new_id(),
                from_person: gone,
                into_person: kept,
                at: Utc::now(),
                by_user: None,
                by_username: "epi".into(),
                reason: "same".into(),
                undone_at: None,
            })
            .await
            .unwrap();
        let shown: Vec<Uuid> = store
            .observation_rows(&in_scope, today, today - Duration::days(7), cutoff, None)
            .await
            .unwrap()
            .iter()
            .map(|r| r.observation.id)
            .collect();
        assert_eq!(
            [listed[0], listed[1], kept_o.id, gone_o.id].map(|id| shown.contains(&id)),
            [false, true, true, false],
            "{name}"
        );

        let other = registered_person(
            store.as_ref(),
            linhe,
            &cn_id("150802", "19800101", 6),
            "司马静",
        )
        .await;
        let lab = LabResult {
            id: new_id(),
            person_id: other,
            test: TestKind::NucleicAcid,
            sample_date: today,
            result_date: Some(today),
            result: TestResult::Positive,
            entered_by: None,
            created_at: chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
                .unwrap(),
        };
        store.insert_lab_result(&lab).await.unwrap();
        assert_eq!(
            store.lab_results_of(other).await.unwrap(),
            vec![lab.clone()],
            "{name}"
        );
        let review = store.review_list(&in_scope).await.unwrap();
        assert_eq!(
            review.iter().map(|(p, _)| p.id).collect::<Vec<_>>(),
            vec![other],
            "{name}: positive, not confirmed"
        );
        // the confirmed person with a positive result is not on it
        let mut lab2 = lab.clone();
        lab2.id = new_id();
        lab2.person_id = pid;
        store.insert_lab_result(&lab2).await.unwrap();
        assert_eq!(
            store.review_list(&in_scope).await.unwrap().len(),
            1,
            "{name}"
        );
    }
}

async fn person_via_api(app: &TestApp, id: &str, name: &str, phone: &str, token: &str) -> String {
    let site = app.site(SiteKind::Checkpoint, "150802");
    assert_eq!(
        app.register(site, &checkpoint_body(id, name, phone))
            .await
            .status(),
        201
    );
    find_person(app, id, token).await
}

/// `POST /api/v1/lists?name=NAME` with `body` as the file.
async fn post_list(
    app: &TestApp,
    token: &str,
    name: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .post(format!("{}/api/v1/lists", app.base))
        .query(&[("name", name)])
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The id of the person with this ID number, found by search.
/// `GET /api/v1/persons?q=...` as `token`, read as JSON.
async fn search(app: &TestApp, q: &str, token: &str) -> Value {
    app.client
        .get(format!("{}/api/v1/persons", app.base))
        .query(&[("q", q)])
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A merge of `from` into `into`, made now.
fn merge_record(from: Uuid, into: Uuid) -> PersonMerge {
    PersonMerge {
        id: new_id(),
        from_person: from,
        into_person: into,
        at: Utc::now(),
        by_user: None,
        by_username: "epi".into(),
        reason: "同一人".into(),
        undone_at: None,
    }
}

/// How many registrations the store lists for a person (theirs and those of records merged
/// into them).
async fn registrations_of(store: &dyn epigrid_core::store::Store, pid: Uuid) -> usize {
    let f = epigrid_core::model::RegistrationFilter {
        person_id: Some(pid),
        limit: 100,
        ..Default::default()
    };
    store.registrations(&Scope::all(), &f).await.unwrap().len()
}

/// Stores a list called `name`, uploaded in `area_path`, whose line 2 names `person` by ID
/// number.
async fn insert_matched_list(
    store: &dyn epigrid_core::store::Store,
    name: &str,
    area_path: &str,
    person: Uuid,
) {
    let list = epigrid_core::store::ListRecord {
        id: new_id(),
        name: name.into(),
        uploaded_by: None,
        area_path: area_path.into(),
        created_at: chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap(),
        rows: 1,
        bad_rows: 0,
    };
    let found = epigrid_core::matching::ListMatch {
        line: 2,
        person_id: person,
        method: "id_number",
        confidence: 1.0,
        review: false,
        decision: None,
    };
    store.insert_list(&list, &[], &[found]).await.unwrap();
}

/// Classifies a person through the API (contacts are marked for someone under investigation).
async fn classify(app: &TestApp, pid: &str, category: &str, token: &str) {
    let status = app.set_category(pid, category, "调查", token).await;
    assert_eq!(status, 200, "{category}");
}

async fn find_person(app: &TestApp, id: &str, token: &str) -> String {
    let v: Value = app
        .get_json(&format!("/api/v1/persons?q={id}"), token)
        .await;
    v["items"][0]["id"]
        .as_str()
        .expect("found by ID number")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_finds_people_by_document_phone_plate_and_name_in_scope() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let other = app.token("wuyuan", Role::GridWorker, "150821").await;
    let id = cn_id("150802", "19900101", 417);
    let pid = person_via_api(&app, &id, "欧阳晓明", "13700001111", &epi).await;
    for q in [
        id.as_str(),
        "13700001111",
        "蒙L12345",
        "蒙L·12345",
        "晓明",
        "欧阳晓明",
        &id.to_lowercase(),
    ] {
        let v = search(&app, q, &epi).await;
        assert!(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == pid.as_str()),
            "{q}"
        );
        assert!(
            !v.to_string().contains("13700001111") && !v.to_string().contains(&id),
            "{q}: masked"
        );
        let v = search(&app, q, &other).await;
        assert!(
            v["items"].as_array().unwrap().is_empty(),
            "{q}: out of scope"
        );
    }
    // a name looked for as it may be typed: a full-width full stop for the middle dot, a
    // full-width space
    let uyghur = person_via_api(
        &app,
        &cn_id("150802", "19900101", 77),
        "热依拉·艾山",
        "13700007777",
        &epi,
    )
    .await;
    let ivan = person_via_api(
        &app,
        &cn_id("150802", "19900101", 78),
        "Ivan Petrov",
        "13700007778",
        &epi,
    )
    .await;
    let v = search(&app, "IVAN petrov", &epi).await;
    assert_eq!(
        v["items"][0]["id"],
        ivan.as_str(),
        "case is not a name's: {v}"
    );
    for q in ["热依拉．艾山", "热依拉 · 艾山", "拉.艾"] {
        let v = search(&app, q, &epi).await;
        assert!(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == uyghur.as_str()),
            "{q}: {v}"
        );
    }
    for bad in ["", "12", "张三12"] {
        let r = app
            .client
            .get(format!("{}/api/v1/persons", app.base))
            .query(&[("q", bad)])
            .bearer_auth(&epi)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn category_changes_follow_the_rules_and_keep_history() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let gw = app.token("gw", Role::GridWorker, "150802").await;
    let pid = person_via_api(
        &app,
        &cn_id("150802", "19900101", 1),
        "张三",
        "13700000001",
        &epi,
    )
    .await;
    let set = |c: &'static str, tok: String| {
        let app = &app;
        let pid = pid.clone();
        async move {
            app.post_json(
                &format!("/api/v1/persons/{pid}/category"),
                &json!({"category": c, "reason": "流调结果"}),
                Some(&tok),
            )
            .await
        }
    };
    assert_eq!(
        set("suspected", gw.clone()).await.status(),
        403,
        "grid workers do not classify"
    );
    assert_eq!(set("suspected", epi.clone()).await.status(), 200);
    assert_eq!(set("confirmed", epi.clone()).await.status(), 200);
    // one confirmed case: an analyst's counts say neither that nor where (fewer than five,
    // zero included, is one answer), while an epidemiologist's say both
    let analyst = app.token("analyst", Role::Analyst, "150802").await;
    let counts = |tok: String| {
        let app = &app;
        async move {
            app.get("/api/v1/category-counts", Some(&tok))
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let keeper = app.token("keeper", Role::SiteStaff, "150802").await;
    for who in [analyst, keeper] {
        let seen = counts(who).await;
        assert!(
            seen["totals"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["count"].is_null())
                && seen["by_area"].as_array().unwrap().is_empty(),
            "{seen}"
        );
    }
    let full = counts(epi.clone()).await;
    assert_eq!(full["by_area"].as_array().unwrap().len(), 1, "{full}");
    let r = set("close_contact", epi.clone()).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["message"].as_str().unwrap().contains("确诊"),
        "the reason is said: {v}"
    );
    assert_eq!(set("zombie", epi.clone()).await.status(), 422);
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/category"),
            &json!({"category": "recovered"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 422, "a reason is required");
    assert_eq!(set("deceased", epi.clone()).await.status(), 200);
    assert_eq!(
        set("recovered", epi.clone()).await.status(),
        409,
        "nothing after deceased"
    );
    let v: Value = app.get_json(&format!("/api/v1/persons/{pid}"), &epi).await;
    let hist: Vec<(&str, &str)> = v["category_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["from"].as_str().unwrap(), h["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        hist,
        [
            ("none", "suspected"),
            ("suspected", "confirmed"),
            ("confirmed", "deceased")
        ]
    );
    assert_eq!(v["category"], "deceased");
    assert_eq!(v["registrations"].as_array().unwrap().len(), 1);
    let counts: Value = app.get_json("/api/v1/category-counts", &epi).await;
    assert!(
        counts["totals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["count"] == 0),
        "a deceased person is not among the four: {counts}"
    );
}

/// One observation at a time: an observation that ran past its end is not extended back
/// open while a newer one is open (its link would work again, beside the newer one's).
#[tokio::test(flavor = "multi_thread")]
async fn an_ended_observation_is_not_reopened_beside_a_newer_one() {
    let app = TestApp::start().await;
    let epi = app
        .token("epi_reopen", Role::Epidemiologist, "150802")
        .await;
    let pid = person_via_api(
        &app,
        &cn_id("150802", "19771231", 244),
        "再观察",
        "13700002244",
        &epi,
    )
    .await;
    let today = local_today();
    let open = |start: NaiveDate| {
        let (app, epi, pid) = (&app, epi.clone(), pid.clone());
        async move {
            let r = app
                .post_json(
                    &format!("/api/v1/persons/{pid}/observations"),
                    &json!({"kind": "home", "start": start.to_string(), "days": 14}),
                    Some(&epi),
                )
                .await;
            assert_eq!(r.status(), 201, "{start}");
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let extend = |oid: String| {
        let (app, epi) = (&app, epi.clone());
        async move {
            status_and_codes(
                app.patch_json(
                    &format!("/api/v1/observations/{oid}"),
                    &json!({"extend_days": 14}),
                    Some(&epi),
                )
                .await,
            )
            .await
        }
    };
    // ended a week ago, never released
    let old = open(today - Duration::days(20)).await;
    let newer = open(today).await;
    assert_eq!(
        extend(old.clone()).await,
        (409, vec![":err.observation.already_open".to_string()])
    );
    // the newer one released, the old one may be extended again (say, a follow-up)
    assert_eq!(
        release_after_negative_test(&app, &epi, &pid, &newer, today).await,
        200
    );
    assert_eq!(extend(old).await.0, 200);
}

/// A negative test taken on `day`, then the observation `oid` released early; the release's
/// status.
async fn release_after_negative_test(
    app: &TestApp,
    token: &str,
    pid: &str,
    oid: &str,
    day: NaiveDate,
) -> u16 {
    let lab = app
        .post_json(
            &format!("/api/v1/persons/{pid}/lab-results"),
            &json!({"test": "nucleic_acid", "sample_date": day.to_string(), "result": "negative"}),
            Some(token),
        )
        .await;
    assert_eq!(lab.status(), 201);
    app.patch_json(
        &format!("/api/v1/observations/{oid}"),
        &json!({"release_reason": "阴性", "early_release": true}),
        Some(token),
    )
    .await
    .status()
    .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn observation_links_take_one_report_per_slot_and_feed_the_line_lists() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let admin = app.token("admin", Role::Admin, "150800").await;
    let pid = person_via_api(
        &app,
        &cn_id("150802", "19771231", 233),
        "司马静",
        "13700002222",
        &epi,
    )
    .await;
    let start = local_today();
    for (body, field) in [
        (
            json!({"kind": "home", "start": start.to_string(), "days": -3}),
            "days",
        ),
        (
            json!({"kind": "tent", "start": start.to_string(), "days": 14}),
            "kind",
        ),
        (
            json!({"kind": "home", "start": "28/11/2026", "days": 14}),
            "start",
        ),
        (
            json!({"kind": "central", "start": start.to_string(), "days": 14}),
            "site_id",
        ),
        (
            json!({"kind": "home", "start": "2100-12-31", "days": 3.0}),
            "start",
        ),
    ] {
        let r = app
            .post_json(
                &format!("/api/v1/persons/{pid}/observations"),
                &body,
                Some(&epi),
            )
            .await;
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["field"], field, "{v}");
        if body["start"] == "2100-12-31" {
            // says the window it takes, not "after today", and 3.0 days is three
            assert_eq!(v["errors"][0]["code"], "err.date.range");
            assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
        }
    }
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/observations"),
            &json!({"kind": "home", "start": start.to_string(), "days": 14}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 201);
    let obs: Value = r.json().await.unwrap();
    let url = obs["report_url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&app.base) && url.contains("/r/"));
    let token = url.rsplit('/').next().unwrap().to_string();
    let again = app
        .post_json(
            &format!("/api/v1/persons/{pid}/observations"),
            &json!({"kind": "home"}),
            Some(&epi),
        )
        .await;
    assert_eq!(again.status(), 409, "one open observation at a time");

    let page = app.client.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.len() < 20_000 && html.contains("<form"),
        "{} bytes",
        html.len()
    );
    assert!(
        !html.contains("司马静"),
        "the name is masked on the link page"
    );

    let bad = app
        .post_json(
            &format!("/api/v1/reports/{token}"),
            &json!({"temperature": 48, "symptoms": ["cough"]}),
            None,
        )
        .await;
    assert_eq!(bad.status(), 422);
    let ok = app
        .post_json(
            &format!("/api/v1/reports/{token}"),
            &json!({"temperature": 38.2, "symptoms": ["cough"]}),
            None,
        )
        .await;
    assert_eq!(ok.status(), 201);
    let dup = app
        .post_json(
            &format!("/api/v1/reports/{token}"),
            &json!({"temperature": 36.9, "symptoms": []}),
            None,
        )
        .await;
    assert_eq!(dup.status(), 409);
    // the person's record shows the report as reported, not as stored
    let person: Value = app.get_json(&format!("/api/v1/persons/{pid}"), &epi).await;
    let report = &person["reports"][0];
    assert_eq!(
        (&report["temperature"], &report["symptoms"]),
        (&json!(38.2), &json!(["cough"])),
        "{report}"
    );
    assert_eq!(
        app.post_status(
            &format!("/api/v1/reports/{token}x"),
            &json!({"temperature": 36.9}),
            None
        )
        .await,
        404
    );

    let list: Value = app
        .get_json("/api/v1/observations?status=symptomatic", &epi)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let today: Value = app
        .get_json("/api/v1/observations?status=reported_today", &epi)
        .await;
    assert_eq!(today["items"].as_array().unwrap().len(), 1);
    let none: Value = app
        .get_json("/api/v1/observations?status=not_reported", &epi)
        .await;
    assert!(none["items"].as_array().unwrap().is_empty());
    assert_eq!(
        app.get("/api/v1/observations?status=sleeping", Some(&epi))
            .await
            .status(),
        422
    );

    // revoke the link: reports refused, the page says so
    let oid = obs["id"].as_str().unwrap();
    let r = app
        .patch_json(
            &format!("/api/v1/observations/{oid}"),
            &json!({"revoke_link": true}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.post_status(
            &format!("/api/v1/reports/{token}"),
            &json!({"temperature": 36.5}),
            None
        )
        .await,
        410
    );
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 410);
    // a release reason is one line of text
    for bad in [json!("阴性\u{7}"), json!(""), json!(5)] {
        let r = app
            .patch_json(
                &format!("/api/v1/observations/{oid}"),
                &json!({"release_reason": bad, "early_release": true}),
                Some(&epi),
            )
            .await;
        let (status, codes) = status_and_codes(r).await;
        assert_eq!(
            (status, codes.len(), codes[0].split(':').next()),
            (422, 1, Some("release_reason")),
            "{bad}: {codes:?}"
        );
    }
    // early release needs a negative test
    let r = app
        .patch_json(
            &format!("/api/v1/observations/{oid}"),
            &json!({"release_reason": "阴性", "early_release": true}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        release_after_negative_test(&app, &epi, &pid, oid, start).await,
        200
    );
    let ended: Value = app
        .get_json("/api/v1/observations?status=ended", &epi)
        .await;
    assert_eq!(ended["items"].as_array().unwrap().len(), 1);

    // the export is CSV with a BOM, masked unless asked, and audited
    let csv = app
        .get("/api/v1/observations/export.csv", Some(&epi))
        .await
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with('\u{feff}') && csv.contains("司*静") && !csv.contains("13700002222"));
    // unmasked, the export asks a reason, as one unmask does, and logs each person shown
    let r = app
        .get("/api/v1/observations/export.csv?unmask=1", Some(&epi))
        .await;
    assert_eq!(
        status_and_codes(r).await,
        (422, vec!["reason:err.required".to_string()])
    );
    let csv = app
        .get(
            "/api/v1/observations/export.csv?unmask=1&reason=%E9%9A%8F%E8%AE%BF",
            Some(&epi),
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(csv.contains("13700002222"));
    // one unmask entry for each person in the export (its lines after the header)
    let unmasks: Value = app.get_json("/api/v1/audit?action=unmask", &admin).await;
    let exported: Vec<&Value> = unmasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"] == "export csv: 随访")
        .collect();
    let people = csv.trim_end().lines().count() - 1;
    assert!(people > 0, "{csv}");
    assert_eq!(exported.len(), people, "{unmasks}");
    assert!(
        exported.iter().all(|e| e["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("person:"))),
        "{unmasks}"
    );
    let xlsx = app
        .get("/api/v1/observations/export.xlsx", Some(&epi))
        .await;
    assert_eq!(xlsx.status(), 200);
    assert!(xlsx.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("spreadsheetml"));
    let bytes = xlsx.bytes().await.unwrap();
    assert_eq!(&bytes[..2], b"PK", "an XLSX is a zip package");
    let staff = app.token("keeper", Role::SiteStaff, "150802").await;
    // site staff see their sites' registrations, not people's follow-up, masked or not
    for (q, who, status) in [
        ("", &staff, 403),
        ("?unmask=1", &staff, 403),
        ("?unmask=true", &staff, 403),
        ("?unmask=yes", &epi, 422),
    ] {
        assert_eq!(
            app.get(&format!("/api/v1/observations/export.csv{q}"), Some(who))
                .await
                .status(),
            status,
            "{q}: site staff may not export, however it is asked; a bad value is named"
        );
    }
    let audit: Value = app.get_json("/api/v1/audit", &admin).await;
    assert_eq!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "export")
            .count(),
        3
    );
    // from a browser session, an unmasked export needs the session's CSRF token (a link
    // cannot make one)
    let cookie = app.cookie("epi_page", Role::Epidemiologist, "150802").await;
    let csrf = input_value(&app.page("/", &cookie).await, "csrf");
    let export = |token: Option<String>| {
        let mut req = app
            .client
            .get(format!(
                "{}/api/v1/observations/export.csv?unmask=1&reason=%E9%9A%8F%E8%AE%BF",
                app.base
            ))
            .header("cookie", &cookie);
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    let r = export(None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.text().await.unwrap().contains("13700002222"));
    let r = export(Some(csrf)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("13700002222"));
}

#[tokio::test(flavor = "multi_thread")]
async fn positive_results_put_people_on_the_review_list() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let pid = person_via_api(
        &app,
        &cn_id("150802", "19900101", 3),
        "王五",
        "13700000003",
        &epi,
    )
    .await;
    let today = Utc::now().date_naive();
    for (body, field) in [
        (
            json!({"test": "blood", "sample_date": today.to_string(), "result": "positive"}),
            "test",
        ),
        (
            json!({"test": "antigen", "sample_date": "2999-01-01", "result": "positive"}),
            "sample_date",
        ),
        (
            json!({"test": "antigen", "sample_date": today.to_string(), "result": "maybe"}),
            "result",
        ),
    ] {
        let r = app
            .post_json(
                &format!("/api/v1/persons/{pid}/lab-results"),
                &body,
                Some(&epi),
            )
            .await;
        assert_eq!(r.status(), 422, "{body}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["errors"][0]["field"],
            field
        );
    }
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/lab-results"),
            &json!({"test": "antigen", "sample_date": today.to_string(), "result": "positive"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["needs_review"], true);
    let list: Value = app.get_json("/api/v1/review", &epi).await;
    assert_eq!(list["items"][0]["person"]["id"], pid.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_form_works_without_javascript() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let pid = person_via_api(
        &app,
        &cn_id("150802", "19900101", 4),
        "赵六",
        "13700000004",
        &epi,
    )
    .await;
    let obs: Value = app
        .post_json(
            &format!("/api/v1/persons/{pid}/observations"),
            &json!({}),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = obs["report_url"].as_str().unwrap();
    let r = app
        .client
        .post(url)
        .form(&[("temperature", "abc")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = app
        .client
        .post(url)
        .form(&[("temperature", "36.6"), ("symptoms", "none")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("已收到"));
    let r = app
        .client
        .post(url)
        .form(&[("temperature", "36.6")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // an observation that begins tomorrow: the form says so and stays, it is not "ended"
    let later = person_via_api(
        &app,
        &cn_id("150802", "19771231", 245),
        "明天起",
        "13700002245",
        &epi,
    )
    .await;
    let tomorrow = (Utc::now() + Duration::hours(8) + Duration::days(1)).date_naive();
    let obs: Value = app
        .post_json(
            &format!("/api/v1/persons/{later}/observations"),
            &json!({"kind": "home", "start": tomorrow.to_string(), "days": 14}),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = format!("{}?lang=en", obs["report_url"].as_str().unwrap());
    let r = app
        .client
        .post(&url)
        .form(&[("temperature", "36.6"), ("symptoms", "none")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("The observation has not started yet.") && html.contains("<form"),
        "{html}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_are_merged_reversibly_and_details_corrected() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let admin = app.token("admin", Role::Admin, "150800").await;
    let gate = app.site(SiteKind::Gate, "150802").clone();
    // the same man registered once with his ID card and once at a gate without it
    let real = person_via_api(
        &app,
        &cn_id("150802", "19660606", 7),
        "刘德",
        "13600000007",
        &epi,
    )
    .await;
    let r = app.register(&gate, &json!({"name": "刘德", "phone": "13600000008", "temperature": 36.4, "direction": "in", "symptoms": []})).await;
    let dup = app.stored(r).await["person_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(dup, real);

    let bad = app
        .post_json(
            &format!("/api/v1/persons/{dup}/merge"),
            &json!({"into": dup, "reason": "同一人"}),
            Some(&epi),
        )
        .await;
    assert_eq!(bad.status(), 422);
    let r = app
        .post_json(
            &format!("/api/v1/persons/{dup}/merge"),
            &json!({"into": real, "reason": "同一人，核对证件"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    let merge_id = r.json::<Value>().await.unwrap()["merge_id"]
        .as_str()
        .unwrap()
        .to_string();
    let v: Value = app.get_json(&format!("/api/v1/persons/{real}"), &epi).await;
    assert_eq!(
        v["registrations"].as_array().unwrap().len(),
        2,
        "the kept person shows both registrations"
    );
    // staff registering the duplicate's details again get the registration as stored: the
    // kept person's, as a later GET says
    let keeper = app.token("keeper", Role::SiteStaff, "150802").await;
    let r = app
        .post_json(
            &format!("/api/v1/sites/{}/registrations", gate.token),
            &json!({"name": "刘德", "phone": "13600000008", "temperature": 36.4, "direction": "out", "symptoms": []}),
            Some(&keeper),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["person_id"], real.as_str());
    let found: Value = app
        .get_json("/api/v1/persons?q=%E5%88%98%E5%BE%B7", &epi)
        .await;
    assert_eq!(
        found["items"].as_array().unwrap().len(),
        1,
        "the duplicate no longer shows in search"
    );
    // a search too long is said to be so, not empty
    let r = app
        .get(
            &format!("/api/v1/persons?q={}", "张".repeat(41)),
            Some(&epi),
        )
        .await;
    assert_eq!(
        status_and_codes(r).await,
        (422, vec!["q:err.text.too_long".to_string()])
    );
    assert_eq!(
        app.post_status(
            &format!("/api/v1/persons/{dup}/merge"),
            &json!({"into": real, "reason": "again"}),
            Some(&epi)
        )
        .await,
        409
    );

    let r = app
        .post_json(
            &format!("/api/v1/merges/{merge_id}/undo"),
            &json!({}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = app.get_json(&format!("/api/v1/persons/{real}"), &epi).await;
    assert_eq!(v["registrations"].as_array().unwrap().len(), 1, "undone");
    assert_eq!(
        app.post_status(
            &format!("/api/v1/merges/{merge_id}/undo"),
            &json!({}),
            Some(&epi)
        )
        .await,
        404,
        "only once"
    );

    let r = app
        .patch_json(
            &format!("/api/v1/persons/{dup}"),
            &json!({"name": "刘德华", "home_area_code": "150802001001001002"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["home_area_code"],
        "150802001001001002"
    );
    let r = app
        .patch_json(
            &format!("/api/v1/persons/{dup}"),
            &json!({"name": "12", "home_area_code": "150821"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 422);
    // an area code that is not text is refused, not ignored
    let r = app
        .patch_json(
            &format!("/api/v1/persons/{dup}"),
            &json!({"home_area_code": 150802001001001002u64}),
            Some(&epi),
        )
        .await;
    let (status, codes) = status_and_codes(r).await;
    assert_eq!(
        (status, codes),
        (422, vec!["home_area_code:err.text.format".to_string()])
    );
    // a document or phone number is not corrected this way, and says so
    let r = app
        .patch_json(
            &format!("/api/v1/persons/{dup}"),
            &json!({"phone": "13900000000"}),
            Some(&epi),
        )
        .await;
    let (status, codes) = status_and_codes(r).await;
    assert_eq!(
        (status, codes[0].as_str()),
        (422, "phone:err.field.unchangeable_person")
    );
    // a key a correction does not take is named as such, not as the record's identity
    let r = app
        .patch_json(
            &format!("/api/v1/persons/{dup}"),
            &json!({"name": "刘德华", "reason": "typo"}),
            Some(&epi),
        )
        .await;
    let (status, codes) = status_and_codes(r).await;
    assert_eq!(
        (status, codes[0].as_str()),
        (422, "reason:err.field.unknown_person")
    );
    let audit: Value = app.get_json("/api/v1/audit", &admin).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["person.merge", "person.unmerge", "person.correct"] {
        assert!(actions.contains(&a), "{a} audited");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn merges_and_corrections_behave_the_same_on_every_store() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let linhe = site_in(&sites, "150802");
        let a =
            registered_person(store.as_ref(), linhe, &cn_id("150802", "19700101", 1), "甲").await;
        let b =
            registered_person(store.as_ref(), linhe, &cn_id("150802", "19700101", 2), "甲").await;
        // b drove another car before anyone knew b and a are one person
        let mut by_car = checkpoint_body(&cn_id("150802", "19700101", 2), "甲", "13911112222");
        by_car["plate"] = "蒙L99999".into();
        // with a named companion, and near someone else (an imported proximity record)
        let companion_id = cn_id("150802", "19700101", 5);
        by_car["companions"] =
            json!([{"name": "同车", "id_type": "cn_id", "id_number": companion_id}]);
        let since = Utc::now() - Duration::minutes(1);
        let with_companion = register_at(store.as_ref(), linhe, &by_car, Utc::now()).await;
        let companion = with_companion.companion_list[0].person.as_ref().unwrap().id;
        let near =
            registered_person(store.as_ref(), linhe, &cn_id("150802", "19700101", 6), "丁").await;
        store
            .insert_proximity(vec![epigrid_core::trace::ProximityRow {
                id: new_id(),
                a: b,
                b: near,
                at: Utc::now(),
                duration_s: 900,
                source: "test".into(),
            }])
            .await
            .unwrap();
        let merge = PersonMerge {
            id: new_id(),
            from_person: b,
            into_person: a,
            at: Utc::now(),
            by_user: None,
            by_username: "epi".into(),
            reason: "same".into(),
            undone_at: None,
        };
        store.merge_persons(&merge).await.unwrap();
        assert_eq!(
            store
                .search_persons(&Scope::all(), &PersonQuery::Plate("蒙L99999".into()), 10)
                .await
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            vec![a],
            "{name}: a plate seen under the merged-away record finds the kept person"
        );
        // and tracing follows the merge for companions and proximity, as for visits
        let data = store.trace_data(since).await.unwrap();
        assert_eq!(
            data.companions
                .iter()
                .map(|c| (c.0, c.1))
                .collect::<Vec<_>>(),
            vec![(a, companion)],
            "{name}: the companion travelled with the kept person"
        );
        assert_eq!(
            data.proximity
                .iter()
                .map(|p| (p.0, p.1))
                .collect::<Vec<_>>(),
            vec![(a, near)],
            "{name}: the kept person was near"
        );
        // the merged-away record takes no new facts, even from a caller that read it before
        // the merge: no category, no observation
        let change = |p: Uuid, to: Category| CategoryChange {
            id: new_id(),
            person_id: p,
            from: Category::None,
            to,
            at: Utc::now(),
            by_user: None,
            by_username: "epi".into(),
            reason: "test".into(),
        };
        assert!(
            !store
                .change_category(&change(b, Category::Confirmed))
                .await
                .unwrap(),
            "{name}: no category on a merged-away record"
        );
        let o = observation(b, Utc::now().date_naive(), 14, "tok-merged");
        assert!(
            matches!(
                store.insert_observation(&o).await,
                Err(epigrid_core::store::StoreError::Conflict(_))
            ),
            "{name}: no observation on a merged-away record"
        );
        // and a record that became a case after the caller looked is not merged into one
        // that is not (the case would be counted nowhere)
        let e =
            registered_person(store.as_ref(), linhe, &cn_id("150802", "19700101", 5), "戊").await;
        let f =
            registered_person(store.as_ref(), linhe, &cn_id("150802", "19700101", 6), "戊").await;
        assert!(store
            .change_category(&change(f, Category::Confirmed))
            .await
            .unwrap());
        let refused = store
            .merge_persons(&PersonMerge {
                id: new_id(),
                from_person: f,
                into_person: e,
                ..merge.clone()
            })
            .await;
        assert!(
            matches!(refused, Err(epigrid_core::store::StoreError::Conflict(_))),
            "{name}: {refused:?}"
        );
        assert!(
            matches!(
                store
                    .merge_persons(&PersonMerge {
                        id: new_id(),
                        ..merge.clone()
                    })
                    .await,
                Err(epigrid_core::store::StoreError::Conflict(_))
            ),
            "{name}"
        );
        let count = |p: Uuid| {
            let store = store.clone();
            async move {
                store
                    .registrations(
                        &Scope::all(),
                        &epigrid_core::model::RegistrationFilter {
                            person_id: Some(p),
                            limit: 10,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap()
                    .len()
            }
        };
        assert_eq!(
            count(a).await,
            3,
            "{name}: their two and the one with the other car"
        );
        // a merged record comes back: the new registration goes to the surviving person
        // (the SQLite writer must not answer from what it remembered before the merge)
        let c =
            registered_person(store.as_ref(), linhe, &cn_id("150802", "19700101", 3), "丙").await;
        let d =
            registered_person(store.as_ref(), linhe, &cn_id("150802", "19700101", 4), "丙").await;
        let d_into_c = new_id();
        store
            .merge_persons(&PersonMerge {
                id: d_into_c,
                from_person: d,
                into_person: c,
                ..merge.clone()
            })
            .await
            .unwrap();
        let back = register_with_phone(
            store.as_ref(),
            linhe,
            &cn_id("150802", "19700101", 4),
            "13900000044",
            Utc::now(),
        )
        .await;
        assert_eq!((count(c).await, count(d).await), (3, 1), "{name}");
        // its phone and document are those of the record it came in as, sealed for it: not
        // the kept record's document, which whoever typed d's number must not read back
        let secrets = store
            .registration_secrets(back.id, &Scope::all())
            .await
            .unwrap()
            .expect("in scope");
        assert_eq!(secrets.came_in_as, d, "{name}");
        let open = |col: &str, c: Option<Vec<u8>>| {
            vault()
                .open(&format!("persons.{col}:{d}"), &c.expect("sealed"))
                .unwrap()
        };
        assert_eq!(open("phone", secrets.phone_cipher), "13900000044", "{name}");
        assert_eq!(
            open("doc", secrets.doc_cipher),
            cn_id("150802", "19700101", 4),
            "{name}"
        );
        let shown = store
            .registration(back.id, &Scope::all())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shown.doc_masked, back.person.doc_masked, "{name}");
        assert_eq!(shown.person_id, c, "{name}: it counts for the kept person");
        // undone, the merge gives d back what came in as d meanwhile
        store
            .undo_merge(d_into_c, &Scope::all(), Utc::now())
            .await
            .unwrap();
        assert_eq!((count(c).await, count(d).await), (1, 2), "{name}");
        let shown = store
            .registration(back.id, &Scope::all())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shown.person_id, d, "{name}");
        assert_eq!(
            typed_phone(store.as_ref(), back.id, &Scope::all())
                .await
                .map(|(_, sealed_for)| sealed_for),
            Some(d),
            "{name}: still opens as d's"
        );
        assert_eq!(
            store
                .search_persons(&Scope::all(), &PersonQuery::Name("甲".into()), 10)
                .await
                .unwrap()
                .len(),
            1,
            "{name}"
        );
        assert!(
            matches!(
                store
                    .undo_merge(merge.id, &Scope::new("/150800/150821/"), Utc::now())
                    .await,
                Err(epigrid_core::store::StoreError::NotFound)
            ),
            "{name}: not from outside the people's area"
        );
        let undone = store
            .undo_merge(merge.id, &Scope::all(), Utc::now())
            .await
            .unwrap();
        assert!(undone.undone_at.is_some(), "{name}");
        assert!(
            matches!(
                store.undo_merge(merge.id, &Scope::all(), Utc::now()).await,
                Err(epigrid_core::store::StoreError::NotFound)
            ),
            "{name}"
        );
        assert_eq!(
            store
                .search_persons(&Scope::all(), &PersonQuery::Name("甲".into()), 10)
                .await
                .unwrap()
                .len(),
            2,
            "{name}"
        );
        store
            .update_person(
                b,
                "乙",
                Some((
                    "150802001001001001",
                    "/150800/150802/150802001/150802001001/150802001001001/150802001001001001/",
                )),
            )
            .await
            .unwrap();
        let p = store.person(b, &Scope::all()).await.unwrap().unwrap();
        assert_eq!(
            (p.name.as_str(), p.home_area_code.as_deref()),
            ("乙", Some("150802001001001001")),
            "{name}"
        );
        assert!(
            matches!(
                store.update_person(Uuid::nil(), "丙", None).await,
                Err(epigrid_core::store::StoreError::NotFound)
            ),
            "{name}"
        );
        // a merge, even undone, is a decision about both people: `a` (kept by it) stays put
        let wuyuan = site_in(&sites, "150821");
        let id_a = cn_id("150802", "19700101", 1);
        register_with_phone(store.as_ref(), wuyuan, &id_a, "13000000001", Utc::now()).await;
        let kept = store.person(a, &Scope::all()).await.unwrap().unwrap();
        assert!(
            kept.area_path.starts_with("/150800/150802/"),
            "{name}: {}",
            kept.area_path
        );
        // a correction of someone's details sticks: a later registration elsewhere moves
        // neither them nor their corrected name
        let id_e = cn_id("150802", "19700101", 5);
        let e = registered_person(store.as_ref(), linhe, &id_e, "错字").await;
        store.update_person(e, "更正", None).await.unwrap();
        register_at(
            store.as_ref(),
            wuyuan,
            &checkpoint_body(&id_e, "别名", "13000000005"),
            Utc::now(),
        )
        .await;
        let corrected = store.person(e, &Scope::all()).await.unwrap().unwrap();
        assert_eq!(
            (
                corrected.name.as_str(),
                corrected.area_path.starts_with("/150800/150802/")
            ),
            ("更正", true),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tracing_finds_people_who_shared_a_place_in_scope_with_evidence() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let venue = app.site(SiteKind::Venue, "150802").clone();
    let elsewhere = app.site(SiteKind::Venue, "150821").clone();
    let body = |id: &str, name: &str| json!({"name": name, "id_number": id, "phone": "13500000000", "temperature": 36.5, "symptoms": []});
    let case = cn_id("150802", "19800101", 1);
    // 外县丁 was with the case, then went home to the other county and met 本县戊 there, who
    // came back: 戊 is a second-degree contact through someone this caller may not see
    let (ding, wu) = (
        cn_id("150821", "19800101", 4),
        cn_id("150802", "19800101", 5),
    );
    for (id, name, site) in [
        (case.clone(), "病例甲", &venue),
        (cn_id("150802", "19800101", 2), "同场乙", &venue),
        (cn_id("150821", "19800101", 3), "外县丙", &elsewhere),
        (ding.clone(), "外县丁", &venue),
        (ding.clone(), "外县丁", &elsewhere),
        (wu.clone(), "本县戊", &elsewhere),
    ] {
        assert_eq!(app.register(site, &body(&id, name)).await.status(), 201);
    }
    let home = app.site(SiteKind::Checkpoint, "150802").clone();
    assert_eq!(
        app.register(&home, &checkpoint_body(&wu, "本县戊", "13500000005"))
            .await
            .status(),
        201
    );
    let pid = find_person(&app, &case, &epi).await;
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({"degree": 3}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 422);
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({"degree": 2}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let contacts = v["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 2, "{v}");
    let second = contacts.iter().find(|c| c["degree"] == 2).expect("戊");
    assert_eq!(second["name"], "本*戊");
    assert!(
        second["via_person_id"].is_null(),
        "the link is someone outside the caller's area: {second}"
    );
    // they met in the other county: when is evidence, which registrations is not given
    let evidence = &second["evidence"][0];
    assert!(evidence["from"].is_string(), "{evidence}");
    assert!(
        evidence["index_registration_id"].is_null()
            && evidence["contact_registration_id"].is_null(),
        "{evidence}"
    );
    let contacts: Vec<&Value> = contacts.iter().filter(|c| c["degree"] == 1).collect();
    assert_eq!(contacts.len(), 1, "{v}");
    assert_eq!(contacts[0]["name"], "同*乙");
    assert_eq!(contacts[0]["kinds"], json!(["co_location"]));
    assert!(contacts[0]["exposure_s"].as_i64().unwrap() > 0);
    assert!(contacts[0]["evidence"][0]["contact_registration_id"].is_string());
    let gw = app.token("gw", Role::GridWorker, "150802").await;
    assert_eq!(
        app.post_status(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({}),
            Some(&gw)
        )
        .await,
        403
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_proximity_records_become_contacts_and_bad_files_change_nothing() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let (ida, idb, idc) = (
            cn_id("150802", "19900101", 11),
            cn_id("150802", "19900101", 12),
            cn_id("150802", "19900101", 13),
        );
        let a = registered_person(store.as_ref(), &sites[0], &ida, "甲").await;
        let b = registered_person(store.as_ref(), &sites[4], &idb, "乙").await;
        let now = Utc::now().timestamp();
        let bad = format!(
            "time,a,b,duration_s\n{now},{ida},{idb},60\nyesterday,{ida},{idb}\n{now},{ida},123\n\
             -1000000000000,{ida},{idb}\n{},{ida},{idb}\n",
            now * 1000
        );
        let r = epigrid::import::import_proximity(
            store.as_ref(),
            &vault(),
            bad.as_bytes(),
            "study",
            epigrid_core::Lang::En,
        )
        .await
        .unwrap();
        let errs = r.unwrap_err();
        assert_eq!(
            errs.iter()
                .map(|e| (e.line, e.field.as_str()))
                .collect::<Vec<_>>(),
            // (a time in milliseconds, or one 29,000 years ago, is out of range)
            vec![(3, "time"), (4, "b"), (5, "time"), (6, "time")],
            "{name}"
        );
        assert!(
            store
                .trace_data(Utc::now() - Duration::days(1))
                .await
                .unwrap()
                .proximity
                .is_empty(),
            "{name}: nothing written"
        );
        let good = format!("{now} {ida} {idb}\n{now} {ida} {idc}\n");
        let r = epigrid::import::import_proximity(
            store.as_ref(),
            &vault(),
            good.as_bytes(),
            "study",
            epigrid_core::Lang::En,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.imported, r.unknown.len()),
            (1, 1),
            "{name}: the unknown person is reported and skipped"
        );
        let data = store
            .trace_data(Utc::now() - Duration::days(1))
            .await
            .unwrap();
        let loaded = Loaded::from_data(data);
        let ia = loaded.pid_of[&a];
        let found = loaded.records.trace(
            ia,
            &epigrid_core::trace::TraceParams {
                from: now - 3600,
                to: now + 3600,
                ..Default::default()
            },
        );
        let hit = found
            .iter()
            .find(|c| loaded.person_ids[c.person as usize] == b)
            .expect("b is a contact");
        assert!(
            hit.kinds
                .contains(&epigrid_core::trace::ContactKind::Proximity),
            "{name}: {:?}",
            hit.kinds
        );
        assert_eq!(
            hit.evidence
                .iter()
                .find(|e| e.kind == epigrid_core::trace::ContactKind::Proximity)
                .map(|e| e.exposure_s),
            Some(20),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn selected_contacts_are_classified_and_observed_in_one_action_or_not_at_all() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let gw = user(
        app.store.as_ref(),
        "gw_community",
        Role::GridWorker,
        "150802001001",
    )
    .await;
    user(app.store.as_ref(), "gw_county", Role::GridWorker, "150802").await;
    let case = person_via_api(
        &app,
        &cn_id("150802", "19700101", 1),
        "病例",
        "13800000001",
        &epi,
    )
    .await;
    classify(&app, &case, "suspected", &epi).await;
    let c1 = person_via_api(
        &app,
        &cn_id("150802", "19700101", 2),
        "接触一",
        "13800000002",
        &epi,
    )
    .await;
    let c2 = person_via_api(
        &app,
        &cn_id("150802", "19700101", 3),
        "接触二",
        "13800000003",
        &epi,
    )
    .await;
    // c2 is already confirmed: the whole action is refused and nothing changes
    let r = app
        .post_json(
            &format!("/api/v1/persons/{c2}/category"),
            &json!({"category": "confirmed", "reason": "阳性"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .post_json(
            &format!("/api/v1/persons/{case}/contacts"),
            &json!({"person_ids": [c1, c2], "reason": "同场所"}),
            Some(&epi),
        )
        .await;
    let (status, codes) = status_and_codes(r).await;
    assert_eq!(
        (status, codes.len(), codes[0].split(':').next()),
        (409, 1, Some("person_ids[1]")),
        "the one who blocks the batch is named: {codes:?}"
    );
    let v: Value = app.get_json(&format!("/api/v1/persons/{c1}"), &epi).await;
    assert_eq!(v["category"], "none", "nothing half-done");
    assert!(v["observations"].as_array().unwrap().is_empty());
    assert_eq!(
        app.post_status(
            &format!("/api/v1/persons/{case}/contacts"),
            &json!({"person_ids": [], "reason": "x"}),
            Some(&epi)
        )
        .await,
        422
    );
    for bad in ["x".repeat(501), "同场所\u{0}".to_string()] {
        let r = app
            .post_json(
                &format!("/api/v1/persons/{case}/contacts"),
                &json!({"person_ids": [c1], "reason": bad}),
                Some(&epi),
            )
            .await;
        assert_eq!(
            r.status(),
            422,
            "a reason is one line of at most 500 characters"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["field"], "reason", "{v}");
    }
    let r = app
        .post_json(
            &format!("/api/v1/persons/{case}/contacts"),
            &json!({"person_ids": [c1], "reason": "同场所"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["classified"], 1);
    assert_eq!(
        v["observations"][0]["grid_worker_id"],
        gw.id.to_string(),
        "the closest grid worker"
    );
    assert!(v["observations"][0]["report_url"]
        .as_str()
        .unwrap()
        .contains("/r/"));
    let p: Value = app.get_json(&format!("/api/v1/persons/{c1}"), &epi).await;
    assert_eq!(p["category"], "close_contact");
    assert_eq!(p["observations"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn classify_many_is_all_or_nothing_on_every_store() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let a = registered_person(
            store.as_ref(),
            &sites[0],
            &cn_id("150802", "19700101", 21),
            "甲",
        )
        .await;
        let b = registered_person(
            store.as_ref(),
            &sites[0],
            &cn_id("150802", "19700101", 22),
            "乙",
        )
        .await;
        let ch = |p, from| CategoryChange {
            id: new_id(),
            person_id: p,
            from,
            to: Category::CloseContact,
            at: Utc::now(),
            by_user: None,
            by_username: "epi".into(),
            reason: "x".into(),
        };
        let today = Utc::now().date_naive();
        let obs = observation(a, today, 14, "bulk-a");
        // b is not in "suspected": the batch fails and a is untouched
        let r = store
            .classify_many(
                &[ch(a, Category::None), ch(b, Category::Suspected)],
                std::slice::from_ref(&obs),
            )
            .await;
        assert!(
            matches!(r, Err(epigrid_core::store::StoreError::Conflict(_))),
            "{name}"
        );
        assert_eq!(
            store
                .person(a, &Scope::all())
                .await
                .unwrap()
                .unwrap()
                .category,
            Category::None,
            "{name}"
        );
        assert!(store.observations_of(a).await.unwrap().is_empty(), "{name}");
        store
            .classify_many(&[ch(a, Category::None), ch(b, Category::None)], &[obs])
            .await
            .unwrap();
        assert_eq!(
            store
                .person(b, &Scope::all())
                .await
                .unwrap()
                .unwrap()
                .category,
            Category::CloseContact,
            "{name}"
        );
        assert_eq!(store.observations_of(a).await.unwrap().len(), 1, "{name}");
        assert_eq!(store.category_history(a).await.unwrap().len(), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trace_page_lets_an_epidemiologist_review_and_mark_contacts() {
    let app = TestApp::start().await;
    let cookie = app.cookie("epi_page", Role::Epidemiologist, "150802").await;
    let epi = app.token("epi_api", Role::Epidemiologist, "150802").await;
    let venue = app.site(SiteKind::Venue, "150802").clone();
    let case_id = cn_id("150802", "19800101", 31);
    for (id, name) in [
        (case_id.clone(), "病例甲"),
        (cn_id("150802", "19800101", 32), "同场乙"),
    ] {
        assert_eq!(
            app.register(
                &venue,
                &json!({"name": name, "id_number": id, "phone": "13500000000", "symptoms": []})
            )
            .await
            .status(),
            201
        );
    }
    let pid = find_person(&app, &case_id, &epi).await;
    let html = app.page(&format!("/persons/{pid}/trace"), &cookie).await;
    assert!(
        html.contains("同*乙") && !html.contains("同场乙"),
        "masked contact listed"
    );
    let csrf = input_value(&html, "csrf");
    let contact = input_value(&html, "person_ids");
    // a grid worker cannot mark close contacts through the form either
    let gw = app.cookie("gw_page", Role::GridWorker, "150802").await;
    let gw_csrf = input_value(&app.page("/", &gw).await, "csrf");
    // nor is a trace offered on the person's page
    let gw_person = app.page(&format!("/persons/{pid}"), &gw).await;
    assert!(!gw_person.contains(&format!("/persons/{pid}/trace")));
    let epi_person = app.page(&format!("/persons/{pid}"), &cookie).await;
    assert!(epi_person.contains(&format!("/persons/{pid}/trace")));
    classify(&app, &pid, "confirmed", &epi).await;
    // the contact marked from the trace page, as `cookie`'s holder with the page's `csrf`
    let mark = |cookie: String, csrf: String| {
        let (app, contact, path) = (&app, &contact, format!("/persons/{pid}/contacts"));
        async move {
            // chosen twice (two boxes of one person): marked once
            let form = [
                ("csrf", csrf.as_str()),
                ("person_ids", contact.as_str()),
                ("person_ids", contact.as_str()),
                ("reason", "同场所"),
            ];
            app.post_page(&path, &cookie, &form).await
        }
    };
    let r = mark(gw.clone(), gw_csrf.clone()).await;
    assert_eq!(r.status(), 403);
    assert!(
        !r.text().await.unwrap().contains("同*乙"),
        "the refusal does not show the trace"
    );
    // one value that is not an id refuses the batch: nothing is marked
    let r = app
        .post_page(
            &format!("/persons/{pid}/contacts"),
            &cookie,
            &[
                ("csrf", csrf.as_str()),
                ("person_ids", contact.as_str()),
                ("person_ids", "junk"),
                ("reason", "同场所"),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    let p: Value = app
        .get_json(&format!("/api/v1/persons/{contact}"), &epi)
        .await;
    assert_eq!(p["category"], "none", "nothing half-done");
    let r = mark(cookie.clone(), csrf.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.text().await.unwrap().contains("/r/"),
        "report links shown"
    );
    let p: Value = app
        .get_json(&format!("/api/v1/persons/{contact}"), &epi)
        .await;
    assert_eq!(p["category"], "close_contact");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_lists_places_without_personal_data_and_records_who_comes_forward() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let venue = app.site(SiteKind::Venue, "150802").clone();
    let case_id = cn_id("150802", "19800101", 41);
    assert_eq!(
        app.register(
            &venue,
            &json!({"name": "病例丁", "id_number": case_id, "phone": "13500000041", "symptoms": []})
        )
        .await
        .status(),
        201
    );
    let pid = find_person(&app, &case_id, &epi).await;
    // only a case has a notice
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/notices"),
            &json!({}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 409, "not (yet) a case");
    assert_eq!(
        app.set_category(&pid, "confirmed", "核酸阳性", &epi).await,
        200
    );
    // then seen in another county (a case stays in their area), which this epidemiologist may not see
    let elsewhere = app.site(SiteKind::Checkpoint, "150821").clone();
    assert_eq!(
        app.register(
            &elsewhere,
            &checkpoint_body(&case_id, "病例丁", "13500000041")
        )
        .await
        .status(),
        201
    );
    // local dates, as the date error asks for; a bad one is named
    let local_day = |days: i64| {
        (Utc::now() + Duration::hours(8) + Duration::days(days))
            .date_naive()
            .to_string()
    };
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/notices"),
            &json!({"from": local_day(-1), "to": "31/12/2099"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["field"], "to", "{v}");
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/notices"),
            &json!({"from": local_day(-1), "to": local_day(1)}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 201, "local dates are taken");
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/notices"),
            &json!({}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 201);
    let n: Value = r.json().await.unwrap();
    assert_eq!(n["entries"][0]["place"], venue.name.as_str());
    assert_eq!(
        n["entries"].as_array().unwrap().len(),
        1,
        "only places in the caller's area: {n}"
    );
    // the person's timeline shows that place without detail, not even the registration's id
    let person: Value = app.get_json(&format!("/api/v1/persons/{pid}"), &epi).await;
    let stubs: Vec<&Value> = person["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outside_scope"] == true)
        .collect();
    assert_eq!(stubs.len(), 1, "{person}");
    assert!(stubs[0].get("id").is_none(), "{}", stubs[0]);
    // a case who has since recovered still gets a notice of where they were
    assert_eq!(app.set_category(&pid, "recovered", "出院", &epi).await, 200);
    assert_eq!(
        app.post_status(
            &format!("/api/v1/persons/{pid}/notices"),
            &json!({}),
            Some(&epi)
        )
        .await,
        201
    );
    let url = n["url"].as_str().unwrap().to_string();
    let html = app
        .client
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(&venue.name) && html.contains("<form"));
    for secret in ["病例丁", "13500000041", case_id.as_str(), "病*丁"] {
        assert!(
            !html.contains(secret),
            "the notice shows no personal data: {secret}"
        );
    }
    let r = app
        .client
        .post(&url)
        .form(&[
            ("entry", "0"),
            ("name", "路人"),
            ("id_number", "123"),
            ("phone", "1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // each error under its field's name
    let html = r.text().await.unwrap();
    assert!(
        html.contains("<li>身份证号") || html.contains("<li>证件号"),
        "{html}"
    );
    let walker = cn_id("150802", "19910101", 42);
    let come = |name: &'static str, id: String, phone: &'static str| {
        let (app, url) = (&app, &url);
        async move {
            let form = [
                ("entry", "0"),
                ("name", name),
                ("id_number", &id),
                ("phone", phone),
            ];
            app.post_form(url, &form).await
        }
    };
    assert_eq!(
        come("路人戊", walker.clone(), "13500000042").await.status(),
        200
    );
    // coming forward twice, one after the other or both at once, is thanked and recorded once
    assert_eq!(
        come("路人戊", walker.clone(), "13500000042").await.status(),
        200
    );
    let (one, two) = tokio::join!(
        come("路人戊", walker.clone(), "13500000042"),
        come("路人戊", walker.clone(), "13500000042")
    );
    assert_eq!((one.status().as_u16(), two.status().as_u16()), (200, 200));
    // a traveller comes forward with a passport
    assert_eq!(
        come("Anna Smith", "E12345678".into(), "+4915112345678")
            .await
            .status(),
        200
    );
    // someone another county follows up (a suspected case there, so the sighting does not
    // move them) comes forward: counted here, not shown
    let elsewhere = cn_id("150821", "19920202", 44);
    let wuyuan = app.site(SiteKind::Checkpoint, "150821").clone();
    assert_eq!(
        app.register(
            &wuyuan,
            &checkpoint_body(&elsewhere, "外县己", "13500000044")
        )
        .await
        .status(),
        201
    );
    let wuyuan_epi = app
        .token("wuyuan_epi", Role::Epidemiologist, "150821")
        .await;
    let theirs = find_person(&app, &elsewhere, &wuyuan_epi).await;
    assert_eq!(
        app.set_category(&theirs, "suspected", "发热", &wuyuan_epi)
            .await,
        200
    );
    assert_eq!(
        come("外县己", elsewhere.clone(), "13500000044")
            .await
            .status(),
        200
    );
    // the case coming forward on their own notice is thanked as anyone is (the page must not
    // tell who the case is) and not recorded
    let own = come("病例丁", case_id.clone(), "13500000041").await;
    assert_eq!(own.status(), 200);
    let d: Value = app
        .get(
            &format!("/api/v1/notices/{}", n["id"].as_str().unwrap()),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    let came = d["came_forward"].as_array().unwrap();
    let (shown, counted): (Vec<&Value>, Vec<&Value>) =
        came.iter().partition(|c| c["outside_scope"] == false);
    let mut names: Vec<&str> = shown
        .iter()
        .map(|c| c["person"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["A*** S***", "路*戊"], "{came:?}");
    assert!(shown.iter().all(|c| c["status"] == "pending"));
    assert_eq!(
        counted,
        [&json!({"outside_scope": true})],
        "no place, time or id of someone outside the area: {came:?}"
    );
    let other = app.token("wuyuan", Role::Epidemiologist, "150821").await;
    assert_eq!(
        app.get(
            &format!("/api/v1/notices/{}", n["id"].as_str().unwrap()),
            Some(&other)
        )
        .await
        .status(),
        404
    );
    // a person with no registrations has nothing to publish
    let lone = person_via_api(
        &app,
        &cn_id("150802", "19910101", 43),
        "无轨迹",
        "13500000043",
        &epi,
    )
    .await;
    let r = app
        .post_json(
            &format!("/api/v1/persons/{lone}/notices"),
            &json!({"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 409);
}

/// A notice covers its whole window, however many times the case checked in: the first
/// places are not dropped after a page of registrations.
#[tokio::test(flavor = "multi_thread")]
async fn a_notice_covers_the_whole_window_of_a_busy_case() {
    let app = TestApp::start().await;
    let epi = app.token("epi_busy", Role::Epidemiologist, "150802").await;
    let first = app.site(SiteKind::Venue, "150802").clone();
    let busy = app.site(SiteKind::Checkpoint, "150802").clone();
    let case_id = cn_id("150802", "19800101", 71);
    let body = checkpoint_body(&case_id, "快递员", "13500000071");
    let start = Utc::now() - Duration::days(3);
    register_at(app.store.as_ref(), &first, &body, start).await;
    // then 1,200 check-ins at one checkpoint: more than a page
    for i in 0..1200 {
        let at = start + Duration::hours(1) + Duration::minutes(i);
        register_at(app.store.as_ref(), &busy, &body, at).await;
    }
    let pid = find_person(&app, &case_id, &epi).await;
    assert_eq!(
        app.set_category(&pid, "confirmed", "核酸阳性", &epi).await,
        200
    );
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/notices"),
            &json!({"from": (start - Duration::hours(1)).to_rfc3339(), "to": Utc::now().to_rfc3339()}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 201);
    let n: Value = r.json().await.unwrap();
    let places: Vec<&str> = n["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["place"].as_str().unwrap())
        .collect();
    assert!(
        places.contains(&first.name.as_str()),
        "the first place is on the notice: {places:?}"
    );
    assert!(places.contains(&busy.name.as_str()), "{places:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn notices_and_pending_contacts_are_stored_alike_on_every_store() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let case = registered_person(
            store.as_ref(),
            &sites[0],
            &cn_id("150802", "19800101", 51),
            "甲",
        )
        .await;
        let now = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        let n = epigrid_core::trace::Notice {
            id: new_id(),
            case_person_id: case,
            public_token: "tok-notice".into(),
            area_path: "/150800/150802/".into(),
            created_by: None,
            created_at: now,
            entries: vec![epigrid_core::trace::NoticeEntry {
                position: 0,
                site_id: sites[0].id,
                place: "p".into(),
                area_name: "a".into(),
                from: now,
                to: now + Duration::hours(1),
            }],
        };
        store.insert_notice(&n).await.unwrap();
        assert_eq!(
            store.notice_by_token("tok-notice").await.unwrap().as_ref(),
            Some(&n),
            "{name}"
        );
        assert!(
            store
                .notice(n.id, &Scope::new("/150800/150821/"))
                .await
                .unwrap()
                .is_none(),
            "{name}: scope"
        );
        let body = checkpoint_body(&cn_id("150802", "19900101", 52), "乙", "13900000052");
        let ctx = Context {
            site: &sites[0],
            channel: Channel::SelfService,
            by_user: None,
            now: Utc::now(),
            tz: chrono::FixedOffset::east_opt(8 * 3600).unwrap(),
        };
        // the person a body names, as someone coming forward is sealed
        let sealed = |body: &Value| {
            let input = RegistrationInput::from_json(body).unwrap();
            let v = register::validate(&input, &ctx).unwrap();
            register::seal_person(
                &vault(),
                "乙",
                v.identity.document.as_ref(),
                v.identity.phone.as_ref(),
            )
        };
        let person = sealed(&body);
        let pc = epigrid_core::trace::PendingContact {
            id: new_id(),
            notice_id: n.id,
            position: 0,
            index_person_id: case,
            person_id: person.id,
            reported_at: now,
            status: "pending".into(),
        };
        store
            .insert_pending_contact(&pc, &person, &sites[0].area_path)
            .await
            .unwrap();
        assert_eq!(
            store.pending_contacts(n.id).await.unwrap(),
            vec![pc.clone()],
            "{name}"
        );
        assert!(
            store
                .person(person.id, &Scope::all())
                .await
                .unwrap()
                .is_some(),
            "{name}: the person now exists"
        );
        assert_eq!(
            store
                .search_persons(&Scope::all(), &PersonQuery::Name("乙".into()), 5)
                .await
                .unwrap()
                .len(),
            1,
            "{name}: and is searchable"
        );
        // coming forward again with another number: someone who came forward is under
        // review, and anyone who knows their ID number could type another phone, so the
        // number staff will call stays (alike on every store, as for a registration)
        let again = checkpoint_body(&cn_id("150802", "19900101", 52), "乙", "13700000099");
        let newer = sealed(&again);
        let pc2 = epigrid_core::trace::PendingContact {
            id: new_id(),
            reported_at: now + Duration::minutes(1),
            ..pc.clone()
        };
        store
            .insert_pending_contact(&pc2, &newer, &sites[0].area_path)
            .await
            .unwrap();
        let p = store
            .person(person.id, &Scope::all())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.phone_masked, person.phone_masked, "{name}");
        assert_ne!(newer.phone_masked, person.phone_masked);
        // Someone already known elsewhere who comes forward (later than they were last seen,
        // at a place in another area, under another name and number) stays as they were:
        // coming forward is not a registration, and the pending contact would pin a change.
        let elsewhere = sites
            .iter()
            .find(|s| s.area_path.starts_with("/150800/150821/"))
            .unwrap();
        let known_id = cn_id("150821", "19900101", 53);
        let known = registered_person(store.as_ref(), elsewhere, &known_id, "丙").await;
        let before = store.person(known, &Scope::all()).await.unwrap().unwrap();
        let typed = checkpoint_body(&known_id, "丁", "13700000053");
        let input = RegistrationInput::from_json(&typed).unwrap();
        let v = register::validate(&input, &ctx).unwrap();
        let forward = register::seal_person(
            &vault(),
            "丁",
            v.identity.document.as_ref(),
            v.identity.phone.as_ref(),
        );
        assert_eq!(forward.id, known);
        let pc3 = epigrid_core::trace::PendingContact {
            id: new_id(),
            person_id: known,
            reported_at: Utc::now() + Duration::minutes(5),
            ..pc.clone()
        };
        store
            .insert_pending_contact(&pc3, &forward, &sites[0].area_path)
            .await
            .unwrap();
        let after = store.person(known, &Scope::all()).await.unwrap().unwrap();
        assert_eq!(
            (&after.area_path, &after.name, &after.phone_masked),
            (&before.area_path, &before.name, &before.phone_masked),
            "{name}: coming forward changed a known person"
        );
        assert_eq!(before.name, "丙");
        assert!(
            store
                .pending_contacts(n.id)
                .await
                .unwrap()
                .iter()
                .any(|p| p.person_id == known),
            "{name}: their pending contact is recorded"
        );
        assert!(
            store
                .search_persons(&Scope::all(), &PersonQuery::Name("丁".into()), 5)
                .await
                .unwrap()
                .is_empty(),
            "{name}: the typed name is not searchable as theirs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn re_tracing_shows_what_is_new_and_confirmed_contacts_form_chains() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let venue = app.site(SiteKind::Venue, "150802").clone();
    let case_id = cn_id("150802", "19800101", 61);
    for (id, name) in [
        (case_id.clone(), "病例庚"),
        (cn_id("150802", "19800101", 62), "同场辛"),
    ] {
        assert_eq!(
            app.register(
                &venue,
                &json!({"name": name, "id_number": id, "phone": "13500000061", "symptoms": []})
            )
            .await
            .status(),
            201
        );
    }
    let pid = find_person(&app, &case_id, &epi).await;
    let first: Value = app
        .post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({}),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["contacts"][0]["new"], true);
    let second: Value = app
        .post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({}),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["contacts"][0]["new"], false, "seen before");
    // a newcomer at the same place shows up as new on the next run
    assert_eq!(app.register(&venue, &json!({"name": "后来壬", "id_number": cn_id("150802", "19800101", 63), "phone": "13500000063", "symptoms": []})).await.status(), 201);
    let third: Value = app
        .post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({}),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    let news: Vec<bool> = third["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["new"].as_bool().unwrap())
        .collect();
    assert_eq!(news.iter().filter(|n| **n).count(), 1, "{third}");

    assert!(
        app.get("/api/v1/chains", Some(&epi))
            .await
            .json::<Value>()
            .await
            .unwrap()["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "no chain before confirmation"
    );
    let c1 = second["contacts"][0]["person_id"]
        .as_str()
        .unwrap()
        .to_string();
    classify(&app, &pid, "confirmed", &epi).await;
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/contacts"),
            &json!({"person_ids": [c1], "reason": "同场所"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    let chains: Value = app.get_json("/api/v1/chains", &epi).await;
    let items = chains["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0]["size"].as_u64(), items[0]["active"].as_bool()),
        (Some(2), Some(true))
    );
    let csv = app
        .get("/api/v1/chains/edges.csv", Some(&epi))
        .await
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with('\u{feff}') && csv.contains(&pid) && csv.contains(&c1));
    let graphml = app
        .get("/api/v1/chains/graph.graphml", Some(&epi))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        graphml.contains("<graphml")
            && graphml.contains(&format!("<node id=\"{c1}\""))
            && graphml.contains("close_contact")
    );
    assert!(!graphml.contains("同场辛"), "no names in the graph file");
    let svg = app.get("/api/v1/chains/1/graph.svg", Some(&epi)).await;
    assert_eq!(svg.status(), 200);
    let svg = svg.text().await.unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("密切接触者")
            && svg.contains("同*辛")
            && svg.contains("<line"),
        "{svg}"
    );
    for missing in ["9", "abc", "99999999999999999999999", "-1"] {
        let r = app
            .get(&format!("/api/v1/chains/{missing}/graph.svg"), Some(&epi))
            .await;
        assert_eq!(r.status(), 404, "{missing}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{missing}: the API's own error"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contacts_are_kept_alike_on_every_store() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let a = registered_person(
            store.as_ref(),
            &sites[0],
            &cn_id("150802", "19800101", 71),
            "甲",
        )
        .await;
        let b = registered_person(
            store.as_ref(),
            &sites[0],
            &cn_id("150802", "19800101", 72),
            "乙",
        )
        .await;
        let rec = |status: &str, kinds: &str| epigrid_core::trace::ContactRecord {
            index_person_id: a,
            contact_person_id: b,
            degree: 1,
            kinds: kinds.into(),
            exposure_s: 600,
            score: 1.5,
            status: status.into(),
            found_at: chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap(),
        };
        assert_eq!(
            store
                .upsert_contacts(&[rec("pending", "co_location")])
                .await
                .unwrap(),
            vec![b],
            "{name}: new"
        );
        assert!(
            store
                .upsert_contacts(&[rec("pending", "co_location")])
                .await
                .unwrap()
                .is_empty(),
            "{name}: known"
        );
        assert!(
            store
                .confirmed_contacts(&Scope::all())
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        store
            .upsert_contacts(&[rec("confirmed", "")])
            .await
            .unwrap();
        store
            .upsert_contacts(&[rec("pending", "co_location,vehicle")])
            .await
            .unwrap();
        let confirmed = store.confirmed_contacts(&Scope::all()).await.unwrap();
        assert_eq!(confirmed.len(), 1, "{name}: confirmation sticks");
        assert_eq!(
            confirmed[0].kinds, "co_location,vehicle",
            "{name}: figures follow the latest trace"
        );
        assert!(
            store
                .confirmed_contacts(&Scope::new("/150800/150821/"))
                .await
                .unwrap()
                .is_empty(),
            "{name}: scope"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wide_chains_are_drawn_with_collapsed_layers() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let venue = app.site(SiteKind::Venue, "150802").clone();
    let case_id = cn_id("150802", "19700101", 100);
    assert_eq!(
        app.register(
            &venue,
            &json!({"name": "源头", "id_number": case_id, "phone": "13500000100", "symptoms": []})
        )
        .await
        .status(),
        201
    );
    for i in 0..45u32 {
        let r = app.register(&venue, &json!({"name": "同场", "id_number": cn_id("150802", "19700102", 200 + i), "phone": "13500000101", "symptoms": []})).await;
        assert_eq!(r.status(), 201);
    }
    let pid = find_person(&app, &case_id, &epi).await;
    let t: Value = app
        .post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({}),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = t["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["person_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 45);
    classify(&app, &pid, "confirmed", &epi).await;
    assert_eq!(
        app.post_status(
            &format!("/api/v1/persons/{pid}/contacts"),
            &json!({"person_ids": ids, "reason": "同场所"}),
            Some(&epi)
        )
        .await,
        200
    );
    let svg = app
        .get("/api/v1/chains/1/graph.svg", Some(&epi))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        svg.contains(">+5<"),
        "45 in one layer: 40 drawn, 5 collapsed"
    );
    assert_eq!(svg.matches("<rect").count(), 1 + 40 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_are_matched_by_id_phone_name_and_birth_date_with_bad_rows_listed() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let known = cn_id("150802", "19850312", 81);
    let p1 = person_via_api(&app, &known, "钱一", "13600000081", &epi).await;
    let p2 = person_via_api(
        &app,
        &cn_id("150802", "19900505", 82),
        "孙二",
        "13600000082",
        &epi,
    )
    .await;
    let csv = format!(
        "\u{feff}姓名,身份证号,手机,出生日期\n钱一,{known},,\n孙二,,13600000082,\n孙二,,,1990-05-05\n某人,123,,\n陌生,{},,\n",
        cn_id("110105", "19700101", 83)
    );
    let r = post_list(&app, &epi, "K1234 乘客", csv).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["rows"].as_u64(), v["bad_rows"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(v["errors"][0]["line"], 5);
    assert_eq!(v["errors"][0]["field"], "id_number");
    let id = v["id"].as_str().unwrap();
    let m: Value = app
        .get_json(&format!("/api/v1/lists/{id}/matches"), &epi)
        .await;
    let got: Vec<(u64, &str, &str, bool)> = m["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["line"].as_u64().unwrap(),
                x["person"]["id"].as_str().unwrap(),
                x["method"].as_str().unwrap(),
                x["review"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (2, p1.as_str(), "id_number", false),
            (3, p2.as_str(), "phone", false),
            (4, p2.as_str(), "name_birth_date", true)
        ]
    );
    assert!(!m.to_string().contains(&known), "masked");
    let other = app.token("wuyuan", Role::Epidemiologist, "150821").await;
    assert_eq!(
        app.get(&format!("/api/v1/lists/{id}/matches"), Some(&other))
            .await
            .status(),
        404
    );
    let r = post_list(&app, &epi, "x", "a,b\n1,2\n").await;
    assert_eq!(r.status(), 422, "no column to match on");
}

/// A list upload by someone who may not upload is refused before its body is read: the
/// answer comes while the 200 MB the request announces has not been sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_list_upload_is_answered_before_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let gw = app.token("gw", Role::GridWorker, "150802").await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let addr = app.base.trim_start_matches("http://");
    for (token, name, status) in [(gw.as_str(), "l", "403"), (epi.as_str(), "", "422")] {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v1/lists?name={name} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 200000000\r\n\r\n身份证号\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), conn.read(&mut got))
            .await
            .expect("answered without the body")
            .unwrap();
        let line = String::from_utf8_lossy(&got[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        assert!(line.starts_with(&format!("HTTP/1.1 {status}")), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_matches_are_stored_alike_on_every_store() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let a = registered_person(
            store.as_ref(),
            &sites[0],
            &cn_id("150802", "19800101", 91),
            "甲",
        )
        .await;
        let parsed = epigrid_core::matching::parse_list(&format!(
            "id_number,姓名,手机号,车牌号\n{},,,\n,甲,13911112222,\n,乙,,蒙L12345\n123,,,\n",
            cn_id("150802", "19800101", 91)
        ));
        let (people, plates) = store.match_keys().await.unwrap();
        let known = people
            .iter()
            .find(|p| p.id == a)
            .expect("the person is a match key");
        let born = chrono::NaiveDate::from_ymd_opt(1980, 1, 1).unwrap();
        assert_eq!(
            (known.name.as_str(), known.birth_index.clone()),
            (
                "甲",
                Some(epigrid_core::matching::birth_index(&vault(), born))
            ),
            "{name}: the birth date is a blind index"
        );
        assert_eq!(
            known.phone_index.as_deref(),
            Some(&vault().blind_index("phone", "13911112222")[..]),
            "{name}"
        );
        assert!(plates.contains(&("蒙L12345".to_string(), a)), "{name}");
        let found =
            epigrid_core::matching::match_rows(store.as_ref(), &vault(), &parsed.rows, &|_| {})
                .await
                .unwrap();
        assert_eq!(
            found
                .iter()
                .map(|m| (m.line, m.person_id, m.method, m.review))
                .collect::<Vec<_>>(),
            vec![
                (2, a, "id_number", false),
                (3, a, "phone", false),
                (4, a, "plate", true)
            ],
            "{name}"
        );
        let list = epigrid_core::store::ListRecord {
            id: new_id(),
            name: "l".into(),
            uploaded_by: None,
            area_path: "/150800/".into(),
            created_at: chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap(),
            rows: 4,
            bad_rows: 1,
        };
        let errors = parsed.kept_errors();
        // someone purged between matching and storing the list is left out, and the list is
        // stored (not refused for a match to a person no longer there)
        let mut with_gone = found.clone();
        with_gone.push(epigrid_core::matching::ListMatch {
            line: 5,
            person_id: new_id(),
            ..found[0].clone()
        });
        store.insert_list(&list, &errors, &with_gone).await.unwrap();
        let back_errors = store.list_errors(list.id, 10).await.unwrap();
        assert_eq!(back_errors, errors, "{name}");
        assert_eq!(
            (back_errors[0].line, back_errors[0].field.as_str()),
            (5, "id_number"),
            "{name}"
        );
        assert_eq!(
            store.lists(&Scope::new("/150800/"), 10).await.unwrap(),
            vec![list.clone()],
            "{name}"
        );
        assert!(
            store
                .lists(&Scope::new("/150800/150821/"), 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        let (back, ms) = store
            .list_matches(list.id, &Scope::new("/150800/"), &Default::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((back, ms.len()), (list.clone(), 3), "{name}");
        assert!(
            store
                .list_matches(list.id, &Scope::new("/150800/150821/"), &Default::default())
                .await
                .unwrap()
                .is_none(),
            "{name}: scope"
        );
        use epigrid_core::matching::Decision;
        let decide = |scope: &'static str| {
            let store = store.clone();
            async move {
                store
                    .decide_list_match(
                        &epigrid_core::matching::MatchDecision {
                            list_id: list.id,
                            line: 4,
                            person_id: a,
                            decision: Decision::Confirmed,
                            by: new_id(),
                            at: Utc::now(),
                        },
                        &Scope::new(scope),
                    )
                    .await
                    .unwrap()
            }
        };
        assert!(!decide("/150800/150821/").await, "{name}: out of scope");
        assert!(decide("/150800/").await, "{name}");
        assert!(!decide("/150800/").await, "{name}: once");
        let (_, ms) = store
            .list_matches(list.id, &Scope::new("/150800/"), &Default::default())
            .await
            .unwrap()
            .unwrap();
        let plate = ms.iter().find(|(m, _)| m.line == 4).unwrap();
        assert_eq!(
            (plate.0.decision, plate.0.review),
            (Some(Decision::Confirmed), false),
            "{name}"
        );
        assert!(
            store
                .lists_of(a, &Scope::new("/150800/150821/"))
                .await
                .unwrap()
                .is_empty(),
            "{name}: a list from another area"
        );
        assert_eq!(
            store
                .list_match_counts(list.id, &Scope::new("/150800/"))
                .await
                .unwrap(),
            (3, 0),
            "{name}: the plate match is decided"
        );
        let page = epigrid_core::store::MatchPage {
            review_only: false,
            limit: 1,
            offset: 1,
        };
        let (_, second) = store
            .list_matches(list.id, &Scope::new("/150800/"), &page)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            second.iter().map(|(m, _)| m.line).collect::<Vec<_>>(),
            vec![3],
            "{name}"
        );
        let on = store.lists_of(a, &Scope::new("/150800/")).await.unwrap();
        assert_eq!(on.len(), 3, "{name}");
        assert!(on.iter().all(|(l, _)| l.id == list.id), "{name}");
        assert!(
            on.iter()
                .any(|(_, m)| m.line == 4 && m.decision == Some(Decision::Confirmed)),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_can_be_uploaded_as_xlsx() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let known = cn_id("150802", "19850312", 84);
    let p1 = person_via_api(&app, &known, "赵四", "13600000084", &epi).await;
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    for (c, h) in ["姓名", "身份证号"].iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    ws.write_string(1, 0, "赵四").unwrap();
    ws.write_string(1, 1, &known).unwrap();
    ws.write_string(2, 0, "坏行").unwrap();
    ws.write_string(2, 1, "12345").unwrap();
    let bytes = wb.save_to_buffer().unwrap();
    let r = post_list(&app, &epi, "xlsx", bytes).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["rows"].as_u64(),
            v["bad_rows"].as_u64(),
            v["matched"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(v["errors"][0]["line"], 3);
    let m: Value = app
        .get(
            &format!("/api/v1/lists/{}/matches", v["id"].as_str().unwrap()),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["items"][0]["person"]["id"], p1.as_str());
    let r = post_list(&app, &epi, "junk", b"PK\x03\x04garbage".to_vec()).await;
    assert_eq!(r.status(), 422, "a broken spreadsheet is a clear error");
    let r = post_list(&app, &epi, "header only", "姓名,身份证号\n").await;
    assert_eq!(r.status(), 422, "a list without rows is not kept");
    assert_eq!(
        r.json::<Value>().await.unwrap()["errors"][0]["code"],
        "err.list.no_rows"
    );
    // a sheet that starts lower and further right, with real dates: lines are the sheet's
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    let date = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd");
    for (c, h) in ["姓名", "出生日期"].iter().enumerate() {
        ws.write_string(2, 2 + c as u16, *h).unwrap();
    }
    ws.write_string(3, 2, "赵四").unwrap();
    ws.write_datetime_with_format(
        3,
        3,
        rust_xlsxwriter::ExcelDateTime::from_ymd(1985, 3, 12).unwrap(),
        &date,
    )
    .unwrap();
    ws.write_string(4, 2, "坏行").unwrap();
    ws.write_string(4, 3, "1985-13-45").unwrap();
    let r = post_list(&app, &epi, "offset sheet", wb.save_to_buffer().unwrap()).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["errors"][0]["line"].clone(),
            v["errors"][0]["field"].clone()
        ),
        (json!(5), json!("birth_date")),
        "{v}"
    );
    assert_eq!(
        v["to_review"], 1,
        "name + birth date read from a date cell: {v}"
    );
}

/// A multipart form body as a browser sends it (reqwest here has no multipart feature).
fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----epigridTestBoundary7MA4YWxk";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        if *name == "file" {
            body.extend_from_slice(
                b"Content-Disposition: form-data; name=\"file\"; filename=\"list.csv\"\r\nContent-Type: text/csv\r\n\r\n",
            );
        } else {
            body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_are_uploaded_from_the_page_and_keep_their_bad_rows() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let known = cn_id("150802", "19850312", 84);
    let p1 = person_via_api(&app, &known, "赵四", "13600000084", &epi).await;
    let cookie = app.login_cookie("epi").await;
    let html = app.page("/lists?lang=en", &cookie).await;
    assert!(
        html.contains("enctype=\"multipart/form-data\""),
        "upload form"
    );
    let csrf = input_value(&html, "csrf");
    // more than the 1 MB default body limit: lists may be large
    let mut csv = format!("姓名,身份证号\n赵四,{known}\n王五,123\n");
    while csv.len() < 1_300_000 {
        csv.push_str("某人,\n");
    }
    let (ct, body) = multipart(&[
        ("csrf", csrf.as_bytes()),
        ("name", "客运名单".as_bytes()),
        ("file", csv.as_bytes()),
    ]);
    let r = app
        .client
        .post(format!("{}/lists?lang=en", app.base))
        .header("cookie", &cookie)
        .header("content-type", &ct)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    // post, redirect, get: the list's page
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        to.starts_with("/lists/") && to.ends_with("?uploaded=1"),
        "{to}"
    );
    let html = app.page(&format!("{to}&lang=en"), &cookie).await;
    assert!(
        html.contains("客运名单") && html.contains("Matched."),
        "the list's page"
    );
    assert!(
        html.contains(&format!("/persons/{p1}")) && !html.contains(&known),
        "the match links the person, masked"
    );
    assert!(
        html.contains(">3</td><td data-label=\"Column\">ID number</td>"),
        "the bad row is listed by line and column"
    );
    // without the CSRF token nothing is stored
    let (ct, body) = multipart(&[("name", b"x"), ("file", csv.as_bytes())]);
    let r = app
        .client
        .post(format!("{}/lists", app.base))
        .header("cookie", &cookie)
        .header("content-type", &ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // a missing name and file are field errors on the form
    let (ct, body) = multipart(&[("csrf", csrf.as_bytes()), ("name", b" ")]);
    let r = app
        .client
        .post(format!("{}/lists?lang=en", app.base))
        .header("cookie", &cookie)
        .header("content-type", &ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("The file is empty."), "{html}");
    assert!(html.contains("This field is required."), "the name: {html}");
    let lists = app.page("/lists", &cookie).await;
    assert_eq!(lists.matches("href=\"/lists/").count(), 1, "one list kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn uncertain_list_matches_are_confirmed_or_rejected_by_a_reviewer() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let other = app.token("far", Role::Epidemiologist, "150821").await;
    let analyst = app.token("ana", Role::Analyst, "150802").await;
    // two people seen in the same car: a plate-only row matches both, uncertainly
    let a = person_via_api(
        &app,
        &cn_id("150802", "19850312", 11),
        "甲",
        "13600000011",
        &epi,
    )
    .await;
    let b = person_via_api(
        &app,
        &cn_id("150802", "19850312", 12),
        "乙",
        "13600000012",
        &epi,
    )
    .await;
    let r = post_list(&app, &epi, "plates", "车牌号\n蒙L12345\n").await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let list = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["to_review"], 2);
    let decide = |token: String, person: String, decision: &'static str| {
        let app = &app;
        let list = list.clone();
        async move {
            app.client
                .post(format!("{}/api/v1/lists/{list}/decisions", app.base))
                .bearer_auth(token)
                .json(&json!({"line": 2, "person_id": person, "decision": decision}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        decide(analyst.clone(), a.clone(), "confirmed")
            .await
            .status(),
        403
    );
    // the uploader's counts are about their own area: a county that knows neither person
    // learns nothing from the same list
    let r = post_list(&app, &other, "plates elsewhere", "车牌号\n蒙L12345\n").await;
    assert_eq!(r.status(), 201);
    let far: Value = r.json().await.unwrap();
    assert_eq!(
        (far["matched"].clone(), far["to_review"].clone()),
        (json!(0), json!(0))
    );
    // nor whether someone outside it is on its own list: that match does not exist for it
    let far_list = far["id"].as_str().unwrap();
    let r = app
        .client
        .post(format!("{}/api/v1/lists/{far_list}/decisions", app.base))
        .bearer_auth(&other)
        .json(&json!({"line": 2, "person_id": a, "decision": "rejected"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "an out-of-area match on one's own list");
    // a heading that is not in the file is a field error, and no list is kept
    let r = app
        .client
        .post(format!("{}/api/v1/lists", app.base))
        .query(&[("name", "mapped"), ("col_id_number", "证件")])
        .bearer_auth(&epi)
        .body("车牌号\n蒙L12345\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errors"][0]["field"],
        "col_id_number"
    );
    assert_eq!(
        decide(other.clone(), a.clone(), "confirmed").await.status(),
        404,
        "another county's list does not exist for them"
    );
    let bad = decide(epi.clone(), a.clone(), "maybe").await;
    assert_eq!(bad.status(), 422);
    assert_eq!(
        decide(epi.clone(), a.clone(), "confirmed").await.status(),
        200
    );
    assert_eq!(
        decide(epi.clone(), a.clone(), "rejected").await.status(),
        409,
        "decided once, and told so"
    );
    // the page's buttons do the same for the other one
    let cookie = app.login_cookie("epi").await;
    let page = app
        .page(&format!("/lists/{list}?review=1&lang=en"), &cookie)
        .await;
    assert!(
        page.contains("Not this person") && page.contains(&b),
        "{page}"
    );
    assert!(
        !page.contains(&format!("value=\"{a}\"")),
        "decided ones leave the queue"
    );
    let csrf = input_value(&page, "csrf");
    let r = app
        .post_page(
            &format!("/lists/{list}/decide"),
            &cookie,
            &[
                ("csrf", csrf.as_str()),
                ("line", "2"),
                ("person_id", b.as_str()),
                ("decision", "rejected"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let m: Value = app
        .get_json(&format!("/api/v1/lists/{list}/matches"), &epi)
        .await;
    let got: Vec<(String, Value, Value)> = m["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["person"]["id"].as_str().unwrap().to_string(),
                i["decision"].clone(),
                i["review"].clone(),
            )
        })
        .collect();
    assert!(
        got.contains(&(a.clone(), json!("confirmed"), json!(false))),
        "{got:?}"
    );
    assert!(
        got.contains(&(b.clone(), json!("rejected"), json!(true))),
        "{got:?}"
    );
    // the people show the lists they were on, and how it was decided; the list uploaded in
    // another county that names them too, undecided
    let pa: Value = app.get_json(&format!("/api/v1/persons/{a}"), &epi).await;
    let on: Vec<(&Value, &Value)> = pa["lists"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (&l["name"], &l["decision"]))
        .collect();
    assert_eq!(
        on,
        [
            (&json!("plates elsewhere"), &Value::Null),
            (&json!("plates"), &json!("confirmed"))
        ]
    );
    let page = app.page(&format!("/persons/{b}?lang=en"), &cookie).await;
    assert!(
        page.contains(&format!("href=\"/lists/{list}\"")) && page.contains("rejected"),
        "{page}"
    );
    let audit: Value = app
        .get(
            "/api/v1/audit",
            Some(&app.token("root", Role::Admin, "150800").await),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "list.decide")
            .count()
            == 2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_window_starts_two_days_before_symptom_onset() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let id = cn_id("150802", "19800101", 55);
    // a fever at a checkpoint five days ago, a positive sample today
    let mut body = checkpoint_body(&id, "发热者", "13900000055");
    body["temperature"] = json!(38.4);
    let onset = Utc::now() - Duration::days(5);
    let pid = register_at(app.store.as_ref(), &site, &body, onset)
        .await
        .person
        .id;
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/lab-results"),
            &json!({"test": "nucleic_acid", "sample_date": (Utc::now() + Duration::hours(8)).date_naive().to_string(), "result": "positive"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 201);
    let v: Value = app
        .post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({}),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    let from = chrono::DateTime::parse_from_rfc3339(v["from"].as_str().unwrap()).unwrap();
    let expected = onset - Duration::days(2);
    assert!(
        (from.timestamp() - expected.timestamp()).abs() <= 1,
        "window from {from}, onset {onset}"
    );
}

/// A person-page form sent back with an error keeps what was typed, says what is wrong inside
/// that form, and never falls back to "confirmed".
#[tokio::test(flavor = "multi_thread")]
async fn person_page_forms_keep_what_was_typed_on_an_error() {
    let app = TestApp::start().await;
    let cookie = app
        .cookie("epi_forms", Role::Epidemiologist, "150802")
        .await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let pid = registered_person(
        app.store.as_ref(),
        &site,
        &cn_id("150802", "19800101", 58),
        "表单者",
    )
    .await;
    let page = app.page(&format!("/persons/{pid}"), &cookie).await;
    assert!(
        page.contains("<dd>测试社区</dd>"),
        "the area by name: {page}"
    );
    assert!(
        page.contains("<select name=\"category\" required><option value=\"\">"),
        "no category is chosen for the user: {page}"
    );
    let csrf = input_value(&page, "csrf");
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let app = &app;
        let cookie = cookie.clone();
        async move {
            let r = app.post_page(&path, &cookie, &form).await;
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, back) = post(
        format!("/persons/{pid}/category"),
        vec![
            ("csrf", csrf.clone()),
            ("category", "suspected".into()),
            ("reason", "  ".into()),
        ],
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        back.contains("<option value=\"suspected\" selected>"),
        "{back}"
    );
    let form = form_of(&back, "/category");
    assert!(
        form.contains("class=\"err\""),
        "the error is in its form: {form}"
    );
    let (status, back) = post(
        format!("/persons/{pid}/observe"),
        vec![
            ("csrf", csrf.clone()),
            ("kind", "central".into()),
            ("start", "2026-11-29".into()),
            ("days", "200".into()),
        ],
    )
    .await;
    assert_eq!(status, 422);
    let form = form_of(&back, "/observe");
    assert!(form.contains("class=\"err\""), "{form}");
    assert!(
        form.contains("<option value=\"central\" selected>"),
        "{form}"
    );
    assert!(form.contains("value=\"2026-11-29\""), "{form}");
    assert!(form.contains("value=\"200\""), "{form}");
    let stored = app.store.person(pid, &Scope::all()).await.unwrap().unwrap();
    assert_eq!(stored.category, Category::None, "nothing changed");
}

/// Someone recorded as deceased is no longer under observation: nobody reports for them,
/// and no line list flags them as not reported.
#[tokio::test(flavor = "multi_thread")]
async fn a_deceased_persons_observation_is_released() {
    let app = TestApp::start().await;
    let epi = app.token("epi_dead", Role::Epidemiologist, "150802").await;
    let pid = observed_person(&app, &epi, 62).await;
    for (category, reason) in [("confirmed", "阳性"), ("deceased", "死亡")] {
        let r = app
            .post_json(
                &format!("/api/v1/persons/{pid}/category"),
                &json!({"category": category, "reason": reason}),
                Some(&epi),
            )
            .await;
        assert_eq!(r.status(), 200, "{category}");
    }
    let obs = app.store.observations_of(pid).await.unwrap();
    assert!(obs[0].released_at.is_some(), "{obs:?}");
    assert_eq!(obs[0].release_reason.as_deref(), Some("死亡"));
    let open = app
        .get_json("/api/v1/observations?status=not_reported", &epi)
        .await;
    assert_eq!(open["items"], json!([]), "{open}");
}

/// An observation opened by anyone but a grid worker, naming no one, goes to the active grid
/// worker closest above the person's area; a deactivated one cannot be named.
#[tokio::test(flavor = "multi_thread")]
async fn an_observation_goes_to_an_active_grid_worker_over_the_person() {
    let app = TestApp::start().await;
    let epi = app
        .token("epi_assign", Role::Epidemiologist, "150802")
        .await;
    let admin = app.token("adm_assign", Role::Admin, "150800").await;
    let gw = app
        .token("gw_assign", Role::GridWorker, "150802001001")
        .await;
    let gw_id = app.get_json("/api/v1/me", &gw).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let town = app.token("gw_town", Role::GridWorker, "150802001").await;
    let town_id = app.get_json("/api/v1/me", &town).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = observed_person(&app, &epi, 59).await;
    let assigned = || async {
        app.get_json(&format!("/api/v1/persons/{pid}"), &epi).await["observations"][0]
            ["grid_worker_id"]
            .as_str()
            .map(String::from)
    };
    assert_eq!(assigned().await, Some(gw_id.clone()), "the closest");
    let r = app
        .patch_json(
            &format!("/api/v1/users/{gw_id}"),
            &json!({"active": false}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), 200);
    // a deactivated worker's observations go to the next one above, not to nobody
    assert_eq!(assigned().await, Some(town_id), "handed over");
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let other = registered_person(
        app.store.as_ref(),
        &site,
        &cn_id("150802", "19800101", 60),
        "观察者",
    )
    .await;
    let r = app
        .post_json(
            &format!("/api/v1/persons/{other}/observations"),
            &json!({"kind": "home", "days": 14, "grid_worker": gw_id}),
            Some(&epi),
        )
        .await;
    assert_eq!(
        status_and_codes(r).await,
        (
            422,
            vec!["grid_worker:err.grid_worker.not_here".to_string()]
        )
    );
}

/// The form of `page` whose action ends in `action`, up to its end.
fn form_of<'a>(page: &'a str, action: &str) -> &'a str {
    let form = page.split(&format!("{action}\"")).nth(1).unwrap();
    form.split("</form>").next().unwrap()
}

/// Someone registered at a checkpoint of 150802 (ID number `n` of that county), then put
/// under 14 days of home observation by `token`'s holder; their id.
async fn observed_person(app: &TestApp, token: &str, n: u32) -> Uuid {
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let pid = registered_person(
        app.store.as_ref(),
        &site,
        &cn_id("150802", "19800101", n),
        "观察者",
    )
    .await;
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/observations"),
            &json!({"kind": "home", "days": 14}),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), 201);
    pid
}

/// A grid worker who opens an observation without naming whose it is follows it up: it is
/// on their own line list, and assigned to them.
#[tokio::test(flavor = "multi_thread")]
async fn a_grid_worker_sees_the_observation_they_opened() {
    let app = TestApp::start().await;
    let gw = app.token("gw_opens", Role::GridWorker, "150802").await;
    let pid = observed_person(&app, &gw, 57).await;
    let me = app.get_json("/api/v1/me", &gw).await;
    assert!(me["id"].is_string(), "{me}");
    let list = app.get_json("/api/v1/observations", &gw).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["person_id"], json!(pid.to_string()));
    assert_eq!(
        items[0]["observation"]["grid_worker_id"], me["id"],
        "{list}"
    );
}

/// A person whose home is corrected to another area is followed there by a grid worker of
/// that area, not left with one whose list no longer shows them.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrected_home_takes_the_observation_to_a_grid_worker_there() {
    let app = TestApp::start().await;
    let chief = app.token("chief_epi", Role::Epidemiologist, "150800").await;
    let linhe = app
        .token("gw_linhe", Role::GridWorker, "150802001001")
        .await;
    let wuyuan = app
        .token("gw_wuyuan", Role::GridWorker, "150821100001")
        .await;
    let pid = observed_person(&app, &linhe, 58).await;
    let linhe_id = app.get_json("/api/v1/me", &linhe).await["id"].clone();
    let wuyuan_id = app.get_json("/api/v1/me", &wuyuan).await["id"].clone();
    let worker = || async {
        app.get_json(&format!("/api/v1/persons/{pid}"), &chief)
            .await["observations"][0]["grid_worker_id"]
            .clone()
    };
    assert_eq!(worker().await, linhe_id);
    // an empty correction is refused and changes nothing (a corrected person is pinned)
    for empty in [json!({}), json!({"home_area_code": null})] {
        let r = app
            .patch_json(&format!("/api/v1/persons/{pid}"), &empty, Some(&chief))
            .await;
        assert_eq!(r.status(), 422, "{empty}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["errors"][0]["field"],
            "",
            "{empty}"
        );
    }
    let admin = app.token("adm_correct", Role::Admin, "150800").await;
    let audit = app
        .get_json("/api/v1/audit?action=person.correct", &admin)
        .await;
    assert_eq!(audit["items"], json!([]), "nothing recorded: {audit}");
    for (home, want) in [
        ("150821100001001001", &wuyuan_id),
        ("150802001001001002", &linhe_id),
    ] {
        let r = app
            .patch_json(
                &format!("/api/v1/persons/{pid}"),
                &json!({"home_area_code": home}),
                Some(&chief),
            )
            .await;
        assert_eq!(r.status(), 200, "{home}");
        assert_eq!(&worker().await, want, "{home}");
        // and the observation belongs where the person now does (its audit goes there)
        let obs = app.store.observations_of(pid).await.unwrap();
        assert!(
            obs[0].area_path.ends_with(&format!("/{home}/")),
            "{home}: {}",
            obs[0].area_path
        );
    }
    let audit = app
        .get_json("/api/v1/audit?action=person.correct", &admin)
        .await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(2), "{audit}");
    // and the worker's own list shows them
    let list = app.get_json("/api/v1/observations", &linhe).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
}

/// An observation begun today isolates from when it was recorded, not from midnight: the
/// default window keeps the day's earlier contacts.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_window_ends_when_an_observation_begun_today_was_recorded() {
    let app = TestApp::start().await;
    let epi = app.token("epi_iso", Role::Epidemiologist, "150802").await;
    let before = Utc::now();
    let pid = observed_person(&app, &epi, 56).await;
    let v: Value = app
        .post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({}),
            Some(&epi),
        )
        .await
        .json()
        .await
        .unwrap();
    let to = chrono::DateTime::parse_from_rfc3339(v["to"].as_str().unwrap()).unwrap();
    assert!(
        to >= before && to <= Utc::now(),
        "the window ends when isolation was recorded: {to}, recorded after {before}"
    );
}

/// A chain that reaches outside the caller's area names that person `outside-1-1`, in the JSON,
/// the CSV and the GraphML alike: nothing identifies them.
#[tokio::test(flavor = "multi_thread")]
async fn chains_name_no_one_outside_the_callers_area() {
    let app = TestApp::start().await;
    let epi = app.token("epi_chain", Role::Epidemiologist, "150802").await;
    let here = app.site(SiteKind::Checkpoint, "150802").clone();
    let there = app.site(SiteKind::Checkpoint, "150821").clone();
    let local = registered_person(
        app.store.as_ref(),
        &here,
        &cn_id("150802", "19800101", 91),
        "本县甲",
    )
    .await;
    let infector = registered_person(
        app.store.as_ref(),
        &there,
        &cn_id("150821", "19800101", 92),
        "外县乙",
    )
    .await;
    app.store
        .upsert_contacts(&[epigrid_core::trace::ContactRecord {
            index_person_id: infector,
            contact_person_id: local,
            degree: 1,
            kinds: "co_location".into(),
            exposure_s: 600,
            score: 1.0,
            status: "confirmed".into(),
            found_at: Utc::now(),
        }])
        .await
        .unwrap();
    let chains = app.get_json("/api/v1/chains", &epi).await;
    let people = &chains["items"][0]["people"];
    assert_eq!(people.as_array().map(Vec::len), Some(2), "{chains}");
    let hidden = infector.to_string();
    let csv = app
        .get("/api/v1/chains/edges.csv", Some(&epi))
        .await
        .text()
        .await
        .unwrap();
    let graphml = app
        .get("/api/v1/chains/graph.graphml", Some(&epi))
        .await
        .text()
        .await
        .unwrap();
    for (what, text) in [
        ("json", chains.to_string()),
        ("csv", csv),
        ("graphml", graphml),
    ] {
        assert!(!text.contains(&hidden), "{what}: {text}");
        assert!(text.contains("outside-1-1"), "{what}: {text}");
        assert!(text.contains(&local.to_string()), "{what}: {text}");
    }
}

/// An analyst's totals do not give away a suppressed cell by subtraction: six confirmed cases in
/// one county and two in another show the six, and no total.
#[tokio::test(flavor = "multi_thread")]
async fn suppressed_counts_cannot_be_recovered_from_the_totals() {
    let app = TestApp::start().await;
    let analyst = app.token("analyst_city", Role::Analyst, "150800").await;
    let epi = app.token("epi_city", Role::Epidemiologist, "150800").await;
    for (county, n) in [("150802", 6u32), ("150821", 2)] {
        let site = app.site(SiteKind::Checkpoint, county).clone();
        for i in 0..n {
            let id = cn_id(county, "19800101", 300 + i);
            let p = registered_person(app.store.as_ref(), &site, &id, "病例").await;
            assert!(app
                .store
                .change_category(&CategoryChange {
                    id: new_id(),
                    person_id: p,
                    from: Category::None,
                    to: Category::Confirmed,
                    at: Utc::now(),
                    by_user: None,
                    by_username: "epi".into(),
                    reason: "test".into(),
                })
                .await
                .unwrap());
        }
    }
    let confirmed = |v: &Value| {
        v["totals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["category"] == "confirmed")
            .unwrap()["count"]
            .clone()
    };
    let full = app.get_json("/api/v1/category-counts", &epi).await;
    assert_eq!(confirmed(&full), json!(8), "{full}");
    let seen = app.get_json("/api/v1/category-counts", &analyst).await;
    assert_eq!(confirmed(&seen), Value::Null, "{seen}");
    let cells: Vec<i64> = seen["by_area"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_i64().unwrap())
        .collect();
    assert_eq!(cells, vec![6], "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retention_purge_forgets_only_people_nobody_acted_on() {
    use epigrid_core::store::Purged;
    for (name, store) in stores().await {
        let store = store.as_ref();
        let sites = seed(store).await;
        let linhe = site_in(&sites, "150802");
        let now = Utc::now();
        let (old, recent) = (now - Duration::days(40), now - Duration::days(1));
        let doc = |seq| cn_id("150802", "19900101", seq);
        let body = |seq, who| checkpoint_body(&doc(seq), who, "13911112222");
        // A came 40 days ago and yesterday; B only 40 days ago; C 40 days ago and was then
        // made a close contact; D 40 days ago with C beside them in the car
        let a = register_at(store, linhe, &body(31, "张一"), old)
            .await
            .person
            .id;
        register_at(store, linhe, &body(31, "张一"), recent).await;
        let b = register_at(store, linhe, &body(32, "张二"), old)
            .await
            .person
            .id;
        let c = register_at(store, linhe, &body(33, "张三"), old)
            .await
            .person
            .id;
        let mut with_c = body(34, "张四");
        with_c["companions"] = json!([{"name": "张三", "id_type": "cn_id", "id_number": doc(33)}]);
        let d = register_at(store, linhe, &with_c, old).await.person.id;
        // E drove one car 40 days ago and another yesterday
        let mut then = body(35, "张五");
        then["plate"] = "蒙L99999".into();
        let e = register_at(store, linhe, &then, old).await.person.id;
        let mut now_body = body(35, "张五");
        now_body["plate"] = "蒙L88888".into();
        register_at(store, linhe, &now_body, recent).await;
        // F came 40 days ago and is under observation now; G has a lab result
        let f = register_at(store, linhe, &body(36, "张六"), old)
            .await
            .person
            .id;
        let today = now.date_naive();
        store
            .insert_observation(&observation(f, today, 14, "retention-f"))
            .await
            .unwrap();
        let g = register_at(store, linhe, &body(37, "张七"), old)
            .await
            .person
            .id;
        store
            .insert_lab_result(&LabResult {
                id: new_id(),
                person_id: g,
                test: TestKind::NucleicAcid,
                sample_date: today,
                result_date: Some(today),
                result: TestResult::Negative,
                entered_by: None,
                created_at: now,
            })
            .await
            .unwrap();
        let contact = CategoryChange {
            id: new_id(),
            person_id: c,
            from: Category::None,
            to: Category::CloseContact,
            at: now,
            by_user: None,
            by_username: "epi".into(),
            reason: "test".into(),
        };
        assert!(store.change_category(&contact).await.unwrap(), "{name}");
        let dashboard_before = store.rollup_rows().await.unwrap();

        let cutoff = now - Duration::days(28);
        assert_eq!(
            store.purge_before(cutoff).await.unwrap(),
            Purged {
                registrations: 3,
                persons: 1
            },
            "{name}: A's, B's and E's old registrations, and B"
        );
        let by_plate = |plate: &str| {
            let q = PersonQuery::Plate(plate.into());
            async move {
                let hits = store.search_persons(&Scope::all(), &q, 10).await.unwrap();
                hits.iter().map(|p| p.id).collect::<Vec<_>>()
            }
        };
        assert_eq!(
            (by_plate("蒙L99999").await, by_plate("蒙L88888").await),
            (vec![], vec![e]),
            "{name}: the car E was seen with only in what was purged finds them no more"
        );
        let regs = |pid| registrations_of(store, pid);
        assert_eq!(
            (regs(a).await, regs(c).await, regs(d).await),
            (1, 1, 1),
            "{name}: A keeps yesterday's; C, a contact, and D, who travelled with C, keep all"
        );
        assert_eq!(
            (regs(f).await, regs(g).await),
            (1, 1),
            "{name}: so do F, under observation, and G, with a lab result"
        );
        assert!(
            store.person(b, &Scope::all()).await.unwrap().is_none(),
            "{name}: B is forgotten"
        );
        let by_name = store
            .search_persons(&Scope::all(), &PersonQuery::Name("张二".into()), 10)
            .await
            .unwrap();
        assert!(by_name.is_empty(), "{name}: and so is B's name");
        assert_eq!(
            store.rollup_rows().await.unwrap(),
            dashboard_before,
            "{name}: the counts stay"
        );
        assert_eq!(
            store.purge_before(cutoff).await.unwrap(),
            Purged::default(),
            "{name}: nothing more"
        );
        // many at once go in several rounds (SQLite's writer takes them 500 rowids at a time)
        let many: Vec<_> = (0..2100u32)
            .map(|i| {
                let birth = format!("1985{:02}{:02}", 1 + i / 28 % 12, 1 + i % 28);
                let body = checkpoint_body(&cn_id("150802", &birth, i), "李多", "13911112222");
                seal_at(linhe, &body, old)
            })
            .collect();
        store.insert_registrations(many).await.unwrap();
        assert_eq!(
            store.purge_before(cutoff).await.unwrap(),
            Purged {
                registrations: 2100,
                persons: 2100
            },
            "{name}"
        );
        // B comes back: the same document makes the same person again
        let again = register_at(store, linhe, &body(32, "张二"), now)
            .await
            .person
            .id;
        assert_eq!(again, b, "{name}");
        let by_name = store
            .search_persons(&Scope::all(), &PersonQuery::Name("张二".into()), 10)
            .await
            .unwrap();
        assert_eq!(
            by_name.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![b],
            "{name}: and is found by name again"
        );
        assert!(
            store.person(b, &Scope::all()).await.unwrap().is_some(),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retention_purge_keeps_people_merged_traced_noticed_or_matched() {
    use epigrid_core::store::Purged;
    use epigrid_core::trace::{ContactRecord, Notice, NoticeEntry, ProximityRow};
    for (name, store) in stores().await {
        let store = store.as_ref();
        let sites = seed(store).await;
        let linhe = site_in(&sites, "150802");
        let now = Utc::now();
        let old = now - Duration::days(40);
        // each of these people came only 40 days ago
        let mut people = Vec::new();
        for (seq, who) in (41..).zip([
            "王一", "王二", "王三", "王四", "王五", "王六", "王七", "王八",
        ]) {
            let body = checkpoint_body(&cn_id("150802", "19910101", seq), who, "13911112222");
            people.push(register_at(store, linhe, &body, old).await.person.id);
        }
        let [merged_away, merged_into, near_a, near_b, case, contact, matched, nobody] = people[..]
        else {
            unreachable!()
        };
        // a merge, even one undone since, is a decision staff took about both people
        let merge = merge_record(merged_away, merged_into);
        store.merge_persons(&merge).await.unwrap();
        store
            .undo_merge(merge.id, &Scope::all(), now)
            .await
            .unwrap();
        store
            .insert_proximity(vec![ProximityRow {
                id: new_id(),
                a: near_a,
                b: near_b,
                at: old,
                duration_s: 900,
                source: "bluetooth".into(),
            }])
            .await
            .unwrap();
        let at = chrono::DateTime::from_timestamp(old.timestamp(), 0).unwrap();
        store
            .insert_notice(&Notice {
                id: new_id(),
                case_person_id: case,
                public_token: format!("tok-retention-{name}"),
                area_path: "/150800/150802/".into(),
                created_by: None,
                created_at: now,
                entries: vec![NoticeEntry {
                    position: 0,
                    site_id: linhe.id,
                    place: "p".into(),
                    area_name: "a".into(),
                    from: at,
                    to: at + Duration::hours(1),
                }],
            })
            .await
            .unwrap();
        store
            .upsert_contacts(&[ContactRecord {
                index_person_id: case,
                contact_person_id: contact,
                degree: 1,
                kinds: "co_location".into(),
                exposure_s: 600,
                score: 0.5,
                status: "pending".into(),
                found_at: now,
            }])
            .await
            .unwrap();
        insert_matched_list(store, "from the railway", "/150800/", matched).await;

        assert_eq!(
            store.purge_before(now - Duration::days(28)).await.unwrap(),
            Purged {
                registrations: 1,
                persons: 1
            },
            "{name}: only the person nobody acted on goes"
        );
        assert!(
            store.person(nobody, &Scope::all()).await.unwrap().is_none(),
            "{name}"
        );
        for (role, pid) in [
            ("merged away", merged_away),
            ("merged into", merged_into),
            ("near", near_a),
            ("near", near_b),
            ("the case of a notice", case),
            ("a contact", contact),
            ("matched on a list", matched),
        ] {
            let kept = registrations_of(store, pid).await;
            assert_eq!(
                kept, 1,
                "{name}: the person {role} keeps their registration"
            );
            assert!(
                store.person(pid, &Scope::all()).await.unwrap().is_some(),
                "{name}: the person {role} is kept"
            );
        }
    }
}

/// The server's purge, as it runs hourly with `--retention-days days`.
async fn purge(app: &TestApp, days: u32) -> epigrid_core::store::Purged {
    let cfg = epigrid_web::WebConfig {
        retention_days: days,
        ..Default::default()
    };
    let st = epigrid_web::AppState::new(app.store.clone(), vault(), cfg);
    epigrid_web::purge_expired(&st).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_purge_is_in_the_audit_log_for_top_level_admins_only() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let body = checkpoint_body(&cn_id("150802", "19900101", 41), "王一", "13911114141");
    let old = Utc::now() - Duration::days(40);
    register_at(app.store.as_ref(), &site, &body, old).await;
    let purged = purge(&app, 28).await;
    assert_eq!((purged.registrations, purged.persons), (1, 1));
    let city = app.token("ret_city", Role::Admin, "150800").await;
    let county = app.token("ret_county", Role::Admin, "150802").await;
    let q = "/api/v1/audit?action=retention.purge";
    let seen = app.get_json(q, &city).await;
    let detail = seen["items"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("1 registrations, 1 people; made before "),
        "{seen}"
    );
    assert_eq!(seen["items"][0]["subject"], "retention:28d");
    assert!(
        !seen.to_string().contains("王一"),
        "no one's data in it: {seen}"
    );
    let unseen = app.get_json(q, &county).await;
    assert_eq!(unseen["items"], json!([]), "of no area: {unseen}");
    // nothing left to purge: nothing audited
    let again = purge(&app, 28).await;
    assert_eq!((again.registrations, again.persons), (0, 0));
    let seen = app.get_json(q, &city).await;
    assert_eq!(seen["items"].as_array().unwrap().len(), 1, "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_reaching_back_past_the_retention_says_so() {
    let (store, dir) = sqlite();
    let cfg = epigrid_web::WebConfig {
        retention_days: 28,
        ..Default::default()
    };
    let app = TestApp::start_configured(store, dir, cfg).await;
    let epi = app.token("ret_epi", Role::Epidemiologist, "150802").await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let id = cn_id("150802", "19900101", 43);
    assert_eq!(
        app.register(&site, &checkpoint_body(&id, "王三", "13911114343"))
            .await
            .status(),
        201
    );
    let pid = find_person(&app, &id, &epi).await;
    let trace = |from: String| {
        let (app, epi, pid) = (&app, &epi, &pid);
        async move {
            let r = app
                .post_json(
                    &format!("/api/v1/persons/{pid}/trace"),
                    &json!({"from": from}),
                    Some(epi),
                )
                .await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let long_ago = (Utc::now() - Duration::days(40)).to_rfc3339();
    let v = trace(long_ago).await;
    let horizon = v["purged_before"].as_str().expect("a horizon");
    let horizon = chrono::DateTime::parse_from_rfc3339(horizon).unwrap();
    let expected = Utc::now() - Duration::days(28);
    assert!(
        (horizon.with_timezone(&Utc) - expected).num_seconds().abs() < 60,
        "{v}"
    );
    let v = trace((Utc::now() - Duration::days(10)).to_rfc3339()).await;
    assert!(v["purged_before"].is_null(), "within the retention: {v}");
    // the page's default window: from a positive sample taken 40 days ago, past the horizon
    let sample = (Utc::now() - Duration::days(40)).date_naive().to_string();
    let lab = app
        .post_json(
            &format!("/api/v1/persons/{pid}/lab-results"),
            &json!({"test": "nucleic_acid", "sample_date": sample, "result": "positive"}),
            Some(&epi),
        )
        .await;
    assert_eq!(lab.status(), 201);
    // people registering are told how long it is kept
    let form = app.public_page(&format!("/s/{}?lang=en", site.token)).await;
    assert!(
        form.contains("Registrations are deleted after 28 days"),
        "{form}"
    );
    let cookie = app.login_cookie("ret_epi").await;
    let page = app
        .page(&format!("/persons/{pid}/trace?lang=en"), &cookie)
        .await;
    assert!(
        page.contains("class=\"note\" role=\"status\">Registrations of people no one had acted on"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_merged_record_takes_no_new_facts_and_contacts_need_a_case_and_valid_ids() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let person = |seq: u32, name: &'static str| {
        let (app, epi) = (&app, epi.clone());
        async move {
            let id = cn_id("150802", "19750505", seq);
            person_via_api(app, &id, name, "13700000001", &epi).await
        }
    };
    let post = |path: String, body: Value| {
        let (app, epi) = (&app, epi.clone());
        async move { status_and_codes(app.post_json(&path, &body, Some(&epi)).await).await }
    };
    let (dup, kept) = (person(1, "甲").await, person(2, "甲").await);
    let merged = post(
        format!("/api/v1/persons/{dup}/merge"),
        json!({"into": kept, "reason": "同一人"}),
    )
    .await;
    assert_eq!(merged.0, 200);
    let refused = (409, vec![":err.person.merged".to_string()]);
    for (path, body) in [
        (
            "category",
            json!({"category": "confirmed", "reason": "阳性"}),
        ),
        ("observations", json!({"kind": "home"})),
        (
            "lab-results",
            json!({"test": "nucleic_acid", "result": "positive", "sample_date": Utc::now().date_naive().to_string()}),
        ),
        ("notices", json!({})),
    ] {
        assert_eq!(
            post(format!("/api/v1/persons/{dup}/{path}"), body).await,
            refused,
            "{path}: a fact on the merged-away record would be counted nowhere"
        );
    }
    // close contacts are marked for someone under investigation, all given ids or none
    let case = person(3, "乙").await;
    let contact = person(4, "丙").await;
    let marked = post(
        format!("/api/v1/persons/{case}/contacts"),
        json!({"person_ids": [contact], "reason": "同场所"}),
    )
    .await;
    assert_eq!(
        marked,
        (409, vec![":err.contacts.index_not_case".to_string()])
    );
    let confirmed = post(
        format!("/api/v1/persons/{case}/category"),
        json!({"category": "confirmed", "reason": "阳性"}),
    )
    .await;
    assert_eq!(confirmed.0, 200);
    let marked = post(
        format!("/api/v1/persons/{case}/contacts"),
        json!({"person_ids": [contact, "not-a-uuid"], "reason": "同场所"}),
    )
    .await;
    assert_eq!(
        marked,
        (422, vec!["person_ids[1]:err.id.format".to_string()])
    );
    let v: Value = app
        .get_json(&format!("/api/v1/persons/{contact}"), &epi)
        .await;
    assert_eq!(
        v["category"], "none",
        "nothing of the refused batch was done"
    );
    // nobody reports their temperature for the dead
    let gone = post(
        format!("/api/v1/persons/{case}/category"),
        json!({"category": "deceased", "reason": "死亡"}),
    )
    .await;
    assert_eq!(gone.0, 200);
    assert_eq!(
        post(format!("/api/v1/persons/{case}/observations"), json!({})).await,
        (409, vec![":err.observation.deceased".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_merges_and_observation_starts_leave_one_winner_on_every_store() {
    use epigrid_core::store::StoreError;
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        for round in 0..4u32 {
            let a = registered_person(
                store.as_ref(),
                &sites[0],
                &cn_id("150802", "19720202", 10 + round * 2),
                "甲",
            )
            .await;
            let b = registered_person(
                store.as_ref(),
                &sites[0],
                &cn_id("150802", "19720202", 11 + round * 2),
                "甲",
            )
            .await;
            // two people merge the pair at once, in opposite directions
            let (ab, ba) = (merge_record(a, b), merge_record(b, a));
            let (one, other) = tokio::join!(store.merge_persons(&ab), store.merge_persons(&ba));
            assert!(
                matches!(
                    (&one, &other),
                    (Ok(()), Err(StoreError::Conflict(_))) | (Err(StoreError::Conflict(_)), Ok(()))
                ),
                "{name}: one merge wins, the other finds it done: {one:?} {other:?}"
            );
            let mut kept = 0;
            for id in [a, b] {
                let p = store.person(id, &Scope::all()).await.unwrap().unwrap();
                kept += usize::from(p.merged_into.is_none());
            }
            assert_eq!(kept, 1, "{name}: exactly one record is kept");
            // and several start an observation of the kept one at once
            let today = Utc::now().date_naive();
            let keeper = if one.is_ok() { b } else { a };
            let starts: Vec<_> = (0..6)
                .map(|i| observation(keeper, today, 14, &format!("race-{name}-{round}-{i}")))
                .collect();
            let mut tasks = tokio::task::JoinSet::new();
            for o in starts {
                let store = store.clone();
                tasks.spawn(async move { store.insert_observation(&o).await });
            }
            let results = tasks.join_all().await;
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{name}: one observation opens: {results:?}"
            );
            assert!(results
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict(_)))));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_from_another_area_shows_up_where_the_matched_person_lives() {
    for (name, store) in stores().await {
        let sites = seed(store.as_ref()).await;
        let linhe = site_in(&sites, "150802");
        let here =
            registered_person(store.as_ref(), linhe, &cn_id("150802", "19810303", 1), "甲").await;
        // Wuyuan's staff upload a list from the railway that names a Linhe resident
        insert_matched_list(store.as_ref(), "railway", "/150800/150821/", here).await;
        let names = |scope: &'static str| {
            let store = store.clone();
            async move {
                let lists = store.lists_of(here, &Scope::new(scope)).await.unwrap();
                lists.into_iter().map(|(l, _)| l.name).collect::<Vec<_>>()
            }
        };
        assert_eq!(
            names("/150800/150802/").await,
            ["railway"],
            "{name}: where they live"
        );
        assert_eq!(
            names("/150800/150821/").await,
            ["railway"],
            "{name}: where it was uploaded"
        );
        assert!(
            names("/150800/150822/").await.is_empty(),
            "{name}: nowhere else"
        );
        // someone on a list is under review: a registration elsewhere with their ID number
        // does not move them out of their area's view
        let wuyuan = site_in(&sites, "150821");
        registered_person(
            store.as_ref(),
            wuyuan,
            &cn_id("150802", "19810303", 1),
            "甲",
        )
        .await;
        let p = store.person(here, &Scope::all()).await.unwrap().unwrap();
        assert!(
            p.area_path.starts_with("/150800/150802/"),
            "{name}: {}",
            p.area_path
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn observations_take_only_real_changes_a_place_to_stay_and_say_when_they_ended() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let pid = person_via_api(
        &app,
        &cn_id("150802", "19830303", 9),
        "观察甲",
        "13700000009",
        &epi,
    )
    .await;
    let start = |body: Value| {
        let (app, epi, pid) = (&app, epi.clone(), pid.clone());
        async move {
            app.post_json(
                &format!("/api/v1/persons/{pid}/observations"),
                &body,
                Some(&epi),
            )
            .await
        }
    };
    // centralised observation is at a place to stay, not at a road checkpoint
    let checkpoint = app.site(SiteKind::Checkpoint, "150802").id.to_string();
    let r = start(json!({"kind": "central", "site_id": checkpoint})).await;
    assert_eq!(
        status_and_codes(r).await,
        (422, vec!["site_id:err.observation.site_kind".to_string()])
    );
    // an observation that ended days ago: its link says so
    let ago = (Utc::now() - Duration::days(20)).date_naive().to_string();
    let r = start(json!({"kind": "home", "start": ago, "days": 5})).await;
    assert_eq!(r.status(), 201);
    let o: Value = r.json().await.unwrap();
    let link = o["report_url"].as_str().unwrap();
    assert_eq!(app.client.get(link).send().await.unwrap().status(), 410);
    // a change names what it changes
    let venue = app.site(SiteKind::Venue, "150802").id.to_string();
    let r = start(json!({"kind": "central", "site_id": venue})).await;
    assert_eq!(r.status(), 201);
    let open: Value = r.json().await.unwrap();
    let path = format!("/api/v1/observations/{}", open["id"].as_str().unwrap());
    let patch = |body: Value| {
        let (app, path, epi) = (&app, &path, &epi);
        async move { app.patch_json(path, &body, Some(epi)).await }
    };
    assert_eq!(
        status_and_codes(patch(json!({})).await).await,
        (422, vec![":err.field.nothing_to_change".to_string()])
    );
    assert_eq!(
        status_and_codes(patch(json!({"action": "revoke"})).await).await,
        (
            422,
            vec!["action:err.field.unknown_observation".to_string()]
        )
    );
    assert_eq!(patch(json!({"extend_days": 2})).await.status(), 200);
    // a result does not come before its sample
    let today = Utc::now().date_naive();
    let r = app
        .post_json(
            &format!("/api/v1/persons/{pid}/lab-results"),
            &json!({"test": "nucleic_acid", "result": "negative",
                    "sample_date": today.to_string(),
                    "result_date": (today - Duration::days(1)).to_string()}),
            Some(&epi),
        )
        .await;
    assert_eq!(
        status_and_codes(r).await,
        (
            422,
            vec!["result_date:err.lab.result_before_sample".to_string()]
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn merges_keep_what_the_merged_record_carried_and_undo_in_reverse_order() {
    let app = TestApp::start().await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let doc = |seq: u32| cn_id("150802", "19860606", seq);
    let person = |seq: u32| {
        let (app, epi) = (&app, epi.clone());
        async move { person_via_api(app, &doc(seq), "重复", "13700000006", &epi).await }
    };
    let merge = |from: String, into: String| {
        let (app, epi) = (&app, epi.clone());
        async move {
            let path = format!("/api/v1/persons/{from}/merge");
            let r = app
                .post_json(
                    &path,
                    &json!({"into": into, "reason": "同一人"}),
                    Some(&epi),
                )
                .await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or_default();
            (status, v)
        }
    };
    let undo = |merge_id: Value| {
        let (app, epi) = (&app, epi.clone());
        async move {
            let path = format!("/api/v1/merges/{}/undo", merge_id.as_str().unwrap());
            status_and_codes(app.post_json(&path, &json!({}), Some(&epi)).await).await
        }
    };
    let merged_into = |id: String| {
        let (app, epi) = (&app, epi.clone());
        async move {
            let v: Value = app.get_json(&format!("/api/v1/persons/{id}"), &epi).await;
            v["merged_into"].as_str().map(String::from)
        }
    };
    // a confirmed case merged into a record without a category would vanish from the counts
    let (case, plain) = (person(1).await, person(2).await);
    classify(&app, &case, "confirmed", &epi).await;
    let (status, v) = merge(case.clone(), plain.clone()).await;
    assert_eq!(
        (status, &v["errors"][0]["code"]),
        (409, &json!("err.merge.from_has_more"))
    );
    let (status, _) = merge(plain.clone(), case.clone()).await;
    assert_eq!(status, 200, "the other way round keeps the case");
    // two records both under observation: the one merged away would go on taking reports
    // that no line list shows, so its observation is released first
    let observe = |pid: String| {
        let (app, epi) = (&app, epi.clone());
        async move {
            app.post_json(
                &format!("/api/v1/persons/{pid}/observations"),
                &json!({"kind": "home", "days": 14}),
                Some(&epi),
            )
            .await
            .status()
        }
    };
    let (watched_a, watched_b) = (person(7).await, person(8).await);
    assert_eq!(observe(watched_a.clone()).await, 201);
    assert_eq!(observe(watched_b.clone()).await, 201);
    let (status, v) = merge(watched_a.clone(), watched_b.clone()).await;
    assert_eq!(
        (status, &v["errors"][0]["code"]),
        (409, &json!("err.merge.both_observed")),
        "{v}"
    );
    assert_eq!(merged_into(watched_a.clone()).await, None);
    // a record merged away is found by its own ID number, as the one it was merged into
    let found: Value = app
        .get_json(&format!("/api/v1/persons?q={}", doc(2)), &epi)
        .await;
    assert_eq!(found["items"][0]["id"].as_str(), Some(case.as_str()));
    // c into d, then d into e: undone in reverse order, each giving back what it took
    let (c, d, e) = (person(3).await, person(4).await, person(5).await);
    let (_, cd) = merge(c.clone(), d.clone()).await;
    let (_, de) = merge(d.clone(), e.clone()).await;
    assert_eq!(merged_into(c.clone()).await.as_deref(), Some(e.as_str()));
    assert_eq!(
        undo(cd["merge_id"].clone()).await,
        (409, vec![":err.merge.undo_later_first".to_string()])
    );
    assert_eq!(undo(de["merge_id"].clone()).await.0, 200);
    assert_eq!(
        merged_into(c.clone()).await.as_deref(),
        Some(d.as_str()),
        "c is d's again"
    );
    assert_eq!(merged_into(d.clone()).await, None);
    assert_eq!(undo(cd["merge_id"].clone()).await.0, 200);
    assert_eq!(merged_into(c.clone()).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn undoing_a_merge_gives_back_the_people_it_took_along_on_every_store() {
    use epigrid_core::store::StoreError;
    for (name, store) in stores().await {
        let store = store.as_ref();
        let sites = seed(store).await;
        let doc = |seq| cn_id("150802", "19870707", seq);
        let mut ids = Vec::new();
        for seq in 1..=3 {
            ids.push(registered_person(store, &sites[0], &doc(seq), "链").await);
        }
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        let (ab, bc) = (merge_record(a, b), merge_record(b, c));
        store.merge_persons(&ab).await.unwrap();
        store.merge_persons(&bc).await.unwrap();
        // a registers again while the chain stands: it is c's, sealed for a
        registered_person(store, &sites[0], &doc(1), "链").await;
        let regs_of = |pid| registrations_of(store, pid);
        let into = |pid| async move {
            store
                .person(pid, &Scope::all())
                .await
                .unwrap()
                .unwrap()
                .merged_into
        };
        assert_eq!(into(a).await, Some(c), "{name}");
        assert!(
            matches!(
                store.undo_merge(ab.id, &Scope::all(), Utc::now()).await,
                Err(StoreError::Conflict(_))
            ),
            "{name}: the later merge is undone first"
        );
        let before_b = regs_of(b).await;
        store
            .undo_merge(bc.id, &Scope::all(), Utc::now())
            .await
            .unwrap();
        assert_eq!((into(a).await, into(b).await), (Some(b), None), "{name}");
        assert_eq!(
            (before_b, regs_of(b).await),
            (1, 3),
            "{name}: b's own, and a's, including what came in as a while the chain stood"
        );
        store
            .undo_merge(ab.id, &Scope::all(), Utc::now())
            .await
            .unwrap();
        assert_eq!(into(a).await, None, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn birth_dates_are_kept_as_a_year_and_a_blind_index_on_every_store() {
    use chrono::Datelike;
    for (name, store) in stores().await {
        let store = store.as_ref();
        let sites = seed(store).await;
        let born = NaiveDate::from_ymd_opt(1984, 7, 19).unwrap();
        // a new person: the year only, and the date's index
        let id = registered_person(store, &sites[0], &cn_id("150802", "19840719", 3), "年").await;
        let p = store.person(id, &Scope::all()).await.unwrap().unwrap();
        assert_eq!(p.birth_date, NaiveDate::from_ymd_opt(1984, 1, 1), "{name}");
        // one stored whole by an earlier version is turned into the same at start
        let mut old = seal_at(
            &sites[0],
            &checkpoint_body(&cn_id("150802", "19840719", 5), "旧", "13911112222"),
            Utc::now(),
        );
        old.person.birth_date = Some(born);
        old.person.birth_index = None;
        let old_id = old.person.id;
        store.insert_registration(old).await.unwrap();
        let index = |d| epigrid_core::matching::birth_index(&vault(), d);
        assert_eq!(store.seal_birth_dates(&index).await.unwrap(), 1, "{name}");
        assert_eq!(
            store.seal_birth_dates(&index).await.unwrap(),
            0,
            "{name}: once"
        );
        let p = store.person(old_id, &Scope::all()).await.unwrap().unwrap();
        assert_eq!(
            p.birth_date.map(|d| (d.year(), d.ordinal())),
            Some((1984, 1)),
            "{name}"
        );
        let (people, _) = store.match_keys().await.unwrap();
        for pid in [id, old_id] {
            let known = people.iter().find(|k| k.id == pid).unwrap();
            assert_eq!(known.birth_index, Some(index(born)), "{name}");
        }
    }
}

/// The people page searches by POST: an ID number typed into it stays out of the address
/// (a shared phone's history); the result is the same, and a search without the page's
/// CSRF value is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_people_page_searches_without_the_number_in_the_address() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let id = cn_id("150802", "19870707", 7);
    assert_eq!(
        app.register(&site, &checkpoint_body(&id, "页查", "13900000707"))
            .await
            .status(),
        201
    );
    let cookie = app.cookie("pager", Role::Epidemiologist, "150802").await;
    let page = app.page("/persons", &cookie).await;
    assert!(page.contains("<form method=\"post\" action=\"/persons\""));
    let csrf = input_value(&page, "csrf");
    let search = |csrf: String| {
        let (app, cookie, id) = (&app, &cookie, &id);
        async move {
            app.post_page("/persons", cookie, &[("csrf", csrf.as_str()), ("q", id)])
                .await
        }
    };
    let r = search(csrf).await;
    assert_eq!(r.status(), 200);
    let found = r.text().await.unwrap();
    assert!(found.contains("页*"), "found, masked");
    assert!(
        !found.contains(&format!("q={id}")),
        "no link on the result page carries the number in its address"
    );
    assert_eq!(search("wrong".into()).await.status(), 403);
}
