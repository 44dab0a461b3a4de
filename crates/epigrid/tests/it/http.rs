//! HTTP tests against the real router on a real socket (port 0) over SQLite.

use epigrid_core::model::{Role, SiteKind};
use serde_json::{json, Value};

use crate::support::*;

async fn body(r: reqwest::Response) -> Value {
    r.json().await.expect("json body")
}

/// A 422's errors as `field:code`.
async fn error_codes(r: reqwest::Response) -> Vec<String> {
    let (status, codes) = status_and_codes(r).await;
    assert_eq!(status, 422);
    codes
}

fn fields(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["field"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_public_form_is_small_a_real_form_and_localised() {
    let app = TestApp::start().await;
    for kind in SiteKind::ALL {
        let site = app.site(*kind, "150802");
        let r = app
            .client
            .get(format!("{}/s/{}", app.base, site.token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        assert!(html.len() < 30_000, "{kind}: {} bytes", html.len());
        assert!(
            html.contains("<form") && html.contains("lang=\"zh-CN\""),
            "{kind}"
        );
        assert!(html.contains("提交登记"), "{kind}: Chinese by default");
        // numbers are typed as text (a number field the browser cannot read is sent empty,
        // and the server reads "36,5" and full-width digits on purpose)
        assert!(!html.contains("type=\"number\""), "{kind}");
        // (every kind asks it)
        assert!(
            html.contains("type=\"text\" name=\"temperature\" id=\"temperature\" value=\"\" inputmode=\"decimal\""),
            "{kind}"
        );
        let en = app
            .client
            .get(format!("{}/s/{}", app.base, site.token))
            .header("Accept-Language", "en-GB,en;q=0.9")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            en.contains(">Register<") && en.contains("lang=\"en\""),
            "{kind}: English"
        );
        assert!(html.contains(&format!("<h1>{}</h1>", site.name)), "{kind}");
        assert!(
            !en.contains("<h1 lang="),
            "{kind}: a Latin name is not marked"
        );
        if matches!(kind, SiteKind::Checkpoint | SiteKind::Arrival) {
            assert!(
                en.contains(">Hubei 湖北省<"),
                "{kind}: provinces in English"
            );
        }
        if *kind == SiteKind::Arrival {
            // the date picker offers no arrival after today (local)
            let today = (chrono::Utc::now() + chrono::Duration::hours(8)).date_naive();
            assert!(html.contains(&format!("max=\"{today}\"")), "{html}");
        }
    }
    // a Chinese site name on an English page is marked as Chinese (for screen readers)
    let areas = areas();
    let community = areas.iter().find(|a| a.code == "150802001001").unwrap();
    let named = site(SiteKind::Checkpoint, community, "临河东检查站");
    app.store.insert_site(&named).await.unwrap();
    let en = app
        .public_page(&format!("/s/{}?lang=en", named.token))
        .await;
    assert!(en.contains("<h1 lang=\"zh-CN\">临河东检查站</h1>"), "{en}");
    let gate = app.site(SiteKind::Gate, "150802");
    let html = app.public_page(&format!("/s/{}", gate.token)).await;
    assert!(
        html.contains("150802001001001001"),
        "the gate form lists the compound's units"
    );
    assert!(
        !html.contains("150821100001001001"),
        "and not another compound's"
    );
    let r = app
        .client
        .get(format!("{}/s/not-a-token", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_registration_is_stored_masked_and_bad_input_gets_field_errors() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802");
    let raw = "11010519491231002X";
    let r = app
        .register(site, &checkpoint_body(raw, "欧阳晓明", "13912345678"))
        .await;
    let v = app.stored(r).await;
    let text = v.to_string();
    assert!(
        !text.contains(raw) && !text.contains("13912345678") && !text.contains("欧阳晓明"),
        "{text}"
    );
    assert_eq!(v["id_number"], "110105********002X");
    assert_eq!(v["phone"], "139****5678");
    assert_eq!(v["name"], "欧**明");
    assert_eq!(v["verification_code"].as_str().map(str::len), Some(4));
    assert_eq!(v["origin_name"], "湖北省 武汉市");
    // staff registering someone with a bearer token get the stored record back, masked
    let worker = app.token("gate_worker", Role::GridWorker, "150802").await;
    let r = app
        .post_json(
            &format!("/api/v1/sites/{}/registrations", site.token),
            &checkpoint_body(&cn_id("150802", "19700101", 9), "王五", "13700001111"),
            Some(&worker),
        )
        .await;
    assert_eq!(r.status(), 201);
    let v = body(r).await;
    assert_eq!(v["phone"], "137****1111");
    assert_eq!(v["name"], "王*");
    assert_eq!(v["channel"], "staff");
    assert!(v["person_id"].is_string(), "{v}");

    let mut bad = checkpoint_body("110105194912310021", "张三", "1391234");
    bad["temperature"] = json!(50.0);
    bad["symptoms"] = json!(["sneezing"]);
    let r = app
        .client
        .post(format!(
            "{}/api/v1/sites/{}/registrations",
            app.base, site.token
        ))
        .header("Accept-Language", "en")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v = body(r).await;
    assert_eq!(
        fields(&v),
        ["id_number", "phone", "temperature", "symptoms"]
    );
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(msg.is_ascii() && msg.len() > 10, "English message: {msg}");

    let r = app
        .client
        .post(format!(
            "{}/api/v1/sites/{}/registrations",
            app.base, site.token
        ))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(fields(&body(r).await), ["body"]);
    let r = app.register(site, &json!([1, 2])).await;
    assert_eq!(r.status(), 422);
    let r = app
        .post_json(
            "/api/v1/sites/nope/registrations",
            &checkpoint_body(raw, "张三", "13912345678"),
            None,
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        app.store.registration_count().await.unwrap(),
        2,
        "refused requests stored nothing (the two stored are the citizen's and the worker's)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_validates_its_own_fields() {
    let app = TestApp::start().await;
    let gate = app.site(SiteKind::Gate, "150802");
    let base = json!({"name": "李四", "phone": "13812345678", "temperature": 36.6, "symptoms": []});
    let mut b = base.clone();
    b["direction"] = json!("in");
    b["visitor"] = json!(true);
    b["unit_code"] = json!("150821100001001001");
    let r = app.register(gate, &b).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        fields(&body(r).await),
        ["visit_reason"],
        "visitor reason first"
    );
    b["visit_reason"] = json!("探亲");
    let r = app.register(gate, &b).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        fields(&body(r).await),
        ["unit_code"],
        "a unit of another compound"
    );
    b["unit_code"] = json!("150802001001001002");
    let r = app.register(gate, &b).await;
    let v = app.stored(r).await;
    assert_eq!(v["provisional"], true, "no document: a provisional person");
    assert_eq!(v["direction"], "in");
    // staff read the unit by name, with its building
    let cookie = app.cookie("kinds_gw", Role::GridWorker, "150802").await;
    let page = app
        .page(
            &format!("/registrations/{}", v["id"].as_str().unwrap()),
            &cookie,
        )
        .await;
    assert!(page.contains("<dd>1号楼 2单元</dd>"), "{page}");
    assert!(page.contains("<dd>36.6 ℃</dd>"), "no fever: {page}");
    let mut hot = b.clone();
    hot["temperature"] = json!(38.2);
    let hot = app.stored(app.register(gate, &hot).await).await;
    let page = app
        .page(
            &format!("/registrations/{}", hot["id"].as_str().unwrap()),
            &cookie,
        )
        .await;
    assert!(page.contains("<dd>38.2 ℃ 发热</dd>"), "flagged: {page}");

    let arrival = app.site(SiteKind::Arrival, "150802");
    let mut a = base.clone();
    a["id_number"] = json!(cn_id("420102", "19920315", 7));
    a["arrival_date"] = json!("2999-01-01");
    a["origin"] = json!("4201");
    a["residence_code"] = json!("999999999999");
    a["address"] = json!("");
    let r = app.register(arrival, &a).await;
    assert_eq!(r.status(), 422);
    let f = fields(&body(r).await);
    assert!(
        f.contains(&"arrival_date".to_string()) && f.contains(&"address".to_string()),
        "{f:?}"
    );
    a["arrival_date"] = json!(chrono::Utc::now().date_naive().to_string());
    a["residence_code"] = json!("150802001001");
    a["address"] = json!("胜利路 8 号");
    a["stay_days"] = json!(30);
    let r = app.register(arrival, &a).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    // staff see the street, not the door; the whole address is an audited unmask
    let stored = app.stored(r).await;
    assert_eq!(stored["address"], "胜利路***", "{stored}");

    let venue = app.site(SiteKind::Venue, "150802");
    let mut v = base.clone();
    v["id_type"] = json!("passport");
    v["id_number"] = json!("E12345678");
    let r = app.register(venue, &v).await;
    assert_eq!(app.stored(r).await["id_number"], "E1*****78");
}

/// Staff check a venue's visitor out once; a registration of another kind has no check-out.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_venue_check_in_is_checked_out_and_once() {
    let app = TestApp::start().await;
    let keeper = app.token("out_keeper", Role::SiteStaff, "150802").await;
    let venue = app.site(SiteKind::Venue, "150802").clone();
    let checkpoint = app.site(SiteKind::Checkpoint, "150802").clone();
    let visit = app
        .stored(
            app.register(
                &venue,
                &json!({"name": "张三", "id_number": cn_id("150802", "19900101", 61), "phone": "13900000061", "temperature": 36.5, "symptoms": []}),
            )
            .await,
        )
        .await;
    let trip = app
        .stored(
            app.register(
                &checkpoint,
                &checkpoint_body(&cn_id("150802", "19900101", 62), "李四", "13900000062"),
            )
            .await,
        )
        .await;
    let out = |id: &Value| {
        let app = &app;
        let path = format!("/api/v1/registrations/{}/checkout", id.as_str().unwrap());
        let keeper = keeper.clone();
        async move { app.post_json(&path, &json!({}), Some(&keeper)).await }
    };
    let r = out(&visit["id"]).await;
    assert_eq!(r.status(), 200);
    assert!(body(r).await["left_at"].is_string());
    let r = out(&visit["id"]).await;
    assert_eq!(
        status_and_codes(r).await,
        (409, vec![":err.checkout.done".to_string()])
    );
    let r = out(&trip["id"]).await;
    assert_eq!(
        status_and_codes(r).await,
        (409, vec![":err.checkout.kind".to_string()])
    );
    let stored = app
        .get_json(
            &format!("/api/v1/registrations/{}", trip["id"].as_str().unwrap()),
            &keeper,
        )
        .await;
    assert!(stored["left_at"].is_null(), "{stored}");
    // on the visitor's own page, leaving is recorded while the confirmation lasts (12 h):
    // past that the page says so and nothing is written
    let old = register_at(
        app.store.as_ref(),
        &venue,
        &json!({"name": "王五", "id_number": cn_id("150802", "19900101", 63), "phone": "13900000063", "temperature": 36.5, "symptoms": []}),
        chrono::Utc::now() - chrono::Duration::hours(13),
    )
    .await;
    let r = app
        .client
        .post(format!("{}/s/{}/r/{}/out", app.base, venue.token, old.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert!(r.text().await.unwrap().contains("工作人员"));
    let stored = app
        .get_json(&format!("/api/v1/registrations/{}", old.id), &keeper)
        .await;
    assert!(stored["left_at"].is_null(), "{stored}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_date_as_to_takes_in_that_whole_day() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let r = body(
        app.register(
            &site,
            &checkpoint_body(&cn_id("150802", "19900101", 7), "张三", "13900000007"),
        )
        .await,
    )
    .await;
    let id = r["id"].as_str().unwrap().to_string();
    let tok = app.token("dates_admin", Role::Admin, "150800").await;
    // the demo city's local days (UTC+8)
    let day = |d: i64| {
        (chrono::Utc::now() + chrono::Duration::hours(8) + chrono::Duration::days(d))
            .date_naive()
            .to_string()
    };
    for (from, to, found) in [
        (day(0), day(0), true),
        (day(-1), day(0), true),
        (day(-1), day(-1), false),
        (day(1), day(1), false),
    ] {
        let list = app
            .get_json(&format!("/api/v1/registrations?from={from}&to={to}"), &tok)
            .await;
        assert_eq!(
            list.to_string().contains(&id),
            found,
            "from={from} to={to}: {list}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_matrix_staff_see_only_their_subtree() {
    let app = TestApp::start().await;
    let linhe_site = app.site(SiteKind::Checkpoint, "150802").clone();
    let wuyuan_site = app.site(SiteKind::Checkpoint, "150821").clone();
    let a = body(
        app.register(
            &linhe_site,
            &checkpoint_body(&cn_id("150802", "19900101", 1), "张三", "13900000001"),
        )
        .await,
    )
    .await;
    let b = body(
        app.register(
            &wuyuan_site,
            &checkpoint_body(&cn_id("150821", "19900101", 2), "李四", "13900000002"),
        )
        .await,
    )
    .await;
    let (ra, rb) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );

    // (user, role, area, sees Linhe's, sees Wuyuan's)
    let matrix = [
        ("city_admin", Role::Admin, "150800", true, true),
        ("linhe_manager", Role::Manager, "150802", true, false),
        ("linhe_epi", Role::Epidemiologist, "150802", true, false),
        ("wuyuan_gw", Role::GridWorker, "150821", false, true),
        (
            "community_gw",
            Role::GridWorker,
            "150802001001",
            true,
            false,
        ),
        (
            "building_gw",
            Role::GridWorker,
            "150802001001001",
            false,
            false,
        ),
        ("wuyuan_staff", Role::SiteStaff, "150821", false, true),
    ];
    for (user, role, area, sees_a, sees_b) in matrix {
        let tok = app.token(user, role, area).await;
        for (id, sees) in [(&ra, sees_a), (&rb, sees_b)] {
            let st = app
                .get(&format!("/api/v1/registrations/{id}"), Some(&tok))
                .await
                .status();
            assert_eq!(st.as_u16(), if sees { 200 } else { 404 }, "{user} GET {id}");
        }
        let list = body(
            app.get("/api/v1/registrations?limit=1000", Some(&tok))
                .await,
        )
        .await
        .to_string();
        assert_eq!(list.contains(&ra), sees_a, "{user} list");
        assert_eq!(list.contains(&rb), sees_b, "{user} list");
        let sites = body(app.get("/api/v1/sites", Some(&tok)).await)
            .await
            .to_string();
        assert_eq!(
            sites.contains(&wuyuan_site.token),
            sees_b || area == "150800",
            "{user} sites"
        );
        let qr = app
            .get(
                &format!("/api/v1/sites/{}/qr.png", linhe_site.id),
                Some(&tok),
            )
            .await
            .status();
        assert_eq!(qr.as_u16() == 200, sees_a, "{user} qr");
    }
    // analysts see aggregates only
    let analyst = app.token("analyst", Role::Analyst, "150800").await;
    assert_eq!(
        app.get(&format!("/api/v1/registrations/{ra}"), Some(&analyst))
            .await
            .status(),
        403
    );
    assert_eq!(
        app.get("/api/v1/registrations", Some(&analyst))
            .await
            .status(),
        403
    );
    // nobody without a token
    assert_eq!(app.get("/api/v1/registrations", None).await.status(), 401);
    assert_eq!(
        app.get("/api/v1/registrations", Some("forged"))
            .await
            .status(),
        401
    );
    // a forged token does not pass as an anonymous registration either
    let r = app
        .client
        .post(format!(
            "{}/api/v1/sites/{}/registrations",
            app.base, linhe_site.token
        ))
        .bearer_auth("forged")
        .json(&checkpoint_body(
            &cn_id("150802", "19900101", 5),
            "张三",
            "13900000005",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // areas: children within scope; an ancestor shows only the way down
    let gw = app.token("wuyuan_gw2", Role::GridWorker, "150821").await;
    let kids = body(app.get("/api/v1/areas?parent=150800", Some(&gw)).await).await;
    let codes: Vec<&str> = kids["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["150821"]);
    assert_eq!(
        app.get("/api/v1/areas?parent=150802", Some(&gw))
            .await
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unmasking_is_for_allowed_roles_and_always_audited() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let raw = cn_id("150802", "19870706", 5);
    let reg = body(
        app.register(&site, &checkpoint_body(&raw, "司马静", "13700002222"))
            .await,
    )
    .await;
    let id = reg["id"].as_str().unwrap();
    let admin = app.token("admin", Role::Admin, "150800").await;
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let staff = app.token("gatekeeper", Role::SiteStaff, "150802").await;
    let other = app
        .token("wuyuan_epi", Role::Epidemiologist, "150821")
        .await;

    // a reason that is not text is named as such, not as missing
    let r = app
        .post_json(
            &format!("/api/v1/registrations/{id}/unmask"),
            &json!({"reason": 1}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(body(r).await["errors"][0]["code"], "err.text.format");
    // nor one that carries someone's number into the audit log (full-width digits too)
    for numbered in ["回访 13800138000 未接", "核对 １５０８０２１９９０"] {
        let r = app
            .post_json(
                &format!("/api/v1/registrations/{id}/unmask"),
                &json!({"reason": numbered}),
                Some(&epi),
            )
            .await;
        assert_eq!(r.status(), 422, "{numbered}");
        assert_eq!(body(r).await["errors"][0]["code"], "err.reason.numbers");
    }
    let r = app
        .post_json(
            &format!("/api/v1/registrations/{id}/unmask"),
            &json!({"reason": "流调"}),
            Some(&epi),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v = body(r).await;
    assert_eq!(
        (
            v["id_number"].as_str(),
            v["phone"].as_str(),
            v["name"].as_str()
        ),
        (Some(raw.as_str()), Some("13700002222"), Some("司马静"))
    );
    let r = app
        .post_json(
            &format!("/api/v1/registrations/{id}/unmask"),
            &json!({}),
            Some(&staff),
        )
        .await;
    assert_eq!(r.status(), 403, "site staff may not unmask");
    // an unmasked read says why
    for no_reason in [json!({}), json!({"reason": "  "})] {
        let r = app
            .post_json(
                &format!("/api/v1/registrations/{id}/unmask"),
                &no_reason,
                Some(&epi),
            )
            .await;
        assert_eq!(r.status(), 422, "{no_reason}");
        assert_eq!(body(r).await["errors"][0]["field"], "reason");
    }
    let r = app
        .post_json(
            &format!("/api/v1/registrations/{id}/unmask"),
            &json!({}),
            Some(&other),
        )
        .await;
    assert_eq!(r.status(), 404, "out of scope");

    let audit = body(app.get("/api/v1/audit", Some(&admin)).await).await;
    let unmasks: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "unmask")
        .collect();
    assert_eq!(unmasks.len(), 1);
    assert_eq!(unmasks[0]["username"], "epi");
    assert_eq!(unmasks[0]["subject"], format!("registration:{id}"));
    assert!(unmasks[0]["detail"].as_str().unwrap().contains("流调"));
    assert!(
        !audit.to_string().contains(&raw),
        "the audit log holds no personal data"
    );
    assert_eq!(
        app.get("/api/v1/audit", Some(&epi)).await.status(),
        403,
        "audit is for admins"
    );
}

/// An unmask or an export the audit log cannot record is refused: nothing is shown. The
/// database itself refuses the entries (a trigger on PostgreSQL's `audit_log`).
#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_disclosed_that_the_audit_log_could_not_record() {
    let Some((store, client, schema)) = postgres_with_client().await else {
        return;
    };
    let app = TestApp::start_with(store, temp_dir("audit_refused")).await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let raw = cn_id("150802", "19880808", 7);
    let reg = body(
        app.register(&site, &checkpoint_body(&raw, "欧阳明", "13700003333"))
            .await,
    )
    .await;
    let id = reg["id"].as_str().unwrap().to_string();
    let epi = app.token("epi", Role::Epidemiologist, "150802").await;
    let admin = app.token("admin", Role::Admin, "150800").await;
    // someone at the same checkpoint at the same time: a contact of the first, once traced
    let near = cn_id("150802", "19880808", 8);
    assert_eq!(
        app.register(&site, &checkpoint_body(&near, "同行者", "13700004444"))
            .await
            .status(),
        201
    );
    let found: Value = body(
        app.get(&format!("/api/v1/persons?q={raw}"), Some(&epi))
            .await,
    )
    .await;
    let pid = found["items"][0]["id"].as_str().unwrap().to_string();
    let trace = || async {
        app.post_json(
            &format!("/api/v1/persons/{pid}/trace"),
            &json!({}),
            Some(&epi),
        )
        .await
    };
    let unmask = || async {
        app.post_json(
            &format!("/api/v1/registrations/{id}/unmask"),
            &json!({"reason": "流调"}),
            Some(&epi),
        )
        .await
    };
    client
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON {schema}.audit_log \
             FOR EACH ROW EXECUTE FUNCTION {schema}.refuse();"
        ))
        .await
        .expect("trigger");
    let r = unmask().await;
    assert_eq!(r.status(), 500, "an unaudited unmask is refused");
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(&raw) && !text.contains("13700003333"),
        "{text}"
    );
    let r = app.get("/api/v1/audit.csv", Some(&admin)).await;
    assert_eq!(r.status(), 500, "an unaudited export is refused");
    assert_eq!(trace().await.status(), 500, "an unaudited trace is refused");
    let kind = r.headers().get("content-type").cloned();
    assert!(!format!("{kind:?}").contains("csv"), "{kind:?}");

    client
        .batch_execute(&format!("DROP TRIGGER refuse ON {schema}.audit_log"))
        .await
        .expect("drop trigger");
    let r = unmask().await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await["id_number"], raw.as_str());
    let audit = body(app.get("/api/v1/audit", Some(&admin)).await).await;
    let unmasks = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "unmask")
        .count();
    assert_eq!(unmasks, 1, "the one unmask shown is the one recorded");
    // the refused trace stored nothing: its contacts are still new to whoever sees them first
    let r = trace().await;
    assert_eq!(r.status(), 200);
    let v = body(r).await;
    let contacts = v["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1, "{v}");
    assert_eq!(contacts[0]["new"], true, "{v}");
}

/// A server whose public address is https sends its session cookie with `Secure` by itself;
/// one on plain http does not unless asked.
#[tokio::test(flavor = "multi_thread")]
async fn session_cookies_are_secure_behind_an_https_address() {
    use epigrid_web::secure_cookies;
    assert!(secure_cookies(false, Some("https://epigrid.example.org")));
    assert!(secure_cookies(false, Some("HTTPS://epigrid.example.org")));
    assert!(!secure_cookies(false, Some("http://10.0.0.5:8080")));
    assert!(!secure_cookies(false, None));
    assert!(secure_cookies(true, None));
    for (base, secure) in [
        ("https://epigrid.example.org", true),
        ("http://a.example", false),
    ] {
        let (store, dir) = sqlite();
        let cfg = epigrid_web::WebConfig {
            base_url: Some(base.into()),
            secure_cookies: secure_cookies(false, Some(base)),
            ..Default::default()
        };
        let app = TestApp::start_configured(store, dir, cfg).await;
        user(app.store.as_ref(), "mgr", Role::Manager, "150802").await;
        let login = app
            .client
            .post(format!("{}/login", app.base))
            .form(&[("username", "mgr"), ("password", PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 303);
        let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
        assert_eq!(cookie.contains("; Secure"), secure, "{base}: {cookie}");
        assert!(cookie.contains("HttpOnly"), "{cookie}");
    }
}

/// A browser session is logged out through the API only with its CSRF token (another page
/// of the same site cannot end it).
#[tokio::test(flavor = "multi_thread")]
async fn a_cookie_logout_through_the_api_needs_the_csrf_token() {
    let app = TestApp::start().await;
    let cookie = app.cookie("sess", Role::Manager, "150802").await;
    let csrf = input_value(&app.page("/", &cookie).await, "csrf");
    let logout = |token: Option<String>| {
        let mut req = app
            .client
            .post(format!("{}/api/v1/auth/logout", app.base))
            .header("cookie", &cookie);
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    let me = || {
        app.client
            .get(format!("{}/api/v1/me", app.base))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(logout(None).await.unwrap().status(), 403);
    assert_eq!(logout(Some("forged".into())).await.unwrap().status(), 403);
    assert_eq!(me().await.unwrap().status(), 200, "still logged in");
    assert_eq!(logout(Some(csrf)).await.unwrap().status(), 204);
    assert_eq!(me().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_tokens_logout_and_lockout() {
    let app = TestApp::start().await;
    let tok = app.token("mgr", Role::Manager, "150802").await;
    assert_eq!(
        body(app.get("/api/v1/me", Some(&tok)).await).await["role"],
        "manager"
    );
    let r = app
        .post_json(
            "/api/v1/auth/token",
            &json!({"username": "mgr", "password": "wrong"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        body(r).await["errors"][0]["code"],
        "login.failed",
        "says the name or password is wrong, not 'please log in'"
    );
    let r = app
        .post_json("/api/v1/auth/token", &json!({"username": ""}), None)
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(fields(&body(r).await), ["username", "password"]);
    // a password that is not text is said to be so, not missing
    let r = app
        .post_json(
            "/api/v1/auth/token",
            &json!({"username": "admin", "password": 123}),
            None,
        )
        .await;
    assert_eq!(error_codes(r).await, ["password:err.text.format"]);
    let r = app
        .post_json("/api/v1/auth/logout", &json!({}), Some(&tok))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        app.get("/api/v1/me", Some(&tok)).await.status(),
        401,
        "revoked"
    );
    user(app.store.as_ref(), "victim", Role::GridWorker, "150802").await;
    for _ in 0..5 {
        app.post_json(
            "/api/v1/auth/token",
            &json!({"username": "victim", "password": "guess"}),
            None,
        )
        .await;
    }
    let r = app
        .post_json(
            "/api/v1/auth/token",
            &json!({"username": "victim", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(
        r.status(),
        429,
        "locked after five failures, even with the right password"
    );
    assert_eq!(r.headers()["retry-after"], "900");
    // another server on the same database (or this one restarted) knows it from the log
    let twin = TestApp::start_with(app.store.clone(), app.dir.clone()).await;
    let r = twin
        .post_json(
            "/api/v1/auth/token",
            &json!({"username": "victim", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(r.status(), 429, "locked on the twin too");
    // the admins over the account see the attempts on it; a city's admins also those made
    // as nobody at all (with the address the server saw: a client's X-Forwarded-For is not
    // believed unless the server is told it sits behind a proxy)
    app.client
        .post(format!("{}/api/v1/auth/token", app.base))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({"username": "no-such-user", "password": "guess"}))
        .send()
        .await
        .unwrap();
    let failed = |v: Value, subject: &str| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "login_failed" && e["subject"].as_str() == Some(subject))
            .count()
    };
    let county_admin = app.token("linhe_admin", Role::Admin, "150802").await;
    let city_admin = app.token("city_admin", Role::Admin, "150800").await;
    let county = app.get_json("/api/v1/audit", &county_admin).await;
    let city = app.get_json("/api/v1/audit", &city_admin).await;
    let victim = app.store.user_by_username("victim").await.unwrap().unwrap();
    let on_victim = format!("user:{}", victim.id);
    assert!(failed(county.clone(), &on_victim) >= 5, "{county}");
    assert_eq!(
        failed(county, "user"),
        0,
        "nobody's attempts are not a county's"
    );
    assert_eq!(failed(city.clone(), "user"), 1);
    // what was typed as a name may be a password: only its first character is kept
    let typed: Vec<(&str, &str)> = city["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "login_failed" && e["subject"] == "user")
        .filter_map(|e| e["username"].as_str().zip(e["ip"].as_str()))
        .collect();
    assert_eq!(
        typed,
        vec![("n***", "127.0.0.1")],
        "with where it came from"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sites_are_created_deactivated_and_rotated_through_the_api() {
    let app = TestApp::start().await;
    let mgr = app.token("mgr", Role::Manager, "150802").await;
    let gw = app.token("gw", Role::GridWorker, "150802").await;
    let new = json!({"kind": "venue", "name": "临河火车站", "area_code": "150802001"});
    assert_eq!(
        app.post_json("/api/v1/sites", &new, Some(&gw))
            .await
            .status(),
        403
    );
    let r = app
        .post_json(
            "/api/v1/sites",
            &json!({"kind": "shop", "name": "", "area_code": "150821"}),
            Some(&mgr),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(fields(&body(r).await), ["kind", "name", "area_code"]);
    // a gate is a compound's, at a community or below; a code given as a number is named so
    let gate = json!({"kind": "gate", "name": "大门", "area_code": "150802"});
    let r = app.post_json("/api/v1/sites", &gate, Some(&mgr)).await;
    assert_eq!(error_codes(r).await, ["area_code:err.site.gate_level"]);
    let numeric = json!({"kind": "gate", "name": "大门", "area_code": 150802001001u64});
    let r = app.post_json("/api/v1/sites", &numeric, Some(&mgr)).await;
    assert_eq!(error_codes(r).await, ["area_code:err.text.format"]);
    let mut later = new.clone();
    later["active"] = json!("no");
    let r = app.post_json("/api/v1/sites", &later, Some(&mgr)).await;
    assert_eq!(error_codes(r).await, ["active:err.bool.format"]);
    later["active"] = json!(false);
    let r = app.post_json("/api/v1/sites", &later, Some(&mgr)).await;
    assert_eq!(
        body(r).await["active"],
        false,
        "a site made ready before it opens"
    );
    let r = app.post_json("/api/v1/sites", &new, Some(&mgr)).await;
    assert_eq!(r.status(), 201);
    let s = body(r).await;
    assert_eq!(s["kind"], "venue");
    let token = s["token"].as_str().unwrap().to_string();
    assert!(token.len() >= 32, "128-bit token");
    assert!(s["url"].as_str().unwrap().ends_with(&format!("/s/{token}")));
    let id = s["id"].as_str().unwrap();
    let svg = app
        .get(&format!("/api/v1/sites/{id}/qr.svg"), Some(&mgr))
        .await;
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    // a download named for its site, so twenty posters' codes can be told apart
    let named = svg.headers()["content-disposition"].to_str().unwrap();
    assert!(
        named.contains("filename=\"qr-venue-150802001-")
            && named.ends_with(&format!("{}.svg\"", &id.replace('-', "")[24..])),
        "{named}"
    );
    let png = app
        .get(&format!("/api/v1/sites/{id}/qr.png"), Some(&mgr))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    // what cannot change is refused, not silently ignored, and nothing changes
    let r = app
        .patch_json(
            &format!("/api/v1/sites/{id}"),
            &json!({"active": false, "kind": "gate", "rotate_token": "yes"}),
            Some(&mgr),
        )
        .await;
    assert_eq!(r.status(), 422);
    let mut bad = fields(&body(r).await);
    bad.sort();
    assert_eq!(bad, vec!["kind", "rotate_token"]);
    assert_eq!(
        app.client
            .get(format!("{}/s/{token}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "still active"
    );
    // someone checks in before the site's link is changed
    let visit = json!({"name": "张三", "id_number": cn_id("150802", "19800101", 77),
                       "phone": "13900000077", "symptoms": []});
    let r = app
        .post_json(
            &format!("/api/v1/sites/{token}/registrations"),
            &visit,
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
    let visit_id = body(r).await["id"].as_str().unwrap().to_string();
    let r = app
        .patch_json(
            &format!("/api/v1/sites/{id}"),
            &json!({"active": false}),
            Some(&mgr),
        )
        .await;
    assert_eq!(r.status(), 200);
    let page = app
        .client
        .get(format!("{}/s/{token}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 410);
    assert!(
        page.text().await.unwrap().contains("已停用"),
        "the form says the site is deactivated"
    );
    let r = app
        .post_json(
            &format!("/api/v1/sites/{token}/registrations"),
            &json!({"name": "张三"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 410);

    let r = app
        .patch_json(
            &format!("/api/v1/sites/{id}"),
            &json!({"active": true, "rotate_token": true}),
            Some(&mgr),
        )
        .await;
    let new_token = body(r).await["token"].as_str().unwrap().to_string();
    assert_ne!(new_token, token);
    assert_eq!(
        app.client
            .get(format!("{}/s/{token}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "old QR dead"
    );
    // but the visitor's own confirmation and check-out, reached through the old link, work
    let mine = format!("{}/s/{token}/r/{visit_id}", app.base);
    assert_eq!(app.client.get(&mine).send().await.unwrap().status(), 200);
    let out = app.client.post(format!("{mine}/out")).send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(
        out.headers()["location"].to_str().unwrap(),
        format!("/s/{new_token}/r/{visit_id}"),
        "back to the confirmation, under the new link"
    );
    let checked: Value = app
        .get_json(&format!("/api/v1/registrations/{visit_id}"), &mgr)
        .await;
    assert!(checked["left_at"].is_string(), "{checked}");
    assert_eq!(
        app.client
            .get(format!("{}/s/{new_token}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_sent_back_names_its_errors_where_they_were_made() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802");
    let url = format!("{}/s/{}", app.base, site.token);
    let form = [
        ("name", "王小明"),
        ("id_type", "cn_id"),
        ("id_number", "11010519491231002X"),
        ("phone", "123"),
        ("companions", "2"),
        ("companion_name_1", ""),
        ("companion_id_1", ""),
        ("companion_name_2", "李四"),
        ("companion_id_2", "12345"),
        // what the script's picker chose: a county in Hubei
        ("origin", "420102"),
        ("origin_province", "42"),
        ("destination", "临河"),
        ("temperature", "36.6"),
    ];
    let r = app.client.post(&url).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    // the companion's error is on the row it was typed in, not on the empty first row
    assert!(html.contains("id=\"e_companion_id_2\""), "{html}");
    assert!(!html.contains("id=\"e_companion_id_1\""), "{html}");
    // the summary names each field and leads to it; the field says it is wrong
    // (to the input itself, and to a group's first choice, so that focus lands on it)
    assert!(html.contains("href=\"#phone\""), "{html}");
    assert!(html.contains("name=\"phone\" id=\"phone\""), "{html}");
    assert!(html.contains("href=\"#high_risk_travel\""), "{html}");
    // a choice left empty is asked to be chosen, once
    assert!(html.contains("请选择一项"), "{html}");
    assert!(!html.contains("此项为必填项"), "{html}");
    assert!(html.contains("name=\"high_risk_travel\" id=\"high_risk_travel\""));
    assert!(
        html.contains("<title>请修改填写内容 · "),
        "the title says so"
    );
    assert!(html.contains("手机号码："), "a Chinese colon");
    assert!(html.contains("aria-invalid=\"true\" aria-describedby=\"e_phone\""));
    // a hint is read with its field (after the error, when there is one), and a required
    // choice says so
    assert!(
        html.contains("aria-describedby=\"e_temperature h_temperature\"")
            || html.contains("aria-describedby=\"h_temperature\""),
        "{html}"
    );
    assert!(html.contains("<p class=\"hint\" id=\"h_temperature\">"));
    assert!(
        html.contains(
            "role=\"radiogroup\" aria-labelledby=\"l_high_risk_travel\" aria-required=\"true\""
        ),
        "{html}"
    );
    // the county chosen is sent back, not lost to the province
    assert!(
        html.contains("name=\"origin\" id=\"origin\" value=\"420102\""),
        "{html}"
    );
    // a self-registration is offered remember-me (staff mode is not)
    assert!(html.contains("id=\"remember\""));
}

/// Without the script, an origin beyond the mainland's divisions (Taiwan, Hong Kong, Macao,
/// abroad) is its region, whatever place is typed with it.
#[tokio::test(flavor = "multi_thread")]
async fn an_origin_abroad_is_taken_without_javascript() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802");
    let url = format!("{}/s/{}", app.base, site.token);
    for (i, (region, place)) in [("99", "Ulaanbaatar"), ("81", "九龙"), ("71", "")]
        .iter()
        .enumerate()
    {
        let id = cn_id("150802", "19900101", 70 + i as u32);
        let form = [
            ("name", "王小明"),
            ("id_type", "cn_id"),
            ("id_number", id.as_str()),
            ("phone", "13912345678"),
            ("origin_province", region),
            ("origin_text", place),
            ("destination", "临河"),
            ("temperature", "36.6"),
            ("symptoms", "none"),
            ("high_risk_travel", "false"),
        ];
        let r = app.client.post(&url).form(&form).send().await.unwrap();
        assert_eq!(r.status(), 303, "{region} {place}");
    }
    let mut origins: Vec<String> = app
        .stored_registrations(10)
        .await
        .iter()
        .filter_map(|r| r.fields.origin_code.clone())
        .collect();
    origins.sort();
    assert_eq!(origins, ["710000", "810000", "990000"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_html_form_keeps_input_on_errors_and_confirms_with_a_code() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802");
    let url = format!("{}/s/{}", app.base, site.token);
    let form = [
        ("name", "王小明"),
        ("id_type", "cn_id"),
        ("id_number", "110105194912310021"),
        ("phone", "13912345678"),
        ("origin_province", "42"),
        ("origin_text", "武汉"),
        ("destination", "临河"),
        ("temperature", "36.6"),
        ("symptoms", "cough"),
        ("high_risk_travel", "false"),
    ];
    let r = app.client.post(&url).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("校验码"), "the ID error is shown");
    assert!(
        html.contains("value=\"王小明\"") && html.contains("value=\"cough\" checked"),
        "input kept"
    );
    let mut ok = form;
    ok[2] = ("id_number", "11010519491231002X");
    // a field given twice is refused there, not read as its last value
    let mut twice = ok.to_vec();
    twice.push(("temperature", "40"));
    let r = app.client.post(&url).form(&twice).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("该字段重复出现，请只填写一次"), "{html}");
    assert!(
        app.stored_registrations(10).await.is_empty(),
        "nothing stored"
    );
    let r = app.client.post(&url).form(&ok).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let page = app
        .client
        .get(format!("{}{location}", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let regs = app.stored_registrations(10).await;
    assert_eq!(regs.len(), 1);
    assert_eq!(
        regs[0].fields.origin_code.as_deref(),
        Some("420100"),
        "武汉 in 湖北 resolved without JavaScript"
    );
    assert!(
        page.contains(&regs[0].verification_code),
        "the code is on the confirmation"
    );
    assert!(
        page.contains("王*明") && !page.contains("王小明"),
        "the name is masked"
    );
    assert!(
        page.contains("animation"),
        "a moving band marks a live screen"
    );
    // staff see at a glance what needs them: here a cough, at a normal temperature
    assert!(
        page.contains("有症状：咳嗽") && page.contains("请听从工作人员安排"),
        "{page}"
    );
    assert!(!page.contains("37.3") && !page.contains("高风险地区"));
    assert!(
        page.contains("data-tz=\"480\""),
        "the clock keeps the site's time"
    );
    // a high temperature and a high-risk area, said as such
    let mut hot = ok;
    hot[7] = ("temperature", "38.6");
    hot[8] = ("symptoms", "none");
    hot[9] = ("high_risk_travel", "true");
    let r = app.client.post(&url).form(&hot).send().await.unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let page = app.public_page(&location).await;
    assert!(
        page.contains("体温 38.6 ℃") && page.contains("14 天内到过高风险地区"),
        "{page}"
    );
    assert!(!page.contains("有症状"));
    // a traveller from Hong Kong (or abroad) names only that
    let mut hk = ok;
    hk[1] = ("id_type", "passport");
    hk[2] = ("id_number", "K12345678");
    hk[4] = ("origin_province", "81");
    hk[5] = ("origin_text", "");
    let r = app.client.post(&url).form(&hk).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let regs = app.stored_registrations(10).await;
    assert_eq!(regs[0].fields.origin_code.as_deref(), Some("810000"));
    let form_page = app.public_page(&format!("/s/{}", site.token)).await;
    assert!(form_page.contains("香港特别行政区") && form_page.contains("境外"));
    // ambiguous or unknown places are field errors
    let mut amb = ok;
    amb[5] = ("origin_text", "火星");
    let r = app.client.post(&url).form(&amb).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("找不到这个地名"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traveller_who_reads_english_names_their_origin_in_pinyin() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802");
    // the picker's cities and counties carry their English names
    let cities = app.public_page("/api/v1/divisions?parent=42").await;
    let cities: Value = serde_json::from_str(&cities).unwrap();
    assert!(
        cities["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["code"] == "4201" && c["name"] == "武汉市" && c["name_en"] == "Wuhan"),
        "{cities}"
    );
    let page = app.public_page(&format!("/s/{}?lang=en", site.token)).await;
    assert!(page.contains("Hubei 湖北省"), "provinces in English");
    // without JavaScript: a province, then a place typed in pinyin
    let url = format!("{}/s/{}?lang=en", app.base, site.token);
    let form = |place: &'static str| {
        vec![
            ("name", "Anna Smith"),
            ("id_type", "passport"),
            ("id_number", "E12345678"),
            ("phone", "+4915112345678"),
            ("origin_province", "42"),
            ("origin_text", place),
            ("destination", "Linhe"),
            ("temperature", "36.6"),
            ("symptoms", "none"),
            ("high_risk_travel", "true"),
        ]
    };
    let send = |place: &'static str| {
        let (app, url, form) = (&app, &url, form(place));
        async move { app.post_form(url, &form).await }
    };
    let r = send("Mars").await;
    assert_eq!(r.status(), 422);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("No place of that name in the chosen province"));
    let r = send("Jiangxia, Wuhan").await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let regs = app.stored_registrations(10).await;
    assert_eq!(regs.len(), 1, "the unknown place stored nothing");
    assert_eq!(regs[0].fields.origin_code.as_deref(), Some("420115"));
    // staff reading in English see the place in English, in Chinese in Chinese
    let cookie = app.cookie("reader", Role::Manager, "150802").await;
    let path = format!("/registrations/{}", regs[0].id);
    let en = app.page(&format!("{path}?lang=en"), &cookie).await;
    assert!(en.contains("Jiangxia District, Wuhan, Hubei"), "{en}");
    let zh = app.page(&format!("{path}?lang=zh-CN"), &cookie).await;
    assert!(zh.contains("湖北省 武汉市 江夏区"), "{zh}");
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_register_a_person_without_a_phone_through_their_session() {
    let app = TestApp::start().await;
    let cookie = app.cookie("keeper", Role::SiteStaff, "150802").await;
    let site = app.site(SiteKind::Checkpoint, "150802");
    let form_path = format!("/s/{}", site.token);
    let url = format!("{}{form_path}", app.base);
    let page = app
        .page(&format!("/s/{}?staff=1", site.token), &cookie)
        .await;
    assert!(!page.contains("记住我"), "no remember-me in staff mode");
    let csrf = input_value(&page, "csrf");
    let form = vec![
        ("staff_entry", "1"),
        ("name", "老人甲"),
        ("id_number", "11010519491231002X"),
        ("origin", "150802"),
        ("destination", "临河"),
        ("temperature", "36.4"),
        ("symptoms", "none"),
        ("high_risk_travel", "false"),
    ];
    let mut forged = form.clone();
    forged.push(("csrf", "forged"));
    let r = app.post_page(&form_path, &cookie, &forged).await;
    assert_eq!(r.status(), 403, "CSRF token required");
    let mut good = form.clone();
    good.push(("csrf", csrf.as_str()));
    let r = app.post_page(&form_path, &cookie, &good).await;
    assert_eq!(r.status(), 303);
    // the confirmation is the staff member's: not "show this to staff"
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let confirm = app.page(&location, &cookie).await;
    assert!(confirm.contains("已代为登记") && !confirm.contains("请向工作人员出示"));
    let regs = app.stored_registrations(10).await;
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].channel, epigrid_core::model::Channel::Staff);
    assert!(regs[0].by_user.is_some() && regs[0].phone_masked.is_none());
    // without the staff session the same entry is not taken as the person's own: the form
    // comes back as typed, saying the login has ended, and nothing is stored
    let r = app.client.post(&url).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let page = r.text().await.unwrap();
    assert!(page.contains("登录已过期"), "{page}");
    assert!(!page.contains("name=\"staff_entry\""));
    let count = app.store.registration_count().await.unwrap();
    assert_eq!(count, 1, "nothing more stored");
    // and a plain self-registration without a phone still needs one
    let plain: Vec<(&str, &str)> = form
        .iter()
        .copied()
        .filter(|(k, _)| *k != "staff_entry" && *k != "csrf")
        .collect();
    let r = app.client.post(&url).form(&plain).send().await.unwrap();
    assert_eq!(r.status(), 422);
}

/// Registers `body` at `site`; how its verification code reads in a feed event's JSON.
async fn registered_code(app: &TestApp, site: &epigrid_core::model::Site, body: &Value) -> String {
    let r = self::body(app.register(site, body).await).await;
    format!(
        "\"verification_code\":\"{}\"",
        r["verification_code"].as_str().unwrap()
    )
}

/// `GET /api/v1/feed` as `token`, resumed after `last_event_id` when given (as a browser's
/// `EventSource` reconnects): the open stream.
/// A feed on PostgreSQL reads again far enough below the highest number it has seen to find
/// another process's batch that took its numbers first and committed last (waiting on a
/// rollup row the later batch held): at least four of the largest batches.
#[test]
fn the_feed_looks_back_past_several_postgres_batches() {
    assert!(epigrid_web::FEED_PG_LOOKBACK >= 4 * epigrid_store_postgres::MAX_BATCH as i64);
}

async fn open_feed(app: &TestApp, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut rq = app
        .client
        .get(format!("{}/api/v1/feed", app.base))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        rq = rq.header("last-event-id", id);
    }
    rq.send().await.unwrap()
}

/// Reads a feed's events until `marker` has come, for at most twenty seconds (bounded: the
/// feed must deliver within the wait, or the test fails; not a speed test).
async fn read_feed_until(feed: &mut reqwest::Response, marker: &str) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut got = String::new();
    while !got.contains(marker) {
        let chunk = tokio::time::timeout_at(deadline, feed.chunk())
            .await
            .expect("feed delivered in time")
            .unwrap()
            .expect("stream open");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_feed_streams_new_registrations_in_scope() {
    let app = TestApp::start().await;
    let tok = app.token("watcher", Role::SiteStaff, "150802").await;
    let mut feed = open_feed(&app, &tok, None).await;
    assert_eq!(feed.status(), 200);
    assert!(feed.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let other = app.site(SiteKind::Checkpoint, "150821").clone();
    let mine = app.site(SiteKind::Checkpoint, "150802").clone();
    app.register(
        &other,
        &checkpoint_body(&cn_id("150821", "19900101", 8), "外县人", "13900000008"),
    )
    .await;
    let mine_reg = body(
        app.register(
            &mine,
            &checkpoint_body(&cn_id("150802", "19900101", 9), "本县人", "13900000009"),
        )
        .await,
    )
    .await;
    let code = mine_reg["verification_code"].as_str().unwrap().to_string();
    let got = read_feed_until(&mut feed, &code).await;
    assert!(got.contains("event: registration"));
    assert!(
        !got.contains("外县人") && !got.contains("13900000008") && !got.contains("150821"),
        "nothing out of scope"
    );
    // a phone that reconnects says which event it had last, and gets only what came after
    let last = got
        .split("\n\n")
        .find(|ev| ev.contains(&code))
        .and_then(|ev| ev.lines().find_map(|l| l.strip_prefix("id:")))
        .map(|id| id.trim().to_string())
        .expect("events carry their sequence number");
    drop(feed);
    let later_code = registered_code(
        &app,
        &mine,
        &checkpoint_body(&cn_id("150802", "19900101", 10), "后来人", "13900000010"),
    )
    .await;
    let mut feed = open_feed(&app, &tok, Some(&last)).await;
    let resumed = read_feed_until(&mut feed, &later_code).await;
    assert!(
        !resumed.contains(&format!("\"verification_code\":\"{code}\"")),
        "what the phone had is not sent again: {resumed}"
    );
    // a last event ahead of everything stored (a database restored since): a new feed's
    // start, and what comes next, not silence
    drop(feed);
    let mut feed = open_feed(&app, &tok, Some("999999")).await;
    let newest = registered_code(
        &app,
        &mine,
        &checkpoint_body(&cn_id("150802", "19900101", 11), "更后来", "13900000011"),
    )
    .await;
    let fresh = read_feed_until(&mut feed, &newest).await;
    assert!(
        fresh.contains(&later_code),
        "the latest are sent again: {fresh}"
    );
    assert!(fresh.contains("\"attention\":false"), "{fresh}");
    // a cough is flagged in the field view as on the confirmation, a fever said once
    let mut body = checkpoint_body(&cn_id("150802", "19900101", 12), "咳嗽者", "13900000012");
    body["symptoms"] = json!(["cough", "fever"]);
    body["temperature"] = json!(38.2);
    let coughing = registered_code(&app, &mine, &body).await;
    let got = read_feed_until(&mut feed, &coughing).await;
    let event = got.split("\n\n").find(|ev| ev.contains(&coughing)).unwrap();
    assert!(event.contains("\"attention\":true"), "{event}");
    assert!(
        event.contains("\"symptoms\":\"咳嗽\""),
        "the fever is the row's flag, not a symptom again: {event}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_endpoints_describe_and_measure_the_service() {
    let app = TestApp::start().await;
    assert_eq!(app.get("/healthz", None).await.text().await.unwrap(), "ok");
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    let site = app.site(SiteKind::Venue, "150802");
    app.register(site, &json!({"name": "张三"})).await;
    let m = app.get("/metrics", None).await.text().await.unwrap();
    assert!(m.contains("# TYPE epigrid_http_requests_total counter"));
    assert!(
        m.contains("route=\"/api/v1/sites/{site}/registrations\",status=\"4xx\""),
        "{m}"
    );
    assert!(!m.contains(&site.token), "no tokens in metrics");
    // with a metrics token, only its bearer reads them
    let (store, dir) = sqlite();
    let cfg = epigrid_web::WebConfig {
        metrics_token: Some("scrape-0123456789abcdef".into()),
        ..Default::default()
    };
    let guarded = TestApp::start_configured(store, dir, cfg).await;
    for token in [None, Some("scrape-0123456789abcdeF"), Some("scrape")] {
        let r = guarded.get("/metrics", token).await;
        assert_eq!(r.status(), 401, "{token:?}");
        assert!(!r.text().await.unwrap().contains("epigrid_"), "{token:?}");
    }
    let r = guarded
        .get("/metrics", Some("scrape-0123456789abcdef"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("# TYPE epigrid_registrations_total counter"));
    let spec = body(app.get("/api/v1/openapi.json", None).await).await;
    let paths = spec["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/token",
        "/api/v1/auth/logout",
        "/api/v1/me",
        "/api/v1/areas",
        "/api/v1/divisions",
        "/api/v1/sites",
        "/api/v1/sites/{id}",
        "/api/v1/sites/{id}/qr.svg",
        "/api/v1/sites/{id}/qr.png",
        "/api/v1/sites/{token}/registrations",
        "/api/v1/registrations",
        "/api/v1/registrations/{id}",
        "/api/v1/registrations/{id}/unmask",
        "/api/v1/registrations/{id}/checkout",
        "/api/v1/feed",
        "/api/v1/audit",
        "/api/v1/users",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    assert!(paths["/api/v1/areas"]["get"]["responses"]["404"].is_object());
    assert!(paths["/api/v1/users/{id}"]["patch"]["responses"]["409"].is_object());
    assert!(paths["/api/v1/users/{id}"]["patch"]["summary"].is_string());
    // a method a route does not take: said in JSON, with what it does take
    let r = app
        .get(&format!("/api/v1/sites/{}/registrations", site.token), None)
        .await;
    assert_eq!(r.status(), 405);
    assert!(r.headers()["allow"].to_str().unwrap().contains("POST"));
    assert_eq!(body(r).await["errors"][0]["code"], "err.method");
    // every operation has a name of its own
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().expect("operationId"))
        .collect();
    let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    assert!(ids.contains(&"get_registrations_id"), "{ids:?}");
    // and every API route the router declares, whatever its parameters are called
    let shape = |p: &str| {
        p.split('/')
            .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    };
    let documented: std::collections::HashSet<String> = paths.keys().map(|k| shape(k)).collect();
    let sources = [
        include_str!("../../../epigrid-web/src/lib.rs"),
        include_str!("../../../epigrid-web/src/api.rs"),
        include_str!("../../../epigrid-web/src/persons.rs"),
        include_str!("../../../epigrid-web/src/contacts.rs"),
        include_str!("../../../epigrid-web/src/notices.rs"),
        include_str!("../../../epigrid-web/src/chains.rs"),
        include_str!("../../../epigrid-web/src/lists.rs"),
        include_str!("../../../epigrid-web/src/public.rs"),
        include_str!("../../../epigrid-web/src/staff.rs"),
    ];
    let mut routes = 0;
    for src in sources {
        for part in src.split(".route(").skip(1) {
            let Some(path) = part
                .trim_start()
                .strip_prefix('"')
                .and_then(|p| p.split('"').next())
            else {
                continue;
            };
            if path.starts_with("/api/") {
                routes += 1;
                assert!(documented.contains(&shape(path)), "openapi lacks {path}");
            }
        }
    }
    assert!(routes > 30, "found the router's API routes ({routes})");
    let div = body(app.get("/api/v1/divisions?parent=42", None).await).await;
    assert!(div["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["name"] == "武汉市"));
    // no such parent is said so, not an empty list
    let r = app.get("/api/v1/divisions?parent=abc", None).await;
    assert_eq!(error_codes(r).await, ["parent:err.division.parent"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_pages_need_a_login_and_show_the_breadcrumb() {
    let app = TestApp::start().await;
    let r = app
        .client
        .get(format!("{}/registrations", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = app.cookie("pages", Role::Admin, "150802").await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let reg = body(
        app.register(
            &site,
            &checkpoint_body(&cn_id("150802", "19900101", 3), "张三", "13900000003"),
        )
        .await,
    )
    .await;
    for path in [
        "/",
        "/sites",
        "/registrations",
        "/feed",
        "/audit",
        &format!("/sites/{}", site.id),
        &format!("/sites/{}/poster", site.id),
        &format!("/registrations/{}", reg["id"].as_str().unwrap()),
    ] {
        let html = app.page(path, &cookie).await;
        assert!(
            html.contains("巴彦淖尔市") || path.contains("poster"),
            "{path}: breadcrumb"
        );
        assert!(!html.contains("13900000003"), "{path}: phone masked");
    }
    // the poster: the page's language with the other one below it, never the same twice
    let poster = |lang: &'static str| {
        let app = &app;
        let cookie = cookie.clone();
        let path = format!("/sites/{}/poster?lang={lang}", site.id);
        async move { app.page(&path, &cookie).await }
    };
    let zh = poster("zh-CN").await;
    assert!(
        zh.contains("<h1>扫码登记</h1>") && zh.contains(">Scan to register</p>"),
        "{zh}"
    );
    let en = poster("en").await;
    assert!(
        en.contains("<h1>Scan to register</h1>") && en.contains(">扫码登记</p>"),
        "{en}"
    );
    assert!(
        !zh.contains("停用"),
        "an active site's poster has no warning"
    );
    let mut off = site.clone();
    off.active = false;
    app.store.update_site(&site, &off).await.unwrap();
    assert!(poster("zh-CN").await.contains("该登记点已停用"));
    let wrong = app
        .client
        .get(format!(
            "{}/sites/{}",
            app.base,
            app.site(SiteKind::Gate, "150821").id
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404, "another county's site");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_refused_before_any_handler_get_localised_errors_too() {
    let app = TestApp::start().await;
    let admin = app.token("admin", Role::Admin, "150800").await;
    // a path segment that is not UTF-8: JSON for the API, in the caller's language
    let r = app
        .client
        .get(format!("{}/api/v1/persons/%ED%A0%80", app.base))
        .bearer_auth(&admin)
        .header("accept-language", "en")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = body(r).await;
    assert_eq!(v["errors"][0]["code"], "err.request.bad", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{v}"
    );
    // and a page for a public form, in Chinese by default
    let r = app
        .client
        .get(format!("{}/s/%ED%A0%80", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("无法识别该请求"));
    // a body over the limit (1 MiB) is 413, said as such; only a little over, so that the
    // client has written all of it before the server answers and closes
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(1024 * 1024 + 4096));
    let r = app
        .client
        .post(format!(
            "{}/api/v1/sites/{}/registrations",
            app.base, site.token
        ))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(body(r).await["errors"][0]["code"], "err.body.too_large");
    let r = app
        .client
        .post(format!("{}/s/{}", app.base, site.token))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("请求内容过大"));
}

/// A registration body sent in chunks (no length declared) is read whole, however it is cut;
/// one that runs past the limit is 413.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_registration_is_read_whole_and_one_past_the_limit_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let addr = app.base.trim_start_matches("http://").to_string();
    let post = |chunks: Vec<Vec<u8>>| {
        let (addr, token) = (addr.clone(), site.token.clone());
        async move {
            let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /api/v1/sites/{token}/registrations HTTP/1.1\r\nHost: {addr}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n"
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            // a server that has answered (413) may close before the rest is written
            for c in chunks {
                let mut framed = format!("{:x}\r\n", c.len()).into_bytes();
                framed.extend_from_slice(&c);
                framed.extend_from_slice(b"\r\n");
                if conn.write_all(&framed).await.is_err() || conn.flush().await.is_err() {
                    break;
                }
            }
            let _ = conn.write_all(b"0\r\n\r\n").await;
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got).await;
            String::from_utf8_lossy(&got).into_owned()
        }
    };
    let json = checkpoint_body(&cn_id("150802", "19850312", 41), "李四", "13912345678").to_string();
    // cut inside a multi-byte character and inside a key
    let bytes = json.as_bytes();
    let in_char = json.find('李').expect("name") + 1;
    let in_key = json.find("id_number").expect("key") + 3;
    let mut cuts = [0, in_char, in_key, bytes.len()];
    cuts.sort_unstable();
    let chunks: Vec<Vec<u8>> = cuts
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect();
    let answer = post(chunks).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let receipt: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    let id: uuid::Uuid = receipt["id"].as_str().unwrap().parse().unwrap();
    let stored = app
        .store
        .registration(id, &epigrid_core::area::Scope::all())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.phone_masked.as_deref(), Some("139****5678"));
    // past the limit in chunks of 64 KiB, with no length to refuse it by at the start
    let big: Vec<Vec<u8>> = std::iter::once(br#"{"name": ""#.to_vec())
        .chain((0..16).map(|_| vec![b'x'; 64 * 1024]))
        .collect();
    let answer = post(big).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("err.body.too_large"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_pages_answer_errors_with_a_page() {
    let app = TestApp::start().await;
    let cookie = app.cookie("pagegw", Role::GridWorker, "150821").await;
    for path in [
        format!("/persons/{}", uuid::Uuid::now_v7()),
        format!("/registrations/{}", uuid::Uuid::now_v7()),
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let text = r.text().await.unwrap();
        assert!(text.contains("未找到"), "{path}");
        assert!(
            text.contains("<a href=\"/\">返回概览</a>"),
            "{path}: a way back: {text}"
        );
    }
    // a public form's error has no staff overview to go back to
    let r = app.get(&format!("/s/{}", "0".repeat(32)), None).await;
    assert_eq!(r.status(), 404);
    assert!(!r.text().await.unwrap().contains("返回概览"));
    // the API keeps answering JSON
    let r = app
        .client
        .get(format!(
            "{}/api/v1/persons/{}",
            app.base,
            uuid::Uuid::now_v7()
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
}

/// Site staff see their sites' registrations, not people's records; an analyst sees aggregates
/// only, on pages as in the API.
#[tokio::test(flavor = "multi_thread")]
async fn site_staff_and_analysts_read_no_one_s_record() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let stored = app
        .stored(
            app.register(
                &site,
                &checkpoint_body(&cn_id("150802", "19900101", 81), "张三", "13900000081"),
            )
            .await,
        )
        .await;
    let person = stored["person_id"].as_str().unwrap().to_string();
    let epi = app.token("epi_roles", Role::Epidemiologist, "150802").await;
    let keeper = app.token("keeper_roles", Role::SiteStaff, "150802").await;
    let analyst = app.token("analyst_roles", Role::Analyst, "150802").await;
    let people_routes = [
        format!("/api/v1/persons/{person}"),
        "/api/v1/persons?q=张三".to_string(),
        "/api/v1/review".to_string(),
        "/api/v1/observations".to_string(),
        "/api/v1/chains".to_string(),
    ];
    for path in &people_routes {
        assert_eq!(app.get(path, Some(&epi)).await.status(), 200, "{path}");
        for who in [&keeper, &analyst] {
            assert_eq!(app.get(path, Some(who)).await.status(), 403, "{path}");
        }
    }
    // site staff still see the registrations themselves
    assert_eq!(
        app.get("/api/v1/registrations", Some(&keeper))
            .await
            .status(),
        200
    );
    // the site page lists recent registrations for site staff, not for an analyst
    let keeper_page = app
        .page(
            &format!("/sites/{}", site.id),
            &app.login_cookie("keeper_roles").await,
        )
        .await;
    assert!(keeper_page.contains("张*"), "site staff see who registered");
    assert!(
        !keeper_page.contains("href=\"/persons\"") && !keeper_page.contains("href=\"/lists\""),
        "no way in to people's records"
    );
    for path in ["/persons", "/observations", "/lists"] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .header("cookie", app.login_cookie("keeper_roles").await)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let analyst_page = app
        .page(
            &format!("/sites/{}", site.id),
            &app.login_cookie("analyst_roles").await,
        )
        .await;
    assert!(analyst_page.contains(&site.name), "the site itself");
    assert!(
        !analyst_page.contains("张*")
            && !analyst_page.contains(
                &stored["verification_code"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string()
            ),
        "an analyst sees no registration rows"
    );
}

/// Login CSRF: a form on another site cannot log the browser into an account; the login page's
/// own form, and clients that are not browsers, can.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_posted_from_another_site_is_refused() {
    let app = TestApp::start().await;
    user(app.store.as_ref(), "login_csrf", Role::GridWorker, "150802").await;
    let host = app.base.trim_start_matches("http://").to_string();
    let login = |headers: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let mut rq = app
                .client
                .post(format!("{}/login", app.base))
                .form(&[("username", "login_csrf"), ("password", PASSWORD)]);
            for (k, v) in headers {
                rq = rq.header(k, v);
            }
            rq.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(login(vec![]).await, 303, "no browser headers");
    assert_eq!(
        login(vec![
            ("origin", format!("http://{host}")),
            ("sec-fetch-site", "same-origin".into())
        ])
        .await,
        303
    );
    assert_eq!(login(vec![("origin", format!("http://{host}"))]).await, 303);
    for site in ["cross-site", "same-site"] {
        assert_eq!(
            login(vec![("sec-fetch-site", site.into())]).await,
            403,
            "{site}"
        );
    }
    assert_eq!(
        login(vec![("origin", "http://evil.example".into())]).await,
        403
    );
}

/// A running app on SQLite, and on PostgreSQL when `EPIGRID_TEST_PG` is set.
async fn apps_on_every_store() -> Vec<(&'static str, TestApp)> {
    let mut apps = vec![("sqlite", TestApp::start().await)];
    if let Some(pg) = postgres().await {
        apps.push((
            "postgres",
            TestApp::start_with(pg, temp_dir("pg-app")).await,
        ));
    }
    apps
}

/// A NUL byte anywhere, or a date no store can hold, is a clear 4xx on both stores (PostgreSQL
/// cannot store either, and answered 500).
#[tokio::test(flavor = "multi_thread")]
async fn nul_bytes_and_far_dates_are_refused_on_every_store() {
    for (name, app) in apps_on_every_store().await {
        let tok = app.token("nul_admin", Role::Admin, "150800").await;
        let site = app.site(SiteKind::Checkpoint, "150802").clone();
        let r = app
            .register(
                &site,
                &checkpoint_body(&cn_id("150802", "19900101", 3), "张三", "13900000003"),
            )
            .await;
        let reg = body(r).await;
        let pid = app
            .get_json(
                &format!("/api/v1/registrations/{}", reg["id"].as_str().unwrap()),
                &tok,
            )
            .await["person_id"]
            .as_str()
            .unwrap()
            .to_string();
        let get = |path: &str| {
            let (app, tok, path) = (&app, tok.clone(), path.to_string());
            async move { app.get(&path, Some(&tok)).await }
        };
        // in the path: nothing has such a name
        for path in ["/api/v1/sites/a%00b/registrations", "/s/a%00b", "/n/a%00b"] {
            let st = app.get(path, None).await.status().as_u16();
            assert_eq!(st, 404, "{name} GET {path}");
        }
        // in a query value: that field is wrong
        for (path, field) in [
            ("/api/v1/persons?q=%00", "q"),
            ("/api/v1/areas?parent=15%0008", "parent"),
            ("/api/v1/registrations?from=2026-01-01&to=2026%00", "to"),
        ] {
            let r = get(path).await;
            assert_eq!(r.status(), 422, "{name} GET {path}");
            assert_eq!(
                fields(&body(r).await),
                vec![field.to_string()],
                "{name} {path}"
            );
        }
        // in JSON: the field holding it
        let r = app
            .post_json(
                "/api/v1/auth/token",
                &json!({"username": "nul_ad\u{0}min", "password": "x"}),
                None,
            )
            .await;
        assert_eq!(r.status(), 422, "{name} login");
        assert_eq!(fields(&body(r).await), vec!["username"], "{name}");
        let r = app
            .post_json(
                "/api/v1/sites",
                &json!({"name": "x", "kind": "gate", "area_code": "1508\u{0}02"}),
                Some(&tok),
            )
            .await;
        assert_eq!(r.status(), 422, "{name} site");
        // dates beyond what anyone registers
        for path in [
            "/api/v1/registrations?from=-9999-01-01",
            "/api/v1/registrations?to=99999-01-01T00:00:00Z",
            "/api/v1/registrations?from=1899-12-31",
        ] {
            let r = get(path).await;
            assert_eq!(r.status(), 422, "{name} GET {path}");
        }
        let r = app
            .post_json(
                &format!("/api/v1/persons/{pid}/lab-results"),
                &json!({"test": "nucleic_acid", "sample_date": "-9999-01-01", "result": "negative"}),
                Some(&tok),
            )
            .await;
        assert_eq!(r.status(), 422, "{name} lab date");
        assert_eq!(fields(&body(r).await), vec!["sample_date"], "{name}");
        let r = app
            .post_json(
                &format!("/api/v1/persons/{pid}/trace"),
                &json!({"from": "-9999-01-01"}),
                Some(&tok),
            )
            .await;
        assert_eq!(r.status(), 422, "{name} trace window");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn query_values_of_the_wrong_kind_are_named_not_ignored() {
    let app = TestApp::start().await;
    let tok = app.token("q_admin", Role::Admin, "150800").await;
    for (path, field, code) in [
        ("/api/v1/registrations?limit=abc", "limit", "err.int.format"),
        ("/api/v1/registrations?limit=0", "limit", "err.int.range"),
        ("/api/v1/areas?parent=abc", "parent", "err.area_code.format"),
        ("/api/v1/audit?limit=-1", "limit", "err.int.range"),
        ("/api/v1/audit?limit=many", "limit", "err.int.format"),
        (
            "/api/v1/registrations?from=1999-12-31",
            "from",
            "err.date.range",
        ),
        (
            "/api/v1/registrations?to=2101-01-01",
            "to",
            "err.date.range",
        ),
        (
            "/api/v1/registrations?to=2101-01-01T00:00:00%2B08:00",
            "to",
            "err.date.range",
        ),
    ] {
        let r = app.get(path, Some(&tok)).await;
        assert_eq!(r.status(), 422, "{path}");
        let v = body(r).await;
        assert_eq!(
            (
                v["errors"][0]["field"].as_str(),
                v["errors"][0]["code"].as_str()
            ),
            (Some(field), Some(code)),
            "{path}: {v}"
        );
    }
    // the bounds themselves are local days anyone may ask for
    for path in [
        "/api/v1/registrations?from=2000-01-01",
        "/api/v1/registrations?to=2100-12-31",
        "/api/v1/registrations?from=2000-01-01T00:00:00%2B08:00",
    ] {
        assert_eq!(app.get(path, Some(&tok)).await.status(), 200, "{path}");
    }
    // a feed of a site nobody has is not an empty feed
    let r = app
        .get(
            &format!("/api/v1/feed?site={}", uuid::Uuid::now_v7()),
            Some(&tok),
        )
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_see_who_travelled_with_a_registrant_masked() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let mut b = checkpoint_body(&cn_id("150802", "19900101", 11), "张三", "13900000011");
    b["companions"] = json!([
        {"name": "李四", "id_type": "cn_id", "id_number": cn_id("150802", "19910101", 12)},
        {"name": "王五"},
    ]);
    let id = app.stored(app.register(&site, &b).await).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let tok = app.token("comp_epi", Role::Epidemiologist, "150802").await;
    let v = app
        .get_json(&format!("/api/v1/registrations/{id}"), &tok)
        .await;
    assert_eq!(
        v["companion_list"],
        json!([{"name": "李*", "document": true}, {"name": "王*", "document": false}]),
        "{v}"
    );
    // nobody outside the area sees them
    let other = app.token("comp_far", Role::Epidemiologist, "150821").await;
    assert_eq!(
        app.get(&format!("/api/v1/registrations/{id}"), Some(&other))
            .await
            .status(),
        404
    );
}

/// A phone opening the feed gets the latest twenty, then only what is new, on both stores
/// (PostgreSQL's look-back for late commits must not send the older ones after them).
#[tokio::test(flavor = "multi_thread")]
async fn a_new_feed_starts_with_the_latest_twenty_then_only_news() {
    for (name, app) in apps_on_every_store().await {
        let tok = app.token("feed_watch", Role::SiteStaff, "150802").await;
        let site = app.site(SiteKind::Checkpoint, "150802").clone();
        for i in 0..25 {
            let b = checkpoint_body(&cn_id("150802", "19900101", 100 + i), "张三", "13900000100");
            assert_eq!(app.register(&site, &b).await.status(), 201);
        }
        let mut feed = open_feed(&app, &tok, None).await;
        let marker = registered_code(
            &app,
            &site,
            &checkpoint_body(&cn_id("150802", "19900101", 200), "李四", "13900000200"),
        )
        .await;
        let got = read_feed_until(&mut feed, &marker).await;
        assert_eq!(
            got.matches("event: registration").count(),
            21,
            "{name}: twenty, then the new one"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_mode_is_offered_only_at_sites_in_the_staff_members_area() {
    let app = TestApp::start().await;
    let cookie = app.cookie("keeper_mode", Role::SiteStaff, "150802").await;
    let mine = app.site(SiteKind::Checkpoint, "150802").clone();
    let other = app.site(SiteKind::Checkpoint, "150821").clone();
    let form = |s: &epigrid_core::model::Site| format!("/s/{}?staff=1", s.token);
    let own = app.page(&form(&mine), &cookie).await;
    assert!(own.contains("name=\"staff_entry\""), "own area: staff mode");
    assert!(!own.contains("id=\"remember\""), "no remember-me for staff");
    assert!(
        own.contains("?staff=1&amp;lang=en"),
        "language links keep staff mode"
    );
    // a language chosen on a staff page sticks for the next one
    let r = app
        .client
        .get(format!("{}/sites?lang=en", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap_or("").starts_with("lang=en")),
        "{:?}",
        r.headers()
    );
    // a staff page's language links keep its filters
    let list = app
        .page(
            &format!("/registrations?site={}&kind=checkpoint", mine.id),
            &cookie,
        )
        .await;
    assert!(
        list.contains(&format!(
            "href=\"?site={}&#38;kind=checkpoint&#38;lang=en\"",
            mine.id
        )),
        "{list}"
    );
    let far = app.page(&form(&other), &cookie).await;
    assert!(
        !far.contains("name=\"staff_entry\""),
        "another area's site: the public form, not a form that ends in a 403"
    );
    assert!(
        far.contains("不能在此点位代他人登记"),
        "and the staff member is told why: {far}"
    );
    assert!(!own.contains("不能在此点位代他人登记"));
    // asked for while signed out: told to sign in, with the way back to staff mode
    let out = app.public_page(&form(&mine)).await;
    assert!(out.contains("工作人员代他人登记须先登录"), "{out}");
    assert!(
        out.contains(&format!("/login?next=/s/{}%3Fstaff%3D1", mine.token)),
        "{out}"
    );
    // the plain public form, without staff mode asked for, says nothing of it
    let plain = app.page(&format!("/s/{}", other.token), &cookie).await;
    assert!(!plain.contains("不能在此点位代他人登记"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_feed_ends_with_its_session() {
    let app = TestApp::start().await;
    let tok = app.token("feed_logout", Role::GridWorker, "150802").await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let mut feed = open_feed(&app, &tok, None).await;
    assert_eq!(feed.status(), 200);
    let r = app
        .post_json("/api/v1/auth/logout", &json!({}), Some(&tok))
        .await;
    assert_eq!(r.status(), 204);
    let after = registered_code(
        &app,
        &site,
        &checkpoint_body(&cn_id("150802", "19900101", 300), "王五", "13900000300"),
    )
    .await;
    // the stream ends (bounded wait) without what came after the logout
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut got = String::new();
    while let Some(chunk) = tokio::time::timeout_at(deadline, feed.chunk())
        .await
        .expect("the feed ended in time")
        .unwrap()
    {
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!got.contains(&after), "{got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_analysts_home_page_hides_small_counts() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let mut b = checkpoint_body(&cn_id("150802", "19900101", 41), "张三", "13900000041");
    b["temperature"] = json!(38.6);
    assert_eq!(app.register(&site, &b).await.status(), 201);
    let analyst = app.cookie("home_analyst", Role::Analyst, "150802").await;
    let analyst = app.page("/", &analyst).await;
    let epi = app.cookie("home_epi", Role::Epidemiologist, "150802").await;
    let epi = app.page("/", &epi).await;
    // one fever registration today: an epidemiologist sees it, an analyst sees "<5"
    assert!(
        analyst.contains("&#60;5") && !analyst.contains("<b>1</b>"),
        "{analyst}"
    );
    assert!(epi.contains("<b>1</b>") && !epi.contains("&#60;5"), "{epi}");
    // and no links to what an analyst may not open
    assert!(!analyst.contains("href=\"/feed\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_add_staff_accounts_from_a_page() {
    let app = TestApp::start().await;
    user(app.store.as_ref(), "page_manager", Role::Manager, "150802").await;
    user(app.store.as_ref(), "page_gw", Role::GridWorker, "150802").await;
    let cookie = app.cookie("page_admin", Role::Admin, "150802").await;
    let page = app.page("/users", &cookie).await;
    assert!(page.contains("page_manager") && page.contains("name=\"password\""));
    let csrf = input_value(&page, "csrf");
    let post = |form: Vec<(&'static str, String)>| {
        let (app, cookie) = (&app, cookie.clone());
        async move { app.post_page("/users", &cookie, &form).await }
    };
    // a short password: the form comes back with the name kept and the password not
    let r = post(vec![
        ("csrf", csrf.clone()),
        ("username", "new_keeper".into()),
        ("password", "short-pw".into()),
        ("role", "site_staff".into()),
        ("area_code", "150802001".into()),
    ])
    .await;
    assert_eq!(r.status(), 422);
    let back = r.text().await.unwrap();
    assert!(back.contains("value=\"new_keeper\"") && !back.contains("short-pw"));
    let r = post(vec![
        ("csrf", csrf.clone()),
        ("username", "new_keeper".into()),
        ("password", "long-enough-pw".into()),
        ("role", "site_staff".into()),
        ("area_code", "150802001".into()),
    ])
    .await;
    assert_eq!(r.status(), 303);
    let made = app
        .store
        .user_by_username("new_keeper")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (made.role, made.area_code.as_str()),
        (Role::SiteStaff, "150802001")
    );
    // without the form's token, nothing
    let r = post(vec![
        ("username", "forged_user".into()),
        ("password", "long-enough-pw".into()),
        ("role", "admin".into()),
        ("area_code", "150802".into()),
    ])
    .await;
    assert_eq!(r.status(), 403);
    // a manager sees the accounts but adds none; a grid worker neither
    let mgr = app
        .page("/users", &app.login_cookie("page_manager").await)
        .await;
    assert!(mgr.contains("new_keeper") && !mgr.contains("name=\"password\""));
    let gw = app
        .client
        .get(format!("{}/users", app.base))
        .header("cookie", app.login_cookie("page_gw").await)
        .send()
        .await
        .unwrap();
    assert_eq!(gw.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_form_sent_back_keeps_what_was_chosen() {
    let app = TestApp::start().await;
    let cookie = app.cookie("site_mgr_page", Role::Manager, "150802").await;
    let page = app.page("/sites", &cookie).await;
    let csrf = input_value(&page, "csrf");
    let r = app
        .post_page(
            "/sites",
            &cookie,
            &[
                ("csrf", csrf.as_str()),
                ("kind", "venue"),
                ("name", "   "),
                ("area_code", "150802001"),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    let back = r.text().await.unwrap();
    assert!(back.contains("value=\"venue\" selected"), "kind kept");
    assert!(back.contains("value=\"150802001\" selected"), "area kept");
    assert!(
        !back.contains(">name: "),
        "errors name the field as the form does"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unmasking_on_the_page_without_a_reason_asks_for_one_there() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let id = app
        .stored(
            app.register(
                &site,
                &checkpoint_body(&cn_id("150802", "19900101", 51), "张三", "13900000051"),
            )
            .await,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cookie = app.cookie("page_epi", Role::Epidemiologist, "150802").await;
    let page = app.page(&format!("/registrations/{id}"), &cookie).await;
    // staff read short labels, not the questions the form asked
    assert!(
        page.contains("<dt>近 14 天到过中高风险地区</dt><dd>否</dd>"),
        "{page}"
    );
    assert!(
        !page.contains("是否到过") && !page.contains("可多选"),
        "{page}"
    );
    let csrf = input_value(&page, "csrf");
    let r = app
        .post_page(
            &format!("/registrations/{id}/unmask"),
            &cookie,
            &[("csrf", csrf.as_str()), ("reason", "   ")],
        )
        .await;
    assert_eq!(r.status(), 422);
    let back = r.text().await.unwrap();
    assert!(
        back.contains("id=\"unmask_err\"") && back.contains("name=\"reason\""),
        "the registration page again, with the reason asked for: {back}"
    );
    assert!(!back.contains("13900000051"), "nothing unmasked");
    // a stale page's token: said to be out of date, not a lack of rights
    let r = app
        .post_page(
            &format!("/registrations/{id}/unmask"),
            &cookie,
            &[("csrf", "stale"), ("reason", "复核")],
        )
        .await;
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(text.contains("页面已过期，请刷新后重试"), "{text}");
    assert!(!text.contains("13900000051"), "nothing unmasked");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_returns_to_the_page_asked_for_and_nowhere_else() {
    let app = TestApp::start().await;
    app.token("back_gw", Role::GridWorker, "150802").await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let asked = format!("/feed?site={}", site.id);
    let r = app
        .client
        .get(format!("{}{asked}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let to_login = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to_login.starts_with("/login?next="), "{to_login}");
    let page = app
        .client
        .get(format!("{}{to_login}", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let next = input_value(&page, "next");
    assert_eq!(next, asked);
    assert!(
        page.contains("?lang=en&amp;next=/feed%3Fsite%3D"),
        "switching language keeps where to go: {page}"
    );
    let login = |next: String| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/login", app.base))
                .form(&[
                    ("username", "back_gw"),
                    ("password", PASSWORD),
                    ("next", next.as_str()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let r = login(next).await;
    assert_eq!(r.headers()["location"], asked.as_str());
    // never to another site
    for evil in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let r = login(evil.to_string()).await;
        assert_eq!(r.headers()["location"], "/", "{evil}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_page_says_what_was_done_in_words() {
    let app = TestApp::start().await;
    let cookie = app.cookie("words_admin", Role::Admin, "150800").await;
    let page = app.page("/audit", &cookie).await;
    assert!(
        page.contains("登录 <span class=\"muted\">login</span>"),
        "{page}"
    );
    // every action the code audits reads in words in both languages
    for lang in [epigrid_core::Lang::Zh, epigrid_core::Lang::En] {
        let keys = epigrid_core::i18n::keys(lang);
        for action in [
            "category.change",
            "contacts.confirm",
            "export",
            "lab.add",
            "list.decide",
            "list.match",
            "login",
            "login_failed",
            "notice.publish",
            "observation.start",
            "observation.update",
            "person.correct",
            "person.merge",
            "person.unmerge",
            "report.on_behalf",
            "retention.purge",
            "site.create",
            "site.rotate",
            "site.update",
            "trace",
            "unmask",
            "user.create",
        ] {
            let key = format!("audit.action.{action}");
            assert!(keys.contains(&key.as_str()), "{key} in {}", lang.code());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_is_filtered_and_paged() {
    let app = TestApp::start().await;
    let admin = app.token("pager_admin", Role::Admin, "150800").await;
    // three logins by one account, one by another: each is audited
    let gw_token = app.token("pager_gw", Role::GridWorker, "150802").await;
    for _ in 0..2 {
        let r = app
            .client
            .post(format!("{}/api/v1/auth/token", app.base))
            .json(&json!({"username": "pager_gw", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let gw = app
        .store
        .user_by_username("pager_gw")
        .await
        .unwrap()
        .unwrap();
    let items = |v: &Value| -> Vec<(i64, String, String)> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (e["seq"].as_i64().unwrap(), s("username"), s("action"))
            })
            .collect()
    };
    let logins = app
        .get_json("/api/v1/audit?user=pager_gw&action=login&limit=2", &admin)
        .await;
    let page1 = items(&logins);
    assert_eq!(page1.len(), 2, "{logins}");
    assert!(page1
        .iter()
        .all(|(_, u, a)| u == "pager_gw" && a == "login"));
    assert!(page1[0].0 > page1[1].0, "newest first: {logins}");
    let next = logins["next_before"]
        .as_i64()
        .expect("a full page has a next one");
    assert_eq!(next, page1[1].0);
    let older = app
        .get_json(
            &format!("/api/v1/audit?user=pager_gw&action=login&limit=2&before={next}"),
            &admin,
        )
        .await;
    let page2 = items(&older);
    assert_eq!(page2.len(), 1, "the third login, and no more: {older}");
    assert!(page2[0].0 < next);
    assert!(older["next_before"].is_null(), "{older}");
    // by subject: what was done to one account
    let on_gw = app
        .get_json(&format!("/api/v1/audit?subject=user:{}", gw.id), &admin)
        .await;
    assert!(
        items(&on_gw).len() >= 3
            && on_gw["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["subject"] == format!("user:{}", gw.id)),
        "{on_gw}"
    );
    // a time window in the future holds nothing
    let future = app.get_json("/api/v1/audit?from=2099-01-01", &admin).await;
    assert!(items(&future).is_empty(), "{future}");
    // bad filters are field errors
    for (q, field, key) in [
        ("from=yesterday", "from", "err.time.format"),
        ("from=2026-11-30T00:00:00", "from", "err.time.format"),
        ("to=1999-12-31", "to", "err.date.range"),
        ("before=x", "before", "err.int.format"),
        ("before=-1", "before", "err.int.min"),
        (
            "from=2026-11-03&to=2026-11-01",
            "to",
            "err.date.before_start",
        ),
        // the day before: no time at all between them
        (
            "from=2026-11-03&to=2026-11-02",
            "to",
            "err.date.before_start",
        ),
    ] {
        let r = app.get(&format!("/api/v1/audit?{q}"), Some(&admin)).await;
        assert_eq!(r.status(), 422, "{q}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["field"], field, "{q}: {v}");
        assert_eq!(v["errors"][0]["code"], key, "{q}: {v}");
    }
    // the page: filters kept in the form, the older page linked with them, errors in words
    let cookie = app.login_cookie("pager_admin").await;
    let page = app
        .page("/audit?user=pager_gw&action=login&limit=1", &cookie)
        .await;
    assert!(page.contains("value=\"pager_gw\""), "{page}");
    assert!(page.contains("<option value=\"login\" selected>"), "{page}");
    assert!(
        page.contains("href=\"/audit?action=login&#38;limit=1&#38;user=pager_gw&#38;before="),
        "{page}"
    );
    assert!(
        !page.contains("pager_admin</a>"),
        "only the account asked for: {page}"
    );
    // the same entries as CSV, and that export is audited
    assert!(
        page.contains("href=\"/api/v1/audit.csv?action=login&#38;limit=1&#38;user=pager_gw\""),
        "{page}"
    );
    let csv = app
        .get("/api/v1/audit.csv?user=pager_gw&action=login", Some(&admin))
        .await;
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.trim_end().split("\r\n").collect();
    assert!(
        lines[0].starts_with("\u{feff}\"seq\",\"at\",\"username\""),
        "{csv}"
    );
    assert_eq!(lines.len(), 4, "a header and the three logins: {csv}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains("\"pager_gw\",\"login\"")),
        "{csv}"
    );
    let exports = app
        .get_json("/api/v1/audit?action=export&subject=audit.csv", &admin)
        .await;
    assert_eq!(exports["items"][0]["detail"], "rows=3", "{exports}");
    assert_eq!(
        app.get("/api/v1/audit.csv", Some(&gw_token)).await.status(),
        403,
        "for admins only"
    );
    // several bad values: each named, in the same order every time
    for _ in 0..3 {
        let r = app
            .get("/api/v1/audit?limit=abc&from=x&before=y", Some(&admin))
            .await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(fields(&v), ["before", "from", "limit"], "{v}");
    }
    let bad = app.page("/audit?before=abc&lang=en", &cookie).await;
    assert!(bad.contains("class=\"err\">Page (before): "), "{bad}");
    let bad = app.page("/audit?from=yesterday", &cookie).await;
    assert!(bad.contains("class=\"err\">开始日期: "), "{bad}");
    // an admin reading a registration is one click from who else has read it; others are not
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let body = checkpoint_body(&cn_id("150802", "19900101", 52), "张三", "13900000052");
    let id = app.stored(app.register(&site, &body).await).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let link = format!("href=\"/audit?subject=registration:{id}\"");
    let as_admin = app.page(&format!("/registrations/{id}"), &cookie).await;
    assert!(as_admin.contains(&link), "{as_admin}");
    let epi = app
        .cookie("pager_epi", Role::Epidemiologist, "150802")
        .await;
    let as_epi = app.page(&format!("/registrations/{id}"), &epi).await;
    assert!(
        as_epi.contains("张*") && !as_epi.contains(&link),
        "{as_epi}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_request_gets_the_error_each_field_deserves() {
    let app = TestApp::start().await;
    let admin = app.token("boss", Role::Admin, "150800").await;
    let post = |b: Value| {
        let app = &app;
        let admin = admin.clone();
        async move { app.post_json("/api/v1/users", &b, Some(&admin)).await }
    };
    // spaces are not a password; a number is not text; `area` is not `area_code`
    let r = post(json!({"username": "keeper", "password": "            ", "role": "manager", "area_code": "150802"})).await;
    assert_eq!(error_codes(r).await, ["password:err.required"]);
    let r = post(json!({"username": "keeper", "password": 12345678901u64, "role": "manager", "area": "150802"})).await;
    assert_eq!(
        error_codes(r).await,
        ["password:err.text.format", "area_code:err.required"]
    );
    let r =
        post(json!({"password": "long-enough-pw", "role": "king", "area_code": "150802"})).await;
    assert_eq!(
        error_codes(r).await,
        ["username:err.required", "role:err.role.unknown"]
    );
    let r = post(json!({"username": "keeper", "password": "  short  ", "role": "manager", "area_code": "150802"})).await;
    assert_eq!(error_codes(r).await, ["password:err.password.short"]);
    let r = post(json!({"username": "keeper", "password": "  long-enough-pw  ", "role": "manager", "area_code": "150802"})).await;
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_sent_twice_is_stored_once() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Venue, "150802").clone();
    let page = app.public_page(&format!("/s/{}", site.token)).await;
    let nonce = input_value(&page, "nonce");
    assert!(nonce.len() >= 12, "{page}");
    let url = format!("{}/s/{}", app.base, site.token);
    let id = cn_id("150802", "19880808", 8);
    let form = vec![
        ("name", "王八".to_string()),
        ("id_number", id),
        ("phone", "13900000088".to_string()),
        ("symptoms", "none".to_string()),
        ("nonce", nonce),
    ];
    let send = || app.post_form(&url, &form);
    // a double tap, then the browser sending it again later
    let (one, two) = tokio::join!(send(), send());
    let three = send().await;
    let to = |r: &reqwest::Response| {
        assert_eq!(r.status(), 303);
        r.headers()["location"].to_str().unwrap().to_string()
    };
    let first = to(&one);
    assert_eq!((to(&two), to(&three)), (first.clone(), first.clone()));
    assert_eq!(app.stored_registrations(10).await.len(), 1);
    // another form shown is another registration
    let again = app.public_page(&format!("/s/{}", site.token)).await;
    let mut second = form.clone();
    second[4].1 = input_value(&again, "nonce");
    let r = app.client.post(&url).form(&second).send().await.unwrap();
    assert_ne!(to(&r), first);
    assert_eq!(app.stored_registrations(10).await.len(), 2);
    // the first form brought back (Back) and filled in for someone else is theirs
    let mut child = form.clone();
    child[0].1 = "王小九".to_string();
    child[1].1 = cn_id("150802", "20150101", 9);
    let r = app.client.post(&url).form(&child).send().await.unwrap();
    assert_ne!(to(&r), first);
    let stored = app.stored_registrations(10).await;
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().any(|r| r.name == "王小九"));
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_by_number_are_audited_and_limited_and_pages_cannot_be_framed() {
    let app = TestApp::start().await;
    let epi = app.token("looker", Role::Epidemiologist, "150802").await;
    let admin = app.token("boss", Role::Admin, "150800").await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let id = cn_id("150802", "19890909", 9);
    let r = app
        .register(&site, &checkpoint_body(&id, "查找", "13900000099"))
        .await;
    assert_eq!(r.status(), 201);
    // every response, page or API, public or staff's: not framed, not sniffed, no Referer
    for (path, token) in [
        (format!("/s/{}", site.token), None),
        ("/api/v1/persons?q=查找".to_string(), Some(epi.as_str())),
        ("/api/v1/nowhere".to_string(), None),
    ] {
        let r = app.get(&path, token).await;
        let h = r.headers();
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
    }
    // a lookup by ID number is audited without the number
    let v: Value = app.get_json(&format!("/api/v1/persons?q={id}"), &epi).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let log: Value = app
        .get_json("/api/v1/audit?action=person.lookup", &admin)
        .await;
    let entries = log["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{log}");
    assert_eq!(entries[0]["username"], "looker");
    assert_eq!(entries[0]["detail"], "by id_number, 1 found");
    assert!(
        !log.to_string().contains(&id),
        "the number is not in the log"
    );
    // trying numbers one after another is cut short (names are not counted)
    let mut statuses = Vec::new();
    for seq in 0..epigrid_web::LOOKUPS_PER_WINDOW as u32 {
        let q = cn_id("150802", "19890909", 100 + seq);
        statuses.push(
            app.get(&format!("/api/v1/persons?q={q}"), Some(&epi))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        app.get("/api/v1/persons?q=查找", Some(&epi)).await.status(),
        200
    );
    // another server on the same database (or this one restarted) counts them too
    let twin = TestApp::start_with(app.store.clone(), app.dir.clone()).await;
    let q = cn_id("150802", "19890909", 99);
    assert_eq!(
        twin.get(&format!("/api/v1/persons?q={q}"), Some(&epi))
            .await
            .status(),
        429
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_deactivates_an_account_and_its_tokens_stop_working() {
    let app = TestApp::start().await;
    let admin = app.token("chief", Role::Admin, "150802").await;
    let other_admin = app.token("far_chief", Role::Admin, "150821").await;
    let epi = app.token("leaver", Role::Epidemiologist, "150802").await;
    let users: Value = app.get_json("/api/v1/users", &admin).await;
    let id_of = |name: &str| {
        users["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name)
            .map(|u| u["id"].as_str().unwrap().to_string())
            .unwrap()
    };
    let (leaver, chief) = (id_of("leaver"), id_of("chief"));
    let patch = |token: String, id: String, body: Value| {
        let app = &app;
        async move {
            app.patch_json(&format!("/api/v1/users/{id}"), &body, Some(&token))
                .await
        }
    };
    assert_eq!(app.get("/api/v1/me", Some(&epi)).await.status(), 200);
    // another county's admin does not see the account; a stray key is named
    let r = patch(
        other_admin.clone(),
        leaver.clone(),
        json!({"active": false}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = patch(admin.clone(), leaver.clone(), json!({"enabled": false})).await;
    assert_eq!(
        status_and_codes(r).await,
        (
            422,
            vec![
                "enabled:err.field.unknown_user".to_string(),
                "active:err.required".to_string()
            ]
        )
    );
    let r = patch(admin.clone(), leaver.clone(), json!({"active": false})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await["active"], false);
    assert_eq!(
        app.get("/api/v1/me", Some(&epi)).await.status(),
        401,
        "at once"
    );
    // an admin cannot lock themselves out
    let r = patch(admin.clone(), chief, json!({"active": false})).await;
    assert_eq!(status_and_codes(r).await.0, 409);
    let log: Value = app
        .get_json("/api/v1/audit?action=user.deactivate", &admin)
        .await;
    assert_eq!(log["items"].as_array().unwrap().len(), 1, "{log}");
    // the users page does the same: reactivate, and a name in the address is not "added"
    let cookie = app.login_cookie("chief").await;
    let page = app.page("/users?created=nobody", &cookie).await;
    assert!(!page.contains("已添加账号"), "{page}");
    assert!(
        page.contains(&format!("action=\"/users/{leaver}/active\"")),
        "{page}"
    );
    // a value that is neither 0 nor 1 is refused, and changes nothing
    for bad in ["true", ""] {
        let r = app
            .post_page(
                &format!("/users/{leaver}/active"),
                &cookie,
                &[
                    ("csrf", input_value(&page, "csrf").as_str()),
                    ("active", bad),
                ],
            )
            .await;
        assert_eq!(r.status(), 422, "active={bad:?}");
    }
    let r = app
        .post_page(
            &format!("/users/{leaver}/active"),
            &cookie,
            &[
                ("csrf", input_value(&page, "csrf").as_str()),
                ("active", "1"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303, "back to the users page");
    let users: Value = app.get_json("/api/v1/users", &admin).await;
    let back = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "leaver")
        .unwrap();
    assert_eq!(back["active"], true, "{back}");
}

/// A client that does not send its headers in time, or keeps a connection idle that long, is
/// disconnected; a prompt request is answered, and the live feed outlasts the limit.
#[tokio::test(flavor = "multi_thread")]
async fn slow_or_idle_connections_are_closed_and_the_feed_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (store, dir) = sqlite();
    let limit = std::time::Duration::from_secs(1);
    let app = TestApp::serving(store, dir, Default::default(), limit).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // Reads until the server closes the connection (bounded: it must close within the wait).
    async fn until_closed(conn: &mut tokio::net::TcpStream) -> String {
        let mut got = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            conn.read_to_end(&mut got),
        )
        .await
        .expect("closed by the server")
        .ok();
        String::from_utf8_lossy(&got).into_owned()
    }
    // headers that never end
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(!until_closed(&mut slow).await.contains("200 OK"));
    // a kept-alive connection, answered, then left idle
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(until_closed(&mut idle).await.starts_with("HTTP/1.1 200 OK"));
    // the feed stays open past the limit and still delivers
    let tok = app.token("watcher", Role::SiteStaff, "150802").await;
    let mut feed = open_feed(&app, &tok, None).await;
    assert_eq!(feed.status(), 200);
    tokio::time::sleep(limit * 3).await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let code = registered_code(
        &app,
        &site,
        &checkpoint_body(&cn_id("150802", "19900101", 7), "晚到", "13900000007"),
    )
    .await;
    read_feed_until(&mut feed, &code).await;
}

/// Wrong guesses lock a name from the address they came from, not for its owner elsewhere;
/// guesses spread over many addresses lock it everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_locked_by_guesses_stays_open_to_its_owner_elsewhere() {
    let (store, dir) = sqlite();
    let cfg = epigrid_web::WebConfig {
        trust_proxy: true,
        ..Default::default()
    };
    let app = TestApp::start_configured(store, dir, cfg).await;
    user(app.store.as_ref(), "colleague", Role::GridWorker, "150802").await;
    let login = |from: String, password: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/api/v1/auth/token", app.base))
                .header("x-forwarded-for", from)
                .json(&json!({"username": "colleague", "password": password}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for _ in 0..5 {
        assert_eq!(login("203.0.113.66".into(), "guess").await, 401);
    }
    assert_eq!(
        login("203.0.113.66".into(), PASSWORD).await,
        429,
        "locked there"
    );
    assert_eq!(
        login("198.51.100.7".into(), PASSWORD).await,
        200,
        "open to its owner"
    );
    // thirty guesses from six more addresses lock the name from anywhere
    for i in 0..30 {
        login(format!("192.0.2.{}", i / 5), "guess").await;
    }
    assert_eq!(login("198.51.100.8".into(), PASSWORD).await, 429);
}

/// A database out of reach (PostgreSQL refusing this server's logins) is said as such: 503
/// with Retry-After for the API and readiness, a page saying nothing was saved for a form
/// (sent back as typed), the home page and the login never showing zeros or "wrong
/// password"; all well again once the database is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_out_of_reach_is_said_so_and_never_shown_as_empty() {
    let Some(url) = std::env::var("EPIGRID_TEST_PG")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        return;
    };
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("EPIGRID_TEST_PG is set but PostgreSQL cannot be reached");
    tokio::spawn(conn);
    // a login role of its own, so that only this test's server loses the database
    let role = format!("it_{}", epigrid_core::vault::random_token(6));
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; CREATE SCHEMA {role} AUTHORIZATION {role}"
        ))
        .await
        .unwrap();
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().unwrap_or("postgres");
    let store = epigrid_store_postgres::PgStore::connect(&format!(
        "postgres://{role}@{host}:{port}/{db}?options=-csearch_path%3D{role}"
    ))
    .await
    .expect("store as the test's role");
    let app = TestApp::start_with(std::sync::Arc::new(store), temp_dir("pg-out")).await;
    let cookie = app.cookie("watcher", Role::Manager, "150802").await;
    app.page("/", &cookie).await;
    let site = app.site(SiteKind::Venue, "150802").clone();
    app.public_page(&format!("/s/{}", site.token)).await;
    let cut = |allow: bool| {
        let (admin, role) = (&admin, &role);
        async move {
            let login = if allow { "LOGIN" } else { "NOLOGIN" };
            admin
                .batch_execute(&format!("ALTER ROLE {role} {login}"))
                .await
                .unwrap();
            if !allow {
                admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                        &[role],
                    )
                    .await
                    .unwrap();
                // until its connections are gone (bounded)
                for _ in 0..100 {
                    let n: i64 = admin
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                            &[role],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    };
    cut(false).await;
    let get = |path: &'static str| {
        let (app, cookie) = (&app, &cookie);
        async move {
            app.client
                .get(format!("{}{path}", app.base))
                .header("cookie", cookie.as_str())
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/readyz").await.status(), 503);
    let r = app
        .register(
            app.site(SiteKind::Checkpoint, "150802"),
            &checkpoint_body(&cn_id("150802", "19900101", 5), "未存", "13900000005"),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_codes_of(&r.json().await.unwrap()),
        [":err.unavailable"]
    );
    // the form comes back as typed, saying nothing was saved
    let r = app
        .post_form(
            &format!("{}/s/{}", app.base, site.token),
            &[
                ("name", "王未存"),
                ("id_number", &cn_id("150802", "19880808", 5)),
                ("phone", "13900000055"),
                ("symptoms", "none"),
            ],
        )
        .await;
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("value=\"王未存\"") && text.contains("未保存"),
        "{text}"
    );
    // a staff page and the login: said so, not zeros, not a wrong password
    let r = get("/").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("未保存"));
    let r = app
        .post_form(
            &format!("{}/login", app.base),
            &[("username", "watcher"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status(), 503);
    assert!(!r.text().await.unwrap().contains("用户名或密码不正确"));
    cut(true).await;
    assert_eq!(get("/readyz").await.status(), 200);
    assert_eq!(get("/").await.status(), 200);
    drop(app);
    let _ = admin
        .batch_execute(&format!(
            "DROP SCHEMA {role} CASCADE; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        ))
        .await;
    let _ = admin.batch_execute(&format!("DROP ROLE {role}")).await;
}

/// Two servers on one PostgreSQL database: a logout on one holds on the other at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_logout_holds_at_once_on_every_server_of_a_shared_database() {
    let Some(store) = postgres().await else {
        return;
    };
    let one = TestApp::start_with(store.clone(), temp_dir("pg-one")).await;
    let two = TestApp::start_with(store, temp_dir("pg-two")).await;
    let tok = one.token("shared", Role::Manager, "150802").await;
    assert_eq!(two.get("/api/v1/me", Some(&tok)).await.status(), 200);
    let r = one
        .post_json("/api/v1/auth/logout", &json!({}), Some(&tok))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(two.get("/api/v1/me", Some(&tok)).await.status(), 401);
}

/// Changing the language half-way keeps what was typed: the language buttons send the form
/// to be shown again in the other language, and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn switching_language_keeps_what_was_typed() {
    let app = TestApp::start().await;
    let site = app.site(SiteKind::Checkpoint, "150802").clone();
    let page = app.public_page(&format!("/s/{}", site.token)).await;
    let to_en = format!("/s/{}/lang?lang=en", site.token);
    assert!(page.contains(&format!("formaction=\"{to_en}\"")), "{page}");
    let r = app
        .post_form(
            &format!("{}{to_en}", app.base),
            &[
                ("nonce", "abcdefgh1234"),
                ("name", "半填"),
                ("plate", "蒙L12345"),
                ("origin_province", "42"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("<html lang=\"en\""), "in English");
    assert!(html.contains("value=\"半填\"") && html.contains("value=\"蒙L12345\""));
    assert!(
        !html.contains("class=\"summary\""),
        "no errors for a form not sent"
    );
    assert!(app.stored_registrations(10).await.is_empty());
}
