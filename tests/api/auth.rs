//! SPEC §2: token verification, isolation between users, admin access,
//! development sign-in.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use serde_json::{json, Value};

use crate::both;
use crate::helpers::*;

async fn status_with(app: &TestApp, auth: Option<String>) -> (u16, Value) {
    let mut rb = app.client.get(app.url("/api/storage/usage"));
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The status of a usage request with `Authorization: Bearer {token}`.
async fn bearer_status(app: &TestApp, token: &str) -> u16 {
    status_with(app, Some(format!("Bearer {token}"))).await.0
}

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: now() + 600,
        nbf: None,
        iss: None,
        azp: None,
    }
}

both!(bad_tokens_are_refused, |b| async move {
    let app = spawn_app(b).await;
    let (s, v) = status_with(&app, None).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    assert_eq!(bearer_status(&app, &token("u")).await, 200);

    // Signed by another key.
    let forged = sign_rs256(RSA_OTHER_PRIVATE, &claims("u"));
    assert_eq!(bearer_status(&app, &forged).await, 401);
    // Expired beyond the leeway, and not yet valid.
    let expired = sign_rs256(
        RSA_PRIVATE,
        &Claims {
            exp: now() - 60,
            ..claims("u")
        },
    );
    assert_eq!(bearer_status(&app, &expired).await, 401);
    let early = sign_rs256(
        RSA_PRIVATE,
        &Claims {
            nbf: Some(now() + 120),
            ..claims("u")
        },
    );
    assert_eq!(bearer_status(&app, &early).await, 401);
    // Within the 5 s leeway is fine.
    let just = sign_rs256(
        RSA_PRIVATE,
        &Claims {
            exp: now() - 2,
            ..claims("u")
        },
    );
    assert_eq!(bearer_status(&app, &just).await, 200);

    // alg: none.
    let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = B64.encode(serde_json::to_vec(&json!({"sub": "u", "exp": now() + 600})).unwrap());
    let none = format!("{header}.{body}.");
    assert_eq!(bearer_status(&app, &none).await, 401);

    // HS256 signed with the public key as the secret.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("u"),
        &jsonwebtoken::EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    )
    .unwrap();
    assert_eq!(bearer_status(&app, &hs).await, 401);

    // Tampered payload.
    let good = token("u");
    let parts: Vec<&str> = good.split('.').collect();
    let evil =
        B64.encode(serde_json::to_vec(&json!({"sub": "admin", "exp": now() + 600})).unwrap());
    assert_eq!(
        status_with(
            &app,
            Some(format!("Bearer {}.{}.{}", parts[0], evil, parts[2]))
        )
        .await
        .0,
        401
    );
    // Garbage and dev tokens (dev sign-in is off with real auth).
    assert_eq!(
        status_with(&app, Some("Bearer not.a.jwt".into())).await.0,
        401
    );
    let dev = stowage::auth::dev::mint(&app.state.signing_key, "u");
    assert_eq!(bearer_status(&app, &dev).await, 401);

    // The __session cookie works like the header.
    let r = app
        .client
        .get(app.url("/api/storage/usage"))
        .header("cookie", format!("theme=dark; __session={}", token("u")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
});

both!(issuer_and_authorized_parties, |b| async move {
    let app = spawn_app_with(b, |c| {
        c.jwt_issuer = Some("https://clerk.example.com".into());
        c.authorized_parties = vec!["https://app.example.com".into()];
    })
    .await;
    let iss = Some("https://clerk.example.com".to_string());
    let ok = sign_rs256(
        RSA_PRIVATE,
        &Claims {
            iss: iss.clone(),
            azp: Some("https://app.example.com".into()),
            ..claims("u")
        },
    );
    assert_eq!(bearer_status(&app, &ok).await, 200);
    let no_azp = sign_rs256(
        RSA_PRIVATE,
        &Claims {
            iss: iss.clone(),
            ..claims("u")
        },
    );
    assert_eq!(bearer_status(&app, &no_azp).await, 200);
    let bad_azp = sign_rs256(
        RSA_PRIVATE,
        &Claims {
            iss: iss.clone(),
            azp: Some("https://evil.example.com".into()),
            ..claims("u")
        },
    );
    assert_eq!(bearer_status(&app, &bad_azp).await, 401);
    let bad_iss = sign_rs256(
        RSA_PRIVATE,
        &Claims {
            iss: Some("https://evil".into()),
            ..claims("u")
        },
    );
    assert_eq!(bearer_status(&app, &bad_iss).await, 401);
    let no_iss = sign_rs256(RSA_PRIVATE, &claims("u"));
    assert_eq!(bearer_status(&app, &no_iss).await, 401);
});

both!(es256_keys_work, |b| async move {
    let app = spawn_app_with(b, |c| {
        c.jwt_public_key = Some(stowage::config::Secret(EC_PUBLIC.into()))
    })
    .await;
    let t = sign_es256(EC_PRIVATE, &claims("e"));
    assert_eq!(bearer_status(&app, &t).await, 200);
    // An RS256 token against an EC key is refused.
    assert_eq!(bearer_status(&app, &token("e")).await, 401);
});

both!(other_users_ids_are_not_found, |b| async move {
    let app = spawn_app(b).await;
    let f = app.upload_ok("owner", "x.png", png_bytes(500)).await;
    let id = f["id"].as_str().unwrap();
    for path in [
        format!("/api/files/{id}"),
        format!("/api/files/{id}/download"),
        format!("/api/files/{id}/thumbnail"),
    ] {
        let (s, v) = app.get_json("intruder", &path).await;
        assert_eq!(s, 404, "{path}");
        assert_eq!(v["error"]["code"], "not_found");
    }
    let c = &app.client;
    let t = token("intruder");
    assert_eq!(
        c.delete(app.url(&format!("/api/files/{id}")))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.post(app.url(&format!("/api/files/{id}/favorite")))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.put(app.url(&format!("/api/files/{id}/tags")))
            .bearer_auth(&t)
            .json(&json!({"tags": ["x"]}))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.post(app.url(&format!("/api/files/{id}/signed-url")))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert!(app.list_all("intruder", "").await.is_empty());
    // Malformed ids are 404 too.
    assert_eq!(app.get_json("owner", "/api/files/not-a-uuid").await.0, 404);
    // The owner still has it, untouched.
    let (s, got) = app.get_json("owner", &format!("/api/files/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(got["is_favorite"], false);
});

both!(admin_api_takes_only_the_admin_token, |b| async move {
    let app = spawn_app(b).await;
    let c = &app.client;
    assert_eq!(
        c.get(app.url("/api/admin/users"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(app.url("/api/admin/users"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = c
        .get(app.url("/api/admin/users"))
        .bearer_auth(token("u"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "forbidden");
    assert_eq!(
        c.get(app.url("/api/admin/users"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
});

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.admin_token = None).await;
    let r = app
        .client
        .get(app.url("/api/admin/users"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn development_sign_in() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.jwt_public_key = None).await;
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let v: Value = client
        .get(app.url("/api/dev/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["dev_login"], true);
    assert_eq!(
        client
            .get(app.url("/api/storage/usage"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = client
        .post(app.url("/api/dev/login"))
        .json(&json!({"user_id": "devuser"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = client
        .get(app.url("/api/storage/usage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["user_id"], "devuser");
    // A forged development session is refused.
    let forged = stowage::auth::dev::mint(b"not-the-key", "devuser");
    let r = app
        .client
        .get(app.url("/api/storage/usage"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Not in dev mode: login is not there.
    let real = spawn_app(Backend::Sqlite).await;
    let r = real
        .client
        .post(real.url("/api/dev/login"))
        .json(&json!({"user_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn serve_refuses_a_public_bind_without_auth() {
    let mut c = stowage::config::Config::defaults("/tmp/unused".into());
    c.bind = "0.0.0.0:3001".parse().unwrap();
    let e = stowage::app::check_auth_safety(&c).unwrap_err().to_string();
    assert!(e.contains("without authentication"), "{e}");
    c.jwt_public_key = Some(stowage::config::Secret(RSA_PUBLIC.into()));
    assert!(stowage::app::check_auth_safety(&c).is_ok());
}

both!(rate_limits_answer_429_with_retry_after, |b| async move {
    let app = spawn_app_with(b, |c| c.rate_limit_user_per_sec = 1).await;
    let mut limited = None;
    for _ in 0..10 {
        let r = app.get("rl", "/api/storage/usage").await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("burst of 4 then 429");
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    // Another user is not affected.
    assert_eq!(app.get("other", "/api/storage/usage").await.status(), 200);
});
