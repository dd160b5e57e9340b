//! Clerk by its own keys: with `CLERK_SECRET_KEY` the keys come from the
//! Backend API's `/v1/jwks` with the secret key as the bearer; with
//! `CLERK_PUBLISHABLE_KEY` from the Frontend API the key names, whose URL
//! every token must then carry as `iss`. Both APIs are local servers the
//! test starts, serving the fixtures' real RSA and EC public keys; tokens
//! are signed with the matching private keys.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stowage::config::Secret;

use crate::helpers::*;
use crate::local;

const SECRET_KEY: &str = "sk_test_mockInstance0123456789abcdef";

/// One Clerk endpoint serving a JWKS at `path`, answering 401 unless the
/// request carries `Authorization: Bearer {bearer}` (when one is required).
struct ClerkApi {
    /// `http://127.0.0.1:port`, the base URL the settings take.
    base: String,
    keys: Arc<Mutex<Vec<Value>>>,
    served: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl ClerkApi {
    async fn start(path: &'static str, bearer: Option<&'static str>, keys: Vec<Value>) -> ClerkApi {
        let keys = Arc::new(Mutex::new(keys));
        let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (k, s, r) = (keys.clone(), served.clone(), refused.clone());
        let app = axum::Router::new().route(
            path,
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let (k, s, r) = (k.clone(), s.clone(), r.clone());
                async move {
                    use axum::response::IntoResponse;
                    let auth = headers
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    if let Some(want) = bearer {
                        if auth != Some(format!("Bearer {want}").as_str()) {
                            r.fetch_add(1, Ordering::SeqCst);
                            return (
                                axum::http::StatusCode::UNAUTHORIZED,
                                axum::Json(json!({"errors": [{"code": "authentication_invalid"}]})),
                            )
                                .into_response();
                        }
                    }
                    s.fetch_add(1, Ordering::SeqCst);
                    let keys = k.lock().unwrap().clone();
                    axum::Json(json!({ "keys": keys })).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ClerkApi {
            base: format!("http://{addr}"),
            keys,
            served,
            refused,
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// `pk_test_` + base64 of `host$`, as Clerk writes publishable keys.
fn publishable(host: &str) -> String {
    use base64::Engine;
    format!(
        "pk_test_{}",
        base64::engine::general_purpose::STANDARD.encode(format!("{host}$"))
    )
}

/// A session token as Clerk issues it: `kid` in the header, `sub`, `exp`,
/// and `iss` when given.
fn session(alg: Algorithm, private_pem: &str, kid: &str, sub: &str, iss: Option<&str>) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
    }
    .unwrap();
    let claims = Claims {
        sub: sub.into(),
        exp: now() + 600,
        nbf: Some(now() - 1),
        iss: iss.map(String::from),
        azp: None,
    };
    encode(&h, &claims, &key).unwrap()
}

async fn status(app: &TestApp, bearer: &str) -> u16 {
    app.client
        .get(app.url("/api/storage/usage"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn upload_with_token(app: &TestApp, bearer: &str, name: &str) -> Value {
    let r = app.upload_bearer(bearer, name, png_bytes(4096)).await;
    assert_eq!(r.status(), 201, "upload with a Clerk session token");
    r.json().await.unwrap()
}

local!(
    clerk_secret_key_gets_the_keys_from_the_backend_api,
    |b| async move {
        let api = ClerkApi::start(
            "/v1/jwks",
            Some(SECRET_KEY),
            vec![rsa_jwk("ins_rsa"), ec_jwk("ins_ec")],
        )
        .await;
        let base = api.base.clone();
        let app = spawn_app_with(b, |c| {
            c.jwt_public_key = None;
            c.clerk_secret_key = Some(Secret(SECRET_KEY.into()));
            c.clerk_api_url = Some(base);
            c.limits.jwks_refresh = Duration::from_millis(300);
        })
        .await;
        assert!(!app.state.dev_login());

        // RS256 and ES256 tokens of the instance's keys: an upload, a listing.
        let rsa = session(Algorithm::RS256, RSA_PRIVATE, "ins_rsa", "user_2abc", None);
        let f = upload_with_token(&app, &rsa, "clerk.png").await;
        let ec = session(Algorithm::ES256, EC_PRIVATE, "ins_ec", "user_2abc", None);
        let r = app
            .client
            .get(app.url(&format!("/api/files/{}", f["id"].as_str().unwrap())))
            .bearer_auth(&ec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            (api.served(), api.refused()),
            (1, 0),
            "one fetch, with the key"
        );

        // A token signed by another key under a known kid is refused.
        let forged = session(
            Algorithm::RS256,
            RSA_OTHER_PRIVATE,
            "ins_rsa",
            "user_2abc",
            None,
        );
        assert_eq!(status(&app, &forged).await, 401);

        // The instance rotates to a new EC key: a token of it triggers a refetch
        // (at most one per window) and is accepted; the retired RSA key keeps
        // verifying for its grace.
        *api.keys.lock().unwrap() = vec![ec_jwk("ins_ec2")];
        let rotated = session(Algorithm::ES256, EC_PRIVATE, "ins_ec2", "user_2abc", None);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match status(&app, &rotated).await {
                200 => break,
                s if Instant::now() > deadline => panic!("rotated key still answers {s}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(api.served() >= 2, "the rotation refetched");
        assert_eq!(api.refused(), 0);
        assert_eq!(
            status(&app, &rsa).await,
            200,
            "retired key within its grace"
        );

        // Another instance's secret key: the Backend API answers 401, so no
        // key is known and tokens are refused as the provider being unreachable.
        let base = api.base.clone();
        let wrong = spawn_app_with(b, |c| {
            c.jwt_public_key = None;
            c.clerk_secret_key = Some(Secret("sk_test_anotherInstance".into()));
            c.clerk_api_url = Some(base);
        })
        .await;
        assert_eq!(status(&wrong, &rsa).await, 503);
        assert!(api.refused() >= 1, "the wrong bearer was sent and refused");
    }
);

local!(
    clerk_publishable_key_uses_the_frontend_api_and_its_issuer,
    |b| async move {
        let fapi = ClerkApi::start(
            "/.well-known/jwks.json",
            None,
            vec![rsa_jwk("fk"), ec_jwk("fe")],
        )
        .await;
        let base = fapi.base.clone();
        let app = spawn_app_with(b, |c| {
            c.jwt_public_key = None;
            c.clerk_publishable_key = Some(publishable("clerk.example.test"));
            c.clerk_frontend_api_url = Some(base);
        })
        .await;
        let iss = fapi.base.as_str();

        // Tokens from the Frontend API's keys, with its URL as `iss`.
        let good = session(Algorithm::RS256, RSA_PRIVATE, "fk", "user_3def", Some(iss));
        upload_with_token(&app, &good, "fapi.png").await;
        let ec = session(Algorithm::ES256, EC_PRIVATE, "fe", "user_3def", Some(iss));
        assert_eq!(status(&app, &ec).await, 200);
        assert_eq!(fapi.served(), 1);

        // Without `iss`, with another one, or signed by another key: refused.
        for bad in [
            session(Algorithm::RS256, RSA_PRIVATE, "fk", "user_3def", None),
            session(
                Algorithm::RS256,
                RSA_PRIVATE,
                "fk",
                "user_3def",
                Some("https://evil.example.com"),
            ),
            session(
                Algorithm::RS256,
                RSA_OTHER_PRIVATE,
                "fk",
                "user_3def",
                Some(iss),
            ),
        ] {
            assert_eq!(status(&app, &bad).await, 401);
        }

        // STOWAGE_JWT_ISSUER says otherwise: that issuer, and only it.
        let base = fapi.base.clone();
        let custom = spawn_app_with(b, |c| {
            c.jwt_public_key = None;
            c.clerk_publishable_key = Some(publishable("clerk.example.test"));
            c.clerk_frontend_api_url = Some(base);
            c.jwt_issuer = Some("https://auth.example.com".into());
        })
        .await;
        let theirs = session(
            Algorithm::RS256,
            RSA_PRIVATE,
            "fk",
            "user_3def",
            Some("https://auth.example.com"),
        );
        assert_eq!(status(&custom, &theirs).await, 200);
        assert_eq!(status(&custom, &good).await, 401);
    }
);
