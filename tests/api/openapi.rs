//! The OpenAPI description as clients use it: the web package generates its
//! types from a committed copy of `GET /openapi.json`, so that copy must be
//! what the server serves; and the `links` of an upload's answer must lead
//! a client that knows nothing but the document to the calls on that file.

use std::path::PathBuf;

use serde_json::Value;

use crate::both;
use crate::helpers::*;

/// The copy the web package's types are generated from.
fn snapshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/src/lib/openapi.json")
}

async fn served(app: &TestApp) -> Value {
    let r = app.get_public("/openapi.json").await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `STOWAGE_UPDATE_OPENAPI=1` rewrites the copy instead of comparing; then
/// `cd web && npm run gen:api` regenerates the types from it.
#[tokio::test]
async fn the_web_package_describes_the_api_the_server_serves() {
    let app = spawn_app(Backend::Sqlite).await;
    let text = serde_json::to_string_pretty(&served(&app).await).unwrap() + "\n";
    let path = snapshot_path();
    if std::env::var_os("STOWAGE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} differs from GET /openapi.json: run `STOWAGE_UPDATE_OPENAPI=1 cargo test --test api \
         openapi::` and `cd web && npm run gen:api`, and commit both",
        path.display()
    );
}

/// Resolves a link's runtime expression against one response.
fn resolve(expr: &str, headers: &reqwest::header::HeaderMap, body: &Value) -> String {
    if let Some(pointer) = expr.strip_prefix("$response.body#") {
        return body
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap()
            .into();
    }
    let name = expr.strip_prefix("$response.header.").expect(expr);
    headers[name].to_str().unwrap().into()
}

/// Follows every link of `(path, method, status)` from one real response,
/// the way a generated client or a stateful fuzzer would; deletion last.
/// Returns the operationIds followed.
async fn follow(
    app: &TestApp,
    doc: &Value,
    user: &str,
    from: (&str, &str, &str),
    headers: &reqwest::header::HeaderMap,
    body: &Value,
) -> Vec<String> {
    let (path, method, status) = from;
    let links = doc["paths"][path][method]["responses"][status]["links"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} {status} has links"));
    let mut links: Vec<&Value> = links.values().collect();
    links.sort_by_key(|l| l["operationId"] == "deleteFile");
    let mut followed = Vec::new();
    for link in links {
        let target = link["operationId"].as_str().unwrap();
        let (tpath, tmethod, op) = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, item)| {
                item.as_object()
                    .unwrap()
                    .iter()
                    .map(move |(m, op)| (p.clone(), m.clone(), op))
            })
            .find(|(_, _, op)| op["operationId"] == target)
            .unwrap_or_else(|| panic!("{target} is an operation"));
        let mut url = tpath.clone();
        for (name, expr) in link["parameters"].as_object().unwrap() {
            let value = resolve(expr.as_str().unwrap(), headers, body);
            url = url.replace(&format!("{{{name}}}"), &value);
        }
        let m = reqwest::Method::from_bytes(tmethod.to_uppercase().as_bytes()).unwrap();
        let mut req = app
            .client
            .request(m, app.url(&url))
            .bearer_auth(token(user));
        // A required JSON body gets the smallest valid one the schema asks for.
        if op["requestBody"]["required"] == true {
            assert_eq!(target, "setFileTags", "only tags need a body");
            req = req.json(&serde_json::json!({"tags": ["linked"]}));
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        let documented = op["responses"].get(code.to_string()).is_some();
        assert!(documented, "{target}: {code} is a documented answer");
        // A thumbnail may not be generated yet; everything else works.
        assert!(
            r.status().is_success() || (target == "getThumbnail" && code == 404),
            "{target} {url}: {code}"
        );
        followed.push(target.to_string());
    }
    followed
}

both!(
    an_uploads_links_lead_to_every_call_on_the_new_file,
    |b| async move {
        let app = spawn_app(b).await;
        let doc = served(&app).await;

        // Multipart: the File in the body names the id.
        let r = app.upload("linker", "a.png", png_bytes(2000)).await;
        assert_eq!(r.status(), 201);
        let headers = r.headers().clone();
        let file: Value = r.json().await.unwrap();
        let from = ("/api/files/upload", "post", "201");
        let followed = follow(&app, &doc, "linker", from, &headers, &file).await;
        for op in [
            "getFile",
            "downloadFile",
            "setFileTags",
            "setFileFavorite",
            "deleteFile",
        ] {
            assert!(
                followed.iter().any(|f| f == op),
                "followed {op}: {followed:?}"
            );
        }
        let id = file["id"].as_str().unwrap();
        let (status, _) = app.get_json("linker", &format!("/api/files/{id}")).await;
        assert_eq!(status, 404, "the deleteFile link deleted it");

        // tus creation-with-upload: the file id comes in Stowage-File-Id.
        let data = png_bytes(1500);
        let r = app
            .tus(reqwest::Method::POST, "linker", "/api/uploads")
            .header("Upload-Length", data.len().to_string())
            .header("Upload-Metadata", "filename Yi5wbmc=")
            .header("Content-Type", "application/offset+octet-stream")
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert!(
            r.headers().contains_key("stowage-file-id"),
            "complete at once"
        );
        let headers = r.headers().clone();
        let from = ("/api/uploads", "post", "201");
        let followed = follow(&app, &doc, "linker", from, &headers, &Value::Null).await;
        assert!(followed.iter().any(|f| f == "getFile"), "{followed:?}");
        app.assert_consistent("linker").await;
    }
);
