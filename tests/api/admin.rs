//! The admin API and account deletion.

use serde_json::Value;

use crate::both;
use crate::helpers::*;

both!(
    admin_sets_quota_before_first_sign_in_and_deletes_accounts,
    |b| async move {
        let app = spawn_app(b).await;
        let c = &app.client;
        app.admin_set_quota("future", 12345).await;
        let v = app.admin_json("/api/admin/users/future").await;
        assert_eq!(v["max_bytes"], 12345);
        assert_eq!(
            app.usage("future").await["max_bytes"],
            12345,
            "first sign-in keeps the plan"
        );

        let r = c
            .put(app.url("/api/admin/users/future/quota"))
            .bearer_auth(ADMIN_TOKEN)
            .body("{\"max_bytes\": -1}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        app.upload_ok("gone", "a.png", png_bytes(1000)).await;
        app.upload_ok("gone", "b.json", b"{}".to_vec()).await;
        app.upload_ok("stays", "c.png", png_bytes(1000)).await;
        let list = app.admin_json("/api/admin/users").await;
        let ids: Vec<&str> = list["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user_id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"gone") && ids.contains(&"stays") && ids.contains(&"future"));

        let r = c
            .delete(app.url("/api/admin/users/gone"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert!(app.state.meta.get_user("gone").await.unwrap().is_none());
        assert!(app
            .blobs_on_disk()
            .await
            .iter()
            .all(|p| !p.starts_with("gone/")));
        assert!(!app.storage_root().join("gone").exists());
        assert_eq!(app.blobs_on_disk().await.len(), 1);
        let r = c
            .delete(app.url("/api/admin/users/gone"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
);

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let app = spawn_app(Backend::Sqlite).await;
    let c = &app.client;
    assert_eq!(
        c.get(app.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let r = c.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["database"], "ok");
    assert_eq!(v["volume"], "ok");
    app.upload_ok("m", "a.png", png_bytes(100)).await;
    let text = c
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("stowage_http_requests_total"), "{text}");
    let doc: Value = c
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every documented path is routed (anything but the unknown-route 404 body).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{token}", "x");
        for method in ops.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = c
                .request(m.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            assert_ne!(r.status(), 405, "{method} {path} is routed");
            if r.status() == 404 {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                assert_ne!(
                    v["error"]["message"], "no such route",
                    "{method} {path} exists"
                );
            }
        }
    }
}

// A user id that no session could carry (a NUL, another control
// character, too long) is refused on every admin user route with the
// error shape, never a 500 from the database.
both!(
    admin_user_routes_refuse_ids_no_session_can_carry,
    |b| async move {
        let app = spawn_app(b).await;
        let c = &app.client;
        let long = "x".repeat(256);
        for id in ["a%00b", "a%0Ab", "%7F", long.as_str()] {
            let r = c
                .put(app.url(&format!("/api/admin/users/{id}/quota")))
                .bearer_auth(ADMIN_TOKEN)
                .body("{\"max_bytes\": 10}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "PUT quota of {id:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "invalid_request", "{v}");
            for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
                let r = c
                    .request(method.clone(), app.url(&format!("/api/admin/users/{id}")))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 404, "{method} of {id:?}");
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "not_found", "{v}");
            }
        }
        let list = app.admin_json("/api/admin/users").await;
        assert_eq!(list["users"].as_array().unwrap().len(), 0, "{list}");
    }
);
