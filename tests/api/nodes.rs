//! Process identity and reclaim (src/node.rs), with explicit times instead
//! of waiting: which holders count as gone, and what reclaiming them
//! releases and removes.

use std::time::Duration;

use chrono::Utc;
use stowage::meta::{Gone, Holder, NodeRow};
use uuid::Uuid;

use crate::both;
use crate::helpers::*;

fn holder(node: Uuid) -> Holder {
    Holder {
        node,
        incarnation: Uuid::now_v7(),
    }
}

fn row(h: Holder, at: chrono::DateTime<Utc>) -> NodeRow {
    NodeRow {
        holder: h,
        host: "test".into(),
        pid: 1,
        started_at: at,
        heartbeat_at: at,
    }
}

/// A reservation of `bytes` held by `h`, with staged bytes under its id.
async fn held(app: &TestApp, user: &str, bytes: u64, h: Option<Holder>) -> Uuid {
    let st = &app.state;
    let id = st
        .meta
        .reserve_upload(user, 1 << 30, bytes, Duration::from_secs(3600), 64, h)
        .await
        .unwrap();
    let mut w = st.blobs.stage(id, 0).await.unwrap();
    w.write(png_bytes(bytes as usize).into()).await.unwrap();
    w.finish().await.unwrap();
    id
}

async fn reserved(app: &TestApp, user: &str) -> i64 {
    app.state
        .meta
        .get_user(user)
        .await
        .unwrap()
        .unwrap()
        .reserved_bytes
}

async fn staged(app: &TestApp, id: Uuid) -> bool {
    app.state.blobs.staged_len(id).await.unwrap().is_some()
}

both!(
    a_holder_is_gone_once_its_heartbeat_is_stale,
    |b| async move {
        let app = spawn_app(b).await;
        let st = &app.state;
        let t0 = Utc::now();
        let alive = holder(Uuid::now_v7());
        let silent = holder(Uuid::now_v7());
        st.meta.heartbeat_node(&row(silent, t0)).await.unwrap();
        st.meta.heartbeat_node(&row(alive, t0)).await.unwrap();
        let of_silent = held(&app, "nia", 1000, Some(silent)).await;
        let of_alive = held(&app, "nia", 2000, Some(alive)).await;
        // A tus upload's reservation has no holder: it is never reclaimed.
        let of_upload = held(&app, "nia", 4000, None).await;
        assert_eq!(reserved(&app, "nia").await, 7000);

        // 29 s later nobody is silent for 30 s yet.
        let dead_after = chrono::Duration::seconds(30);
        let r = stowage::node::reclaim(
            st,
            Gone::SilentSince(t0 + chrono::Duration::seconds(29) - dead_after),
        )
        .await
        .unwrap();
        assert_eq!(r.reservations, 0);
        assert_eq!(reserved(&app, "nia").await, 7000);

        // One holder heartbeats on; 31 s after t0 the other is gone.
        let t1 = t0 + chrono::Duration::seconds(25);
        st.meta.heartbeat_node(&row(alive, t1)).await.unwrap();
        let r = stowage::node::reclaim(
            st,
            Gone::SilentSince(t0 + chrono::Duration::seconds(31) - dead_after),
        )
        .await
        .unwrap();
        assert_eq!(r.reservations, 1);
        assert!(!staged(&app, of_silent).await, "its staging data is gone");
        assert!(!st.meta.reservation_exists(of_silent).await.unwrap());
        assert!(st.meta.reservation_exists(of_alive).await.unwrap());
        assert!(staged(&app, of_alive).await);
        assert!(st.meta.reservation_exists(of_upload).await.unwrap());
        assert!(staged(&app, of_upload).await);
        assert_eq!(reserved(&app, "nia").await, 6000);
        let nodes = st.meta.list_nodes().await.unwrap();
        assert!(nodes.iter().all(|n| n.holder != silent), "{nodes:?}");
        assert!(nodes.iter().any(|n| n.holder == alive), "{nodes:?}");

        // A holder without any row (never registered, or pruned) is gone too.
        let unknown = holder(Uuid::now_v7());
        let of_unknown = held(&app, "nia", 500, Some(unknown)).await;
        let r = stowage::node::reclaim(st, Gone::SilentSince(t1 - dead_after))
            .await
            .unwrap();
        assert_eq!(r.reservations, 1);
        assert!(!st.meta.reservation_exists(of_unknown).await.unwrap());
        // Reclaiming again finds nothing.
        let r = stowage::node::reclaim(st, Gone::SilentSince(t1 - dead_after))
            .await
            .unwrap();
        assert_eq!(r.reservations, 0);
        assert_eq!(reserved(&app, "nia").await, 6000);
    }
);

both!(
    a_restart_reclaims_only_earlier_starts_of_its_node,
    |b| async move {
        let app = spawn_app(b).await;
        let st = &app.state;
        let node = Uuid::now_v7();
        let before = holder(node);
        let now = Holder {
            node,
            incarnation: Uuid::now_v7(),
        };
        let other = holder(Uuid::now_v7());
        let t = Utc::now();
        for h in [before, now, other] {
            st.meta.heartbeat_node(&row(h, t)).await.unwrap();
        }
        let of_before = held(&app, "ori", 100, Some(before)).await;
        let of_now = held(&app, "ori", 200, Some(now)).await;
        let of_other = held(&app, "ori", 400, Some(other)).await;
        let r = stowage::node::reclaim(
            st,
            Gone::Node {
                node,
                except: Some(now.incarnation),
            },
        )
        .await
        .unwrap();
        assert_eq!(r.reservations, 1);
        assert_eq!(r.nodes, 1);
        assert!(!st.meta.reservation_exists(of_before).await.unwrap());
        assert!(!staged(&app, of_before).await);
        assert!(st.meta.reservation_exists(of_now).await.unwrap());
        assert!(st.meta.reservation_exists(of_other).await.unwrap());
        assert_eq!(reserved(&app, "ori").await, 600);
        // With no process of the node running, every start of it is gone.
        let r = stowage::node::reclaim(st, Gone::Node { node, except: None })
            .await
            .unwrap();
        assert_eq!(r.reservations, 1);
        assert!(st.meta.reservation_exists(of_other).await.unwrap());
        assert_eq!(reserved(&app, "ori").await, 400);
    }
);

both!(a_multipart_upload_is_held_by_its_process, |b| async move {
    // The reservation of an upload in flight names the serving process;
    // a tus upload's names none.
    let app = spawn_app(b).await;
    let st = &app.state;
    // The server registers itself as it starts (in a task of its own).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !st
        .meta
        .list_nodes()
        .await
        .unwrap()
        .iter()
        .any(|n| n.holder == st.holder)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server registered itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(png_bytes(64 * 1024))).unwrap();
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(rx)).file_name("a.png");
    let form = reqwest::multipart::Form::new().part("file", part);
    let req = app
        .client
        .post(app.url("/api/files/upload"))
        .bearer_auth(token("pat"))
        .multipart(form)
        .send();
    let upload = tokio::spawn(req);
    let tus = app
        .tus(reqwest::Method::POST, "pat", "/api/uploads")
        .header("Upload-Length", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(tus.status(), 201);
    let mine = Gone::Node {
        node: st.holder.node,
        except: None,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let held = loop {
        let held = st.meta.gone_reservations(&mine).await.unwrap();
        if !held.is_empty() {
            break held;
        }
        assert!(std::time::Instant::now() < deadline, "no held reservation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(held.len(), 1, "the multipart upload only: {held:?}");
    drop(tx);
    let r = upload.await.unwrap().unwrap();
    assert_eq!(r.status(), 201);
    assert!(st.meta.gone_reservations(&mine).await.unwrap().is_empty());
});
