//! The metadata store's conformance suite: one set of stories, run against
//! every engine by calling the store directly (no HTTP). Each story opens
//! its own fresh database; the store reads the time from a [`ManualClock`],
//! so leases and reservations expire by moving the clock, never by sleeping.
//!
//! Adding an engine is one `engine!` line (and its `open_*` function).

use std::{collections::HashSet, future::Future, pin::Pin, sync::Arc, time::Duration};

#[path = "support/serve.rs"]
mod serve;

use chrono::{DateTime, Utc};
use stowage::{
    domain::filetype::FileType,
    meta::{
        connect_with_clock, Cursor, DumpFile, DumpUser, FileRecord, Gone, Holder, LeaseCheck,
        ListQuery, ManualClock, MediaUpdate, MetaError, MetaResult, MetaStore, NewFile, NodeRow,
        Rename, RowSource, SignedClaim, SignedUpload, SnapshotSink, SortKey, SortOrder, Takeover,
        TusHolder, TusLock, TusProgress, TusRecorded, TusUpload,
    },
};
use uuid::Uuid;

/// A fresh, migrated store on one engine, and its clock.
struct Db {
    store: Arc<dyn MetaStore>,
    clock: Arc<ManualClock>,
    /// "sqlite", "postgres" or "mariadb".
    engine: &'static str,
    /// Dropped after the store: removes the database.
    _keep: Box<dyn Send>,
}

type Open = fn() -> Pin<Box<dyn Future<Output = Db> + Send>>;

fn start_time() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
}

async fn with_store(url: &str, keep: Box<dyn Send>) -> Db {
    let clock = Arc::new(ManualClock::new(start_time()));
    let store = connect_with_clock(url, clock.clone())
        .await
        .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    store.migrate().await.expect("migrations");
    let engine = match url.split(':').next() {
        Some("sqlite") => "sqlite",
        Some("postgres" | "postgresql") => "postgres",
        _ => "mariadb",
    };
    Db {
        store,
        clock,
        engine,
        _keep: keep,
    }
}

fn open_sqlite() -> Pin<Box<dyn Future<Output = Db> + Send>> {
    Box::pin(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/meta.db", dir.path().display());
        with_store(&url, Box::new(dir)).await
    })
}

fn open_postgres() -> Pin<Box<dyn Future<Output = Db> + Send>> {
    Box::pin(async {
        let pg = serve::TestDb::postgres().await;
        let url = pg.url.clone();
        with_store(&url, Box::new(pg)).await
    })
}

fn open_mariadb() -> Pin<Box<dyn Future<Output = Db> + Send>> {
    Box::pin(async {
        let my = serve::TestDb::mariadb().await;
        let url = my.url.clone();
        with_store(&url, Box::new(my)).await
    })
}

/// One module per engine, one test per story.
macro_rules! engine {
    ($engine:ident, $open:path) => {
        mod $engine {
            use super::*;
            stories!(
                $open;
                reservations_race_at_the_limit,
                growth_past_the_room_is_refused,
                commit_rechecks_the_room,
                triggers_keep_usage_exact,
                task_lease_is_exclusive_and_expires,
                an_expired_lease_goes_to_one_taker,
                job_claims_are_exclusive,
                snapshot_round_trip,
                unfinished_uploads_are_capped,
                signed_upload_is_used_once,
                gone_holders_are_named,
                file_changes_race_cleanly,
                listing_pages_filters_and_search,
                every_listing_order_walks_an_index,
                search_is_the_same_dense_or_sparse,
                search_follows_renames_and_deletions,
                a_plan_takes_any_cursor,
                tus_lease_is_exclusive,
                tus_upload_completes_once,
                tus_progress_is_recorded_at_once,
                a_snapshot_is_one_moment
            );
        }
    };
}

macro_rules! stories {
    ($open:path; $($story:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $story() {
                super::$story($open).await
            }
        )*
    };
}

engine!(sqlite, open_sqlite);
engine!(postgres, open_postgres);
engine!(mariadb, open_mariadb);

// ---------------------------------------------------------------- helpers

const HOUR: Duration = Duration::from_secs(3600);

fn new_file(id: Uuid, user: &str, size: i64) -> NewFile {
    NewFile {
        id,
        user_id: user.into(),
        file_name: format!("f-{id}.bin"),
        file_type: FileType::Project,
        mime_type: "application/octet-stream".into(),
        file_size: size,
        file_path: format!("{user}/projects/{id}"),
        package_name: None,
        tags: vec!["a".into(), "b c".into()],
        sha256: "0".repeat(64),
    }
}

/// Reserves `size` bytes for `user` (created with room to spare if new) and
/// commits a file of that size on the reservation: the setup most stories
/// start from.
async fn commit_one(store: &dyn MetaStore, user: &str, size: i64) -> MetaResult<FileRecord> {
    let r = store.reserve(user, 1 << 40, size as u64, HOUR).await?;
    store.commit_file(r, new_file(r, user, size)).await
}

/// [`commit_one`], which must succeed; returns the file's id.
async fn put(db: &Db, user: &str, size: i64) -> Uuid {
    commit_one(&*db.store, user, size)
        .await
        .expect("reserve and commit")
        .id
}

async fn usage(db: &Db, user: &str) -> (i64, i64, i64) {
    let u = db.store.get_user(user).await.unwrap().expect("user row");
    (u.total_bytes, u.reserved_bytes, u.file_count)
}

// ---------------------------------------------------------------- stories

/// N concurrent reservations into room for floor(room/size): exactly that
/// many win, the rest are refused, and the reserved bytes add up.
async fn reservations_race_at_the_limit(open: Open) {
    let db = open().await;
    let (room, size, n) = (10_000u64, 700u64, 40);
    db.store.set_quota("alice", room).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            store.reserve("alice", 1, size, HOUR).await
        }));
    }
    let (mut won, mut refused) = (0u64, 0u64);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(MetaError::QuotaExceeded { needed, available }) => {
                assert_eq!(needed, size);
                assert!(available < size, "refused with {available} bytes free");
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won, room / size);
    assert_eq!(won + refused, n);
    assert_eq!(usage(&db, "alice").await, (0, (won * size) as i64, 0));
}

/// A reservation grows while the room lasts; growth past it is refused and
/// changes nothing.
async fn growth_past_the_room_is_refused(open: Open) {
    let db = open().await;
    db.store.set_quota("bob", 1000).await.unwrap();
    let r = db.store.reserve("bob", 1, 600, HOUR).await.unwrap();
    db.store.grow_reservation(r, 300, HOUR).await.unwrap();
    assert_eq!(usage(&db, "bob").await, (0, 900, 0));
    match db.store.grow_reservation(r, 200, HOUR).await {
        Err(MetaError::QuotaExceeded { needed, available }) => {
            assert_eq!((needed, available), (200, 100));
        }
        other => panic!("growth past the room: {other:?}"),
    }
    assert_eq!(usage(&db, "bob").await, (0, 900, 0));
    assert!(matches!(
        db.store.reserve("bob", 1, 101, HOUR).await,
        Err(MetaError::QuotaExceeded { .. })
    ));
    assert!(matches!(
        db.store.grow_reservation(Uuid::now_v7(), 1, HOUR).await,
        Err(MetaError::NotFound)
    ));
    // Released, the room is back.
    assert!(db.store.release(r).await.unwrap());
    assert!(!db.store.release(r).await.unwrap());
    assert_eq!(usage(&db, "bob").await, (0, 0, 0));
}

/// Commit releases the reservation; a reservation that expired meanwhile
/// commits only while the room is still there.
async fn commit_rechecks_the_room(open: Open) {
    let db = open().await;
    db.store.set_quota("carol", 1000).await.unwrap();
    // A live reservation commits and is released by the commit.
    let r = db.store.reserve("carol", 1, 300, HOUR).await.unwrap();
    let rec = db
        .store
        .commit_file(r, new_file(r, "carol", 300))
        .await
        .unwrap();
    assert_eq!(rec.upload_date, db.clock.now_at_micros());
    assert!(!db.store.reservation_exists(r).await.unwrap());
    assert_eq!(usage(&db, "carol").await, (300, 0, 1));

    // A reservation expires (the clock moves, the sweeper releases it) and
    // someone else takes the room.
    let late = db
        .store
        .reserve("carol", 1, 600, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(db
        .store
        .expired_reservations(db.clock.now_at_micros())
        .await
        .unwrap()
        .is_empty());
    db.clock.advance(Duration::from_secs(61));
    let now = db.clock.now_at_micros();
    assert_eq!(
        db.store.expired_reservations(now).await.unwrap(),
        vec![(late, "carol".to_string())]
    );
    assert_eq!(db.store.expire_reservations(now).await.unwrap(), 1);
    let other = db.store.reserve("carol", 1, 600, HOUR).await.unwrap();
    match db
        .store
        .commit_file(late, new_file(late, "carol", 600))
        .await
    {
        Err(MetaError::QuotaExceeded { needed, available }) => {
            assert_eq!((needed, available), (600, 100));
        }
        other => panic!("commit past the room: {other:?}"),
    }
    assert!(db.store.get_file("carol", late).await.unwrap().is_none());
    assert_eq!(usage(&db, "carol").await, (300, 600, 1));
    // With the room free again, the expired reservation's file fits.
    db.store.release(other).await.unwrap();
    db.store
        .commit_file(late, new_file(late, "carol", 600))
        .await
        .unwrap();
    assert_eq!(usage(&db, "carol").await, (900, 0, 2));
}

/// `total_bytes`/`file_count` follow every insert and delete exactly, also
/// under concurrent commits, and equal the row sums.
async fn triggers_keep_usage_exact(open: Open) {
    let db = open().await;
    let mut tasks = Vec::new();
    for i in 0..24i64 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let user = if i % 2 == 0 { "dave" } else { "erin" };
            let size = 100 + i;
            let rec = commit_one(&*store, user, size).await?;
            MetaResult::Ok((user, rec.id, size))
        }));
    }
    let mut files = Vec::new();
    for t in tasks {
        files.push(t.await.unwrap().unwrap());
    }
    let sum = |user: &str, files: &[(&str, Uuid, i64)]| {
        let mine: Vec<_> = files.iter().filter(|f| f.0 == user).collect();
        (mine.iter().map(|f| f.2).sum::<i64>(), mine.len() as i64)
    };
    for user in ["dave", "erin"] {
        let (bytes, n) = sum(user, &files);
        assert_eq!(usage(&db, user).await, (bytes, 0, n));
    }
    // Delete every third file.
    let mut kept = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        if i % 3 == 0 {
            let gone = db.store.delete_file(f.0, f.1).await.unwrap().unwrap();
            assert_eq!(gone.file_size, f.2);
            assert!(db.store.delete_file(f.0, f.1).await.unwrap().is_none());
        } else {
            kept.push(f);
        }
    }
    for user in ["dave", "erin"] {
        let (bytes, n) = sum(user, &kept);
        assert_eq!(usage(&db, user).await, (bytes, 0, n));
    }
    let totals = db.store.row_totals().await.unwrap();
    for (user, bytes, n) in &totals {
        let u = db.store.get_user(user).await.unwrap().unwrap();
        assert_eq!((u.total_bytes, u.file_count), (*bytes, *n), "{user}");
    }
    assert_eq!(db.store.repair_counters().await.unwrap(), 0);
    // Deleting a user removes its rows; the other's counters stay.
    let d = db.store.delete_user("dave").await.unwrap().unwrap();
    assert_eq!(d.bytes as i64, sum("dave", &kept).0);
    assert!(db.store.get_user("dave").await.unwrap().is_none());
    let (bytes, n) = sum("erin", &kept);
    assert_eq!(usage(&db, "erin").await, (bytes, 0, n));
}

/// Of many concurrent takers one holds the lease; it renews, others are
/// refused until it expires (the clock moves) or is released.
async fn task_lease_is_exclusive_and_expires(open: Open) {
    let db = open().await;
    let ttl = Duration::from_secs(60);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let me = format!("holder-{i}");
            let got = store.try_acquire_lease("audit", &me, ttl).await.unwrap();
            (me, got)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (me, got) = t.await.unwrap();
        if got {
            winners.push(me);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let a = winners.pop().unwrap();
    assert_eq!(
        db.store.lease_holder("audit").await.unwrap(),
        Some(a.clone())
    );
    // Another task's lease is independent.
    assert!(db
        .store
        .try_acquire_lease("backup", "x", ttl)
        .await
        .unwrap());
    // The holder renews; another is refused while it is live.
    db.clock.advance(Duration::from_secs(50));
    assert!(db.store.try_acquire_lease("audit", &a, ttl).await.unwrap());
    db.clock.advance(Duration::from_secs(50));
    assert!(!db
        .store
        .try_acquire_lease("audit", "late", ttl)
        .await
        .unwrap());
    // Expired: nobody holds it, and the next taker gets it.
    db.clock.advance(Duration::from_secs(11));
    assert_eq!(db.store.lease_holder("audit").await.unwrap(), None);
    assert!(db
        .store
        .try_acquire_lease("audit", "late", ttl)
        .await
        .unwrap());
    assert!(!db.store.try_acquire_lease("audit", &a, ttl).await.unwrap());
    // Only the holder's release counts.
    db.store.release_lease("audit", &a).await.unwrap();
    assert_eq!(
        db.store.lease_holder("audit").await.unwrap().as_deref(),
        Some("late")
    );
    db.store.release_lease("audit", "late").await.unwrap();
    assert_eq!(db.store.lease_holder("audit").await.unwrap(), None);
    // Runs are recorded.
    let id = db.store.task_run_started("audit", "late").await.unwrap();
    db.store.task_run_finished(id, "ok", "fine").await.unwrap();
    let runs = db.store.recent_task_runs(Some("audit"), 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome.as_deref(), Some("ok"));
    assert_eq!(runs[0].finished_at, Some(db.clock.now_at_micros()));
}

/// An expired lease goes to exactly one of many concurrent takers, and
/// its old holder can no longer renew it.
async fn an_expired_lease_goes_to_one_taker(open: Open) {
    let db = open().await;
    let ttl = Duration::from_secs(60);
    assert!(db
        .store
        .try_acquire_lease("audit", "old", ttl)
        .await
        .unwrap());
    db.clock.advance(Duration::from_secs(61));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let me = format!("holder-{i}");
            let got = store.try_acquire_lease("audit", &me, ttl).await.unwrap();
            (me, got)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (me, got) = t.await.unwrap();
        if got {
            winners.push(me);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(db.store.lease_holder("audit").await.unwrap(), winners.pop());
    assert!(!db
        .store
        .try_acquire_lease("audit", "old", ttl)
        .await
        .unwrap());
}

/// Concurrent claimers never get one job twice; a job whose lease expired
/// is claimed again.
async fn job_claims_are_exclusive(open: Open) {
    let db = open().await;
    let now = db.clock.now_at_micros();
    let mut queued = HashSet::new();
    for i in 0..40 {
        let id = db
            .store
            .enqueue_job("thumbnail", &format!("{{\"n\":{i}}}"), None, now)
            .await
            .unwrap();
        queued.insert(id);
    }
    // Not yet due.
    db.store
        .enqueue_job("later", "{}", None, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = store.claim_job(Duration::from_secs(60)).await.unwrap() {
                mine.push(job);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let ids: HashSet<Uuid> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), claimed.len(), "a job was claimed twice");
    assert_eq!(ids, queued);
    assert!(claimed
        .iter()
        .all(|j| j.attempts == 1 && j.kind == "thumbnail"));
    assert_eq!(db.store.queue_depth().await.unwrap(), 41);
    // Finish all but one; the unfinished one's lease expires.
    let stuck = claimed.pop().unwrap();
    for j in &claimed {
        db.store.complete_job(j.id).await.unwrap();
    }
    assert!(db.store.claim_job(HOUR).await.unwrap().is_none());
    db.clock.advance(Duration::from_secs(61));
    let again = db.store.claim_job(HOUR).await.unwrap().expect("reclaimed");
    assert_eq!((again.id, again.attempts), (stuck.id, 2));
    assert!(db.store.claim_job(HOUR).await.unwrap().is_none());
    db.store
        .fail_job(again.id, "boom", None, None)
        .await
        .unwrap();
    let failed = db.store.failed_jobs(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("boom"));
    // The later job becomes due.
    db.clock.advance(HOUR);
    let later = db.store.claim_job(HOUR).await.unwrap().expect("due now");
    assert_eq!(later.kind, "later");
}

/// Of many concurrent reservations with a cap on unfinished uploads,
/// exactly the cap's worth win though the room would take them all; a
/// released or expired reservation no longer counts.
async fn unfinished_uploads_are_capped(open: Open) {
    let db = open().await;
    let cap = 5u64;
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .reserve_upload("hana", 1 << 30, 10, HOUR, cap, None)
                .await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => won.push(id),
            Err(MetaError::TooManyUploads { limit }) => assert_eq!(limit, cap),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won.len() as u64, cap);
    assert_eq!(usage(&db, "hana").await, (0, 10 * cap as i64, 0));
    let capped = |r: MetaResult<_>| matches!(r, Err(MetaError::TooManyUploads { .. }));
    assert!(capped(
        db.store
            .reserve_upload("hana", 1, 10, HOUR, cap, None)
            .await
    ));
    // Released: one more fits, and the cap holds again.
    assert!(db.store.release(won[0]).await.unwrap());
    let short = db
        .store
        .reserve_upload("hana", 1, 10, Duration::from_secs(60), cap, None)
        .await
        .unwrap();
    assert!(capped(
        db.store
            .reserve_upload("hana", 1, 10, HOUR, cap, None)
            .await
    ));
    // Expired (not yet swept): it no longer counts.
    db.clock.advance(Duration::from_secs(61));
    db.store
        .reserve_upload("hana", 1, 10, HOUR, cap, None)
        .await
        .unwrap();
    assert!(db.store.reservation_exists(short).await.unwrap());
    // Another user has a cap of their own.
    db.store
        .reserve_upload("ivan", 1 << 30, 10, HOUR, cap, None)
        .await
        .unwrap();
}

/// Of concurrent uses of one signed upload URL exactly one takes it; the
/// rest see it used, and once expired it is gone.
async fn signed_upload_is_used_once(open: Open) {
    let db = open().await;
    let id = db.store.reserve("jon", 1 << 30, 100, HOUR).await.unwrap();
    let up = SignedUpload {
        id,
        user_id: "jon".into(),
        max_bytes: 100,
        file_type: Some(FileType::Image),
        file_name: Some("ünï.png".into()),
        expires_at: db.clock.now_at_micros() + chrono::Duration::minutes(10),
    };
    db.store.create_signed_upload(&up).await.unwrap();
    let now = db.clock.now_at_micros();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            store.claim_signed_upload(id, now).await.unwrap()
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            SignedClaim::Claimed(u) => claimed.push(u),
            SignedClaim::Used => {}
            SignedClaim::Missing => panic!("a live URL reported missing"),
        }
    }
    assert_eq!(claimed, vec![up.clone()]);
    assert_eq!(
        db.store
            .claim_signed_upload(Uuid::now_v7(), now)
            .await
            .unwrap(),
        SignedClaim::Missing
    );
    // An unused URL past its expiry cannot be used, and is swept.
    let late = SignedUpload {
        id: Uuid::now_v7(),
        file_type: None,
        file_name: None,
        ..up.clone()
    };
    db.store.create_signed_upload(&late).await.unwrap();
    let after = up.expires_at + chrono::Duration::seconds(1);
    assert_eq!(
        db.store.claim_signed_upload(late.id, after).await.unwrap(),
        SignedClaim::Missing
    );
    assert_eq!(db.store.expire_signed_uploads(now).await.unwrap(), 0);
    assert_eq!(db.store.expire_signed_uploads(after).await.unwrap(), 2);
    assert_eq!(
        db.store.claim_signed_upload(id, now).await.unwrap(),
        SignedClaim::Missing
    );
}

/// The reservations of a node's earlier incarnations, and of incarnations
/// whose heartbeat went silent, are named (and only theirs); forgetting
/// them removes their rows.
async fn gone_holders_are_named(open: Open) {
    let db = open().await;
    let node = Uuid::now_v7();
    let (old, new, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let t0 = db.clock.now_at_micros();
    let row = |incarnation: Uuid, node: Uuid| NodeRow {
        holder: Holder { node, incarnation },
        host: "host-ü".into(),
        pid: 4_000_000_123,
        started_at: t0,
        heartbeat_at: t0,
    };
    let other_node = Uuid::now_v7();
    for n in [row(old, node), row(new, node), row(other, other_node)] {
        db.store.heartbeat_node(&n).await.unwrap();
    }
    let held = |node, incarnation| Some(Holder { node, incarnation });
    let r_old = db
        .store
        .reserve_upload("kai", 1 << 30, 1, HOUR, u64::MAX, held(node, old))
        .await
        .unwrap();
    let r_new = db
        .store
        .reserve_upload("kai", 1 << 30, 1, HOUR, u64::MAX, held(node, new))
        .await
        .unwrap();
    let r_other = db
        .store
        .reserve_upload("kai", 1 << 30, 1, HOUR, u64::MAX, held(other_node, other))
        .await
        .unwrap();
    // A tus upload's reservation has no holder and is never named.
    db.store.reserve("kai", 1 << 30, 1, HOUR).await.unwrap();
    let kai = |ids: &[Uuid]| -> Vec<(Uuid, String)> {
        ids.iter().map(|id| (*id, "kai".to_string())).collect()
    };
    let restart = Gone::Node {
        node,
        except: Some(new),
    };
    assert_eq!(
        db.store.gone_reservations(&restart).await.unwrap(),
        kai(&[r_old])
    );
    let mut all = db
        .store
        .gone_reservations(&Gone::Node { node, except: None })
        .await
        .unwrap();
    all.sort();
    let mut want = kai(&[r_old, r_new]);
    want.sort();
    assert_eq!(all, want);
    // Only `new` keeps beating; `other` goes silent.
    db.clock.advance(Duration::from_secs(30));
    let t1 = db.clock.now_at_micros();
    db.store
        .heartbeat_node(&NodeRow {
            heartbeat_at: t1,
            ..row(new, node)
        })
        .await
        .unwrap();
    let silent = Gone::SilentSince(t1);
    let mut quiet = db.store.gone_reservations(&silent).await.unwrap();
    quiet.sort();
    want = kai(&[r_old, r_other]);
    want.sort();
    assert_eq!(quiet, want);
    let nodes = db.store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    let beat = nodes.iter().find(|n| n.holder.incarnation == new).unwrap();
    assert_eq!(
        beat,
        &NodeRow {
            heartbeat_at: t1,
            ..row(new, node)
        }
    );
    assert_eq!(db.store.forget_nodes(&restart).await.unwrap(), 1);
    assert_eq!(db.store.forget_nodes(&silent).await.unwrap(), 1);
    let left: Vec<_> = db.store.list_nodes().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].holder.incarnation, new);
    db.store.remove_node(new).await.unwrap();
    assert!(db.store.list_nodes().await.unwrap().is_empty());
    // With its row gone, `new`'s reservation is silent too.
    assert_eq!(db.store.gone_reservations(&silent).await.unwrap().len(), 3);
}

#[derive(Default)]
struct Rows {
    users: Vec<DumpUser>,
    files: Vec<DumpFile>,
}

#[async_trait::async_trait]
impl SnapshotSink for Rows {
    async fn user(&mut self, row: DumpUser) -> MetaResult<()> {
        assert!(self.files.is_empty(), "a user after the files");
        self.users.push(row);
        Ok(())
    }
    async fn file(&mut self, row: DumpFile) -> MetaResult<()> {
        self.files.push(row);
        Ok(())
    }
}

#[async_trait::async_trait]
impl RowSource for Rows {
    async fn next_user(&mut self) -> MetaResult<Option<DumpUser>> {
        Ok((!self.users.is_empty()).then(|| self.users.remove(0)))
    }
    async fn next_file(&mut self) -> MetaResult<Option<DumpFile>> {
        Ok((!self.files.is_empty()).then(|| self.files.remove(0)))
    }
}

async fn snapshot_of(db: &Db) -> Rows {
    let mut rows = Rows::default();
    db.store.snapshot(&mut rows).await.unwrap();
    rows
}

/// A snapshot restored into a fresh database reads back equal (the
/// counters rebuilt by the triggers), and a failed restore leaves nothing.
async fn snapshot_round_trip(open: Open) {
    let db = open().await;
    db.store.set_quota("frank", 5000).await.unwrap();
    db.store.set_quota("empty", 123).await.unwrap();
    let a = put(&db, "frank", 10).await;
    let b = put(&db, "frank", 20).await;
    put(&db, "gina", 30).await;
    db.store
        .set_media(
            a,
            &MediaUpdate {
                resolution: Some("10x10".into()),
                duration: Some("1.5".into()),
                thumbnail_path: Some("frank/thumbnails/a.webp".into()),
            },
        )
        .await
        .unwrap();
    db.store.set_favorite("frank", b, Some(true)).await.unwrap();
    db.store
        .set_tags("frank", b, &["x".into(), "ünï".into(), "".into()])
        .await
        .unwrap();
    // Uncommitted work is not part of a snapshot.
    db.store.reserve("frank", 1, 7, HOUR).await.unwrap();

    let before = snapshot_of(&db).await;
    assert_eq!(before.users.len(), 3);
    assert_eq!(before.files.len(), 3);
    assert_eq!(before.files[1].file.tags, vec!["x", "ünï", ""]);

    let fresh = open().await;
    assert!(!fresh.store.has_files().await.unwrap());
    let mut src = Rows {
        users: before.users.clone(),
        files: before.files.clone(),
    };
    fresh.store.restore_rows(&mut src).await.unwrap();
    assert!(fresh.store.has_files().await.unwrap());
    let after = snapshot_of(&fresh).await;
    assert_eq!(after.files, before.files);
    // `updated_at` is the restore's (the triggers write it); the rest equal.
    let strip = |u: &DumpUser| DumpUser {
        updated_at: DateTime::<Utc>::MIN_UTC,
        ..u.clone()
    };
    assert_eq!(
        after.users.iter().map(strip).collect::<Vec<_>>(),
        before.users.iter().map(strip).collect::<Vec<_>>()
    );
    for (u, _, _) in fresh.store.row_totals().await.unwrap() {
        let (src, dst) = (
            db.store.get_user(&u).await.unwrap().unwrap(),
            fresh.store.get_user(&u).await.unwrap().unwrap(),
        );
        assert_eq!(
            (src.max_bytes, src.total_bytes, src.file_count),
            (dst.max_bytes, dst.total_bytes, dst.file_count)
        );
        assert_eq!(dst.reserved_bytes, 0);
    }
    assert_eq!(
        fresh.store.get_file("frank", b).await.unwrap(),
        db.store.get_file("frank", b).await.unwrap()
    );

    // A restore that fails half-way (a duplicate row) leaves nothing.
    let other = open().await;
    let mut bad = Rows {
        users: before.users.clone(),
        files: vec![before.files[0].clone(), before.files[0].clone()],
    };
    assert!(other.store.restore_rows(&mut bad).await.is_err());
    assert!(!other.store.has_files().await.unwrap());
    assert!(other.store.list_users().await.unwrap().is_empty());
}

/// A sink that changes the database while the snapshot streams: at the
/// first user row, a new user and a new file appear and a file is deleted.
struct Meddling {
    rows: Rows,
    store: Arc<dyn MetaStore>,
    delete: (&'static str, Uuid),
    meddled: bool,
}

#[async_trait::async_trait]
impl SnapshotSink for Meddling {
    async fn user(&mut self, row: DumpUser) -> MetaResult<()> {
        if !self.meddled {
            self.meddled = true;
            for (user, size) in [("zed", 5), ("frank", 6)] {
                commit_one(&*self.store, user, size).await?;
            }
            let (user, id) = self.delete;
            assert!(self.store.delete_file(user, id).await?.is_some());
        }
        self.rows.user(row).await
    }
    async fn file(&mut self, row: DumpFile) -> MetaResult<()> {
        self.rows.file(row).await
    }
}

/// A snapshot sees one moment: what commits while it streams (here, after
/// its first row) is not in it, and what is deleted meanwhile still is.
async fn a_snapshot_is_one_moment(open: Open) {
    let db = open().await;
    let a = put(&db, "frank", 10).await;
    put(&db, "frank", 20).await;
    put(&db, "gina", 30).await;
    let before = snapshot_of(&db).await;
    let mut sink = Meddling {
        rows: Rows::default(),
        store: db.store.clone(),
        delete: ("frank", a),
        meddled: false,
    };
    db.store.snapshot(&mut sink).await.unwrap();
    assert!(sink.meddled);
    assert_eq!(sink.rows.users, before.users);
    assert_eq!(sink.rows.files, before.files);
    // The changes did commit.
    let now = snapshot_of(&db).await;
    assert_eq!(now.users.len(), 3);
    assert_eq!(now.files.len(), 4);
    assert!(now.files.iter().all(|f| f.file.id != a));
}

/// The clock's now at the precision the engines keep (a [`ManualClock`]
/// started at a whole microsecond stays on one).
trait AtMicros {
    fn now_at_micros(&self) -> DateTime<Utc>;
}

impl AtMicros for ManualClock {
    fn now_at_micros(&self) -> DateTime<Utc> {
        use stowage::meta::Clock;
        let n = self.now();
        DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap()
    }
}

/// Concurrent changes of one file: every toggle of the favourite flag
/// applies (an even number leaves it as it was); of many deletes exactly one
/// returns the row; a change of a deleted or another user's file answers
/// nothing; the counters stay exact.
async fn file_changes_race_cleanly(open: Open) {
    let db = open().await;
    let gone = put(&db, "fay", 100).await;
    let keep = put(&db, "fay", 50).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            store.set_favorite("fay", keep, None).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    let f = db.store.get_file("fay", keep).await.unwrap().unwrap();
    assert!(!f.is_favorite);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(
            async move { store.delete_file("fay", gone).await },
        ));
    }
    let mut won = 0;
    for t in tasks {
        if let Some(rec) = t.await.unwrap().unwrap() {
            assert_eq!((rec.id, rec.file_size), (gone, 100));
            won += 1;
        }
    }
    assert_eq!(won, 1);
    assert_eq!(usage(&db, "fay").await, (50, 0, 1));
    let rename = Rename {
        file_name: Some("y.bin".into()),
        package_name: Some(Some("p".into())),
    };
    let s = &db.store;
    assert!(s.get_file("fay", gone).await.unwrap().is_none());
    assert!(s
        .set_tags("fay", gone, &["x".into()])
        .await
        .unwrap()
        .is_none());
    assert!(s.rename_file("fay", gone, &rename).await.unwrap().is_none());
    assert!(!s.set_media(gone, &MediaUpdate::default()).await.unwrap());
    assert!(s
        .set_favorite("gil", keep, Some(true))
        .await
        .unwrap()
        .is_none());
    assert!(s.rename_file("gil", keep, &rename).await.unwrap().is_none());
    assert!(s.delete_file("gil", keep).await.unwrap().is_none());
    assert!(s.get_file("gil", keep).await.unwrap().is_none());
    // The owner's changes come back as the row now is.
    let f = s.rename_file("fay", keep, &rename).await.unwrap().unwrap();
    assert_eq!(
        (f.file_name.as_str(), f.package_name.as_deref()),
        ("y.bin", Some("p"))
    );
    let f = s
        .set_tags("fay", keep, &["t".into()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (f.tags, f.file_name),
        (vec!["t".to_string()], "y.bin".to_string())
    );
    let media = MediaUpdate {
        resolution: Some("1x1".into()),
        ..Default::default()
    };
    assert!(s.set_media(keep, &media).await.unwrap());
    let f = s.get_file_any(keep).await.unwrap().unwrap();
    assert_eq!(
        (f.resolution.as_deref(), f.is_favorite),
        (Some("1x1"), false)
    );
    let clear = Rename {
        file_name: None,
        package_name: Some(None),
    };
    let f = s.rename_file("fay", keep, &clear).await.unwrap().unwrap();
    assert_eq!((f.file_name.as_str(), f.package_name), ("y.bin", None));
    assert_eq!(usage(&db, "fay").await, (50, 0, 1));
}

/// The user's files, `limit` at a time by keyset cursor, in `sort`/`order`.
async fn pages(db: &Db, q: &ListQuery, limit: u32) -> Vec<FileRecord> {
    let mut out: Vec<FileRecord> = Vec::new();
    loop {
        let after = out.last().map(|f| Cursor {
            k: match q.sort {
                SortKey::UploadDate => f.upload_date.to_rfc3339(),
                SortKey::FileName => f.file_name.clone(),
                SortKey::FileSize => f.file_size.to_string(),
            },
            id: f.id,
        });
        let page = db
            .store
            .list_files(
                "hal",
                &ListQuery {
                    limit,
                    after,
                    ..q.clone()
                },
            )
            .await
            .unwrap();
        assert!(page.len() <= limit as usize);
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Every sort and order visits each file once by keyset pages, in the order
/// of one whole page; the filters narrow the listing; `q=` is a
/// case-insensitive substring with `%` and `_` literal, short and non-ASCII
/// texts included.
async fn listing_pages_filters_and_search(open: Open) {
    let db = open().await;
    let names = [
        "Beach_1.png",
        "beach%2.png",
        "BEACH 3.png",
        "mountain.png",
        "b_ach.png",
        "Été.png",
        "x",
    ];
    let mut ids = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let id = put(&db, "hal", 10 + i as i64).await;
        let to = Rename {
            file_name: Some(n.to_string()),
            package_name: None,
        };
        db.store.rename_file("hal", id, &to).await.unwrap().unwrap();
        ids.push(id);
        db.clock.advance(Duration::from_secs(1));
    }
    put(&db, "ivy", 5).await;
    for sort in [SortKey::UploadDate, SortKey::FileName, SortKey::FileSize] {
        for order in [SortOrder::Asc, SortOrder::Desc] {
            let q = ListQuery {
                sort,
                order,
                ..Default::default()
            };
            let whole = pages(&db, &q, 100).await;
            let paged = pages(&db, &q, 2).await;
            let ids_of = |v: &[FileRecord]| v.iter().map(|f| f.id).collect::<Vec<_>>();
            assert_eq!(ids_of(&paged), ids_of(&whole), "{sort:?} {order:?}");
            assert_eq!(whole.len(), names.len());
            if sort != SortKey::FileName {
                // Sizes and dates grow with the order of the puts.
                let mut want = ids.clone();
                if order == SortOrder::Desc {
                    want.reverse();
                }
                assert_eq!(ids_of(&whole), want, "{sort:?} {order:?}");
            }
        }
    }
    let s = &db.store;
    s.set_favorite("hal", ids[0], Some(true)).await.unwrap();
    s.set_tags("hal", ids[1], &["sun".into()]).await.unwrap();
    let dbr = &db;
    let list = |q: ListQuery| async move {
        let mut got: Vec<String> = pages(dbr, &q, 3)
            .await
            .into_iter()
            .map(|f| f.file_name)
            .collect();
        got.sort();
        got
    };
    let search = |text: &str| ListQuery {
        q: Some(text.into()),
        ..Default::default()
    };
    let sorted = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let cases: &[(&str, &[&str])] = &[
        ("beach", &["BEACH 3.png", "Beach_1.png", "beach%2.png"]),
        ("EACH", &["BEACH 3.png", "Beach_1.png", "beach%2.png"]),
        ("b_", &["b_ach.png"]),
        ("_", &["Beach_1.png", "b_ach.png"]),
        ("h%2", &["beach%2.png"]),
        ("%", &["beach%2.png"]),
        ("h 3", &["BEACH 3.png"]),
        ("été", &["Été.png"]),
        ("ÉT", &["Été.png"]),
        ("x", &["x"]),
        ("zzz", &[]),
        ("b!a", &[]),
    ];
    for (text, want) in cases {
        assert_eq!(list(search(text)).await, sorted(want), "q={text:?}");
    }
    let fav = ListQuery {
        favorite: Some(true),
        ..Default::default()
    };
    assert_eq!(list(fav).await, sorted(&["Beach_1.png"]));
    let sun = ListQuery {
        tag: Some("sun".into()),
        ..Default::default()
    };
    assert_eq!(list(sun).await, sorted(&["beach%2.png"]));
    let spaced = ListQuery {
        tag: Some("b c".into()),
        q: Some("BEACH".into()),
        ..Default::default()
    };
    assert_eq!(list(spaced).await, sorted(&["BEACH 3.png", "Beach_1.png"]));
    let images = ListQuery {
        file_type: Some(FileType::Image),
        ..Default::default()
    };
    assert!(list(images).await.is_empty());
    let projects = ListQuery {
        file_type: Some(FileType::Project),
        favorite: Some(false),
        ..Default::default()
    };
    assert_eq!(list(projects).await.len(), names.len() - 1);
    let bad = ListQuery {
        sort: SortKey::FileSize,
        after: Some(Cursor {
            k: "ten".into(),
            id: ids[0],
        }),
        limit: 5,
        ..Default::default()
    };
    assert!(matches!(
        s.list_files("hal", &bad).await,
        Err(MetaError::Conflict(_))
    ));
    let by_type = s.usage_by_type("hal").await.unwrap();
    let total: i64 = (0..names.len() as i64).map(|i| 10 + i).sum();
    assert_eq!(by_type.len(), 1);
    assert_eq!(by_type[0].0, FileType::Project);
    assert_eq!(
        (by_type[0].1.bytes, by_type[0].1.count),
        (total, names.len() as i64)
    );
    assert_eq!(s.all_files(Some("hal")).await.unwrap().len(), names.len());
    assert_eq!(s.all_files(None).await.unwrap().len(), names.len() + 1);
    let to = Rename {
        file_name: None,
        package_name: Some(Some("trip".into())),
    };
    s.rename_file("hal", ids[2], &to).await.unwrap().unwrap();
    s.rename_file("hal", ids[0], &to).await.unwrap().unwrap();
    let pkg: Vec<_> = s.package_files("hal", "trip").await.unwrap();
    assert_eq!(
        pkg.iter().map(|f| f.id).collect::<Vec<_>>(),
        [ids[0], ids[2]]
    );
}

/// `n` files of `user`, one in `rare` of them audio and the others images,
/// with sizes, names and dates in different orders; committed by 8 tasks at
/// once.
async fn seed_files(db: &Db, user: &str, n: usize, rare: usize) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (store, clock, user) = (db.store.clone(), db.clock.clone(), user.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(8) {
                let size = 1 + (i as i64 * 7919) % 100_000;
                let r = store
                    .reserve(&user, 1 << 40, size as u64, HOUR)
                    .await
                    .unwrap();
                let mut f = new_file(r, &user, size);
                f.file_name = format!("{:05}-{i}.bin", (i * 104_729) % 99_991);
                f.file_type = if i % rare == 0 {
                    FileType::Audio
                } else {
                    FileType::Image
                };
                store.commit_file(r, f).await.unwrap();
                clock.advance(Duration::from_millis(1));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Whether `plan` (from [`FileStore::listing_plan`]) walks a per-user
/// index (`index`, when given) in the listing's order, from the cursor's
/// key when `cursor`: no sort of the rows, no scan of the table, no index
/// of all users' rows.
fn walks_index(engine: &str, plan: &str, index: Option<&str>, cursor: bool) -> Result<(), String> {
    let uses = |name: &str| match engine {
        "mariadb" => plan.contains(&format!("\"key\": \"{name}")),
        _ => plan.contains(name),
    };
    if !uses("idx_user_files_user_") {
        return Err("no per-user index".into());
    }
    if let Some(i) = index.filter(|i| !uses(i)) {
        return Err(format!("not {i}"));
    }
    let sorted = match engine {
        "sqlite" => plan.contains("TEMP B-TREE") || plan.contains("SCAN user_files"),
        "postgres" => plan
            .lines()
            .any(|l| l.contains("Sort") || l.contains("Seq Scan") || l.contains("Bitmap")),
        _ => plan.contains("filesort") || plan.contains("\"access_type\": \"ALL\""),
    };
    if sorted {
        return Err("sorts or scans".into());
    }
    let from_cursor = match engine {
        "sqlite" => plan.contains(",id)<(") || plan.contains(",id)>("),
        "postgres" => plan
            .lines()
            .any(|l| l.contains("Index Cond") && l.contains("ROW(")),
        _ => plan.contains("\"access_type\": \"range\""),
    };
    if cursor && !from_cursor {
        return Err("does not start at the cursor".into());
    }
    Ok(())
}

/// With enough rows for the planner to weigh its choices (and their
/// statistics gathered), every sort and order, with and without a cursor,
/// unfiltered and `type=`, walks the user's index for that order from the
/// cursor: no sort, no full scan, no index across all users. Favorites
/// (`favorite=true`, alone and with `type=`) walk the favorites' index.
async fn every_listing_order_walks_an_index(open: Open) {
    let db = open().await;
    seed_files(&db, "big", 2400, 40).await;
    seed_files(&db, "small", 300, 2).await;
    // A few favorites among many files (one in 40, and a third of the
    // audio), and many for the other user.
    for (user, every) in [("big", 40), ("small", 2)] {
        let all = db
            .store
            .list_files(
                user,
                &ListQuery {
                    limit: 10_000,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let chosen = all
            .iter()
            .enumerate()
            .filter(|(i, f)| i % every == 0 || (f.file_type == FileType::Audio && i % 3 == 0));
        for (_, f) in chosen {
            db.store
                .set_favorite(user, f.id, Some(true))
                .await
                .unwrap()
                .expect("the file");
        }
    }
    let engine = db.engine;
    let mut bad = Vec::new();
    for sort in [SortKey::UploadDate, SortKey::FileName, SortKey::FileSize] {
        let key = match sort {
            SortKey::UploadDate => "date",
            SortKey::FileName => "name",
            SortKey::FileSize => "size",
        };
        for order in [SortOrder::Asc, SortOrder::Desc] {
            for (file_type, favorite) in [
                (None, None),
                (Some(FileType::Audio), None),
                (None, Some(true)),
                (Some(FileType::Audio), Some(true)),
            ] {
                let q = ListQuery {
                    sort,
                    order,
                    file_type,
                    favorite,
                    limit: if favorite.is_some() { 7 } else { 51 },
                    ..Default::default()
                };
                let first = db.store.list_files("big", &q).await.unwrap();
                let last = first.last().expect("a page");
                let after = Cursor {
                    k: match sort {
                        SortKey::UploadDate => last.upload_date.to_rfc3339(),
                        SortKey::FileName => last.file_name.clone(),
                        SortKey::FileSize => last.file_size.to_string(),
                    },
                    id: last.id,
                };
                // MySQL/MariaDB have no (user_id, file_type, file_name, id)
                // (migration 0011): a type= listing by name walks the name's.
                // Favorites walk their own index (migration 0012); with
                // type= too, PostgreSQL may take the type's as well (both
                // hold few of the user's rows).
                let index = match (file_type, favorite, engine) {
                    (Some(_), Some(_), "postgres") => None,
                    (_, Some(_), _) => Some(format!("idx_user_files_user_fav_{key}")),
                    (Some(_), None, "mariadb") if sort == SortKey::FileName => {
                        Some(format!("idx_user_files_user_{key}"))
                    }
                    (Some(_), None, _) => Some(format!("idx_user_files_user_type_{key}")),
                    (None, None, _) => Some(format!("idx_user_files_user_{key}")),
                };
                for cursor in [false, true] {
                    let q = ListQuery {
                        after: cursor.then(|| after.clone()),
                        ..q.clone()
                    };
                    let plan = db.store.listing_plan("big", &q).await.unwrap();
                    if let Err(why) = walks_index(engine, &plan, index.as_deref(), cursor) {
                        bad.push(format!(
                            "{sort:?} {order:?} type={file_type:?} favorite={favorite:?} \
                             cursor={cursor}: {why}\n{plan}"
                        ));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "{engine}:\n{}", bad.join("\n\n"));
}

/// `q=` lists the same files in the same order whichever way the engine
/// matches them: texts most names hold (dense: tested row by row along the
/// sort order's index), texts few hold (sparse: found first by the trigram
/// or name index, then sorted) and none, in every sort and order, with and
/// without `type=`, by pages of 7 (where 600 matches are dense) and of 1000
/// (where they are not). The reference is the unfiltered listing, filtered
/// here. Where the name index finds a rare text first (MySQL/MariaDB; SQLite
/// under three characters), its page is read by primary key, not by walking
/// the sort order's index over every row of the user.
async fn search_is_the_same_dense_or_sparse(open: Open) {
    let db = open().await;
    seed_files(&db, "hal", 600, 7).await;
    seed_files(&db, "ivy", 50, 2).await;
    let ids_of = |v: &[FileRecord]| v.iter().map(|f| f.id).collect::<Vec<_>>();
    for file_type in [None, Some(FileType::Audio)] {
        for sort in [SortKey::UploadDate, SortKey::FileName, SortKey::FileSize] {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                let q = ListQuery {
                    sort,
                    order,
                    file_type,
                    ..Default::default()
                };
                let every = pages(&db, &q, 1000).await;
                for text in ["-", ".BIN", "5", "-12", "-123.", "zzz"] {
                    let lower = text.to_lowercase();
                    let want: Vec<Uuid> = every
                        .iter()
                        .filter(|f| f.file_name.to_lowercase().contains(&lower))
                        .map(|f| f.id)
                        .collect();
                    let q = ListQuery {
                        q: Some(text.into()),
                        ..q.clone()
                    };
                    let case = format!("q={text:?} {sort:?} {order:?} type={file_type:?}");
                    assert_eq!(ids_of(&pages(&db, &q, 1000).await), want, "{case}");
                    assert_eq!(ids_of(&pages(&db, &q, 7).await), want, "{case}, pages of 7");
                }
            }
        }
    }
    // A rare text found in the name index (MariaDB; SQLite under three
    // characters) is listed by primary key, not by walking the date index.
    let rare = match db.engine {
        "mariadb" => Some((
            "-123.",
            "\"key\": \"PRIMARY\"",
            "\"key\": \"idx_user_files_user_date\"",
        )),
        "sqlite" => Some(("-1", "(id=?)", "idx_user_files_user_date")),
        _ => None,
    };
    if let Some((text, uses, walks)) = rare {
        let q = ListQuery {
            q: Some(text.into()),
            limit: 50,
            ..Default::default()
        };
        let plan = db.store.listing_plan("hal", &q).await.unwrap();
        assert!(
            plan.contains(uses) && !plan.contains(walks),
            "a rare q={text:?} walks the sort order's index:\n{plan}"
        );
    }
}

/// `listing_plan` for a page after a cursor whose id's bytes are not
/// UTF-8 (MariaDB's plan quotes the binary id as it is; a random id made
/// this fail now and then).
async fn a_plan_takes_any_cursor(open: Open) {
    let db = open().await;
    for n in 1..=40 {
        let f = put(&db, "kim", n).await;
        if n % 2 == 0 {
            db.store
                .set_favorite("kim", f, Some(true))
                .await
                .unwrap()
                .expect("the file");
        }
    }
    let mut id = [0x11u8; 16];
    id[..4].copy_from_slice(&[0xed, 0xa9, 0x95, 0xff]);
    for sort in [SortKey::UploadDate, SortKey::FileName, SortKey::FileSize] {
        let k = match sort {
            SortKey::UploadDate => start_time().to_rfc3339(),
            SortKey::FileName => "m.png".into(),
            SortKey::FileSize => "10".into(),
        };
        for favorite in [None, Some(true)] {
            let q = ListQuery {
                sort,
                favorite,
                limit: 7,
                after: Some(Cursor {
                    k: k.clone(),
                    id: Uuid::from_bytes(id),
                }),
                ..Default::default()
            };
            let plan = db.store.listing_plan("kim", &q).await;
            assert!(plan.is_ok(), "{sort:?} favorite={favorite:?}: {plan:?}");
        }
    }
}

/// `q=` finds a file by its name of now, never by the one it had: after a
/// rename (to another name, to a change of case, to a trailing space that
/// the columns' collation would call the same name), a deletion and the
/// deletion of its user. On MySQL/MariaDB these are the trigram table's
/// triggers (migration 0013), which a rare text goes
/// through; the plan's first line says so.
async fn search_follows_renames_and_deletions(open: Open) {
    let db = open().await;
    let s = &db.store;
    let rename = |user: &'static str, id: Uuid, name: &'static str| async move {
        let to = Rename {
            file_name: Some(name.to_string()),
            package_name: None,
        };
        s.rename_file(user, id, &to)
            .await
            .unwrap()
            .expect("the file exists");
    };
    let a = put(&db, "hal", 1).await;
    let b = put(&db, "hal", 2).await;
    let c = put(&db, "hal", 3).await;
    rename("hal", a, "Beach.png").await;
    rename("hal", b, "Notes.txt").await;
    rename("hal", c, "Été.jpg").await;
    let other = put(&db, "ivy", 4).await;
    rename("ivy", other, "beach-ivy.png").await;
    let dbr = &db;
    let found = |user: &'static str, text: &'static str| async move {
        let q = ListQuery {
            q: Some(text.into()),
            limit: 100,
            ..Default::default()
        };
        let mut v: Vec<String> = dbr
            .store
            .list_files(user, &q)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.file_name)
            .collect();
        v.sort();
        v
    };
    assert_eq!(found("hal", "beach").await, ["Beach.png"]);
    assert_eq!(found("hal", "ÉTÉ").await, ["Été.jpg"]);

    rename("hal", a, "Shore.png").await;
    assert!(found("hal", "beach").await.is_empty());
    assert_eq!(found("hal", "shore").await, ["Shore.png"]);
    assert_eq!(found("ivy", "beach").await, ["beach-ivy.png"]);

    rename("hal", b, "NOTES.TXT").await;
    assert_eq!(found("hal", "notes").await, ["NOTES.TXT"]);
    rename("hal", b, "NOTES.TXT ").await;
    assert_eq!(found("hal", "TXT ").await, ["NOTES.TXT "]);
    rename("hal", c, "Ete.jpg").await;
    assert!(found("hal", "été").await.is_empty());
    assert_eq!(found("hal", "ete.").await, ["Ete.jpg"]);

    s.delete_file("hal", a).await.unwrap().unwrap();
    assert!(found("hal", "shore").await.is_empty());

    // MySQL/MariaDB: the trigram table holds no piece of a name that is
    // gone (deleted, renamed away): a text only such a name held finds no
    // name holding its piece, and nothing more is read.
    let mariadb = db.engine == "mariadb";
    let route = |text: &'static str| async move {
        let q = ListQuery {
            q: Some(text.into()),
            ..Default::default()
        };
        let plan = dbr.store.listing_plan("hal", &q).await.unwrap();
        plan.lines().next().unwrap_or("").to_string()
    };
    const NONE: &str = "q=: the trigram table: no name holds one of the text's pieces";
    if mariadb {
        assert_eq!(
            route("notes").await,
            "q=: the trigram table names the candidates"
        );
        assert_eq!(
            route("shore").await,
            NONE,
            "a deleted file's pieces are left"
        );
        assert_eq!(
            route("été").await,
            NONE,
            "a renamed file's old pieces are left"
        );
        assert_eq!(
            route("beach").await,
            NONE,
            "a renamed file's old pieces are left"
        );
        assert_eq!(route("ab").await, "q=: the name index names the files");
    }

    s.delete_user("hal").await.unwrap();
    let again = put(&db, "hal", 5).await;
    rename("hal", again, "Again.png").await;
    assert!(found("hal", "notes").await.is_empty());
    assert_eq!(found("hal", "again").await, ["Again.png"]);
    assert_eq!(found("ivy", "beach").await, ["beach-ivy.png"]);
    if mariadb {
        assert_eq!(
            route("notes").await,
            NONE,
            "a deleted user's pieces are left"
        );
    }
}

/// Reserves `size` for `user` and creates a resumable upload on that
/// reservation (same id), unleased unless `lock` is given, expiring in `ttl`.
async fn new_upload(
    db: &Db,
    user: &str,
    size: i64,
    ttl: Duration,
    lock: Option<(Uuid, DateTime<Utc>)>,
) -> TusUpload {
    let id = db
        .store
        .reserve(user, 1 << 40, size as u64, HOUR)
        .await
        .expect("reserve");
    let now = db.clock.now_at_micros();
    let up = TusUpload {
        id,
        user_id: user.into(),
        upload_length: size,
        upload_offset: 0,
        metadata: "{\"filename\":\"a.bin\"}".into(),
        expires_at: now + chrono::Duration::from_std(ttl).unwrap(),
        created_at: now,
        hash_state: None,
    };
    db.store.create_tus_upload(&up, lock).await.expect("create");
    up
}

fn progress(db: &Db, offset: u64, completing: bool) -> TusProgress {
    TusProgress {
        offset,
        hash_state: Some(vec![1, 2, 3]),
        expires_at: db.clock.now_at_micros() + chrono::Duration::hours(1),
        completing,
    }
}

/// `owner` records progress to `offset` and keeps the lease, as an append
/// does before completing; false when the lease is not `owner`'s.
async fn records_progress(db: &Db, id: Uuid, owner: Uuid, offset: u64, completing: bool) -> bool {
    let p = progress(db, offset, completing);
    db.store
        .record_tus_progress(id, owner, &p, HOUR, false)
        .await
        .unwrap()
        != TusRecorded::Lost
}

/// Of many concurrent requests one takes an upload's lease; the others see
/// it busy. A takeover request is acknowledged by the holder's check; a
/// completing holder keeps its lease against takeover and break; a lease
/// that ran out (the clock moves) is taken by the next request, and the old
/// holder's writes then change nothing.
async fn tus_lease_is_exclusive(open: Open) {
    let db = open().await;
    let up = new_upload(&db, "dora", 1000, HOUR, None).await;
    let now = db.clock.now_at_micros();
    assert_eq!(
        db.store.get_tus_upload("dora", up.id, now).await.unwrap(),
        Some(up.clone())
    );
    assert_eq!(
        db.store.get_tus_upload("eve", up.id, now).await.unwrap(),
        None
    );
    let lease = now + chrono::Duration::seconds(60);
    let expires = now + chrono::Duration::hours(2);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let me = Uuid::now_v7();
            let got = store
                .lock_tus_upload("dora", up.id, me, lease, expires)
                .await;
            (me, got.unwrap())
        }));
    }
    let (mut winners, mut busy) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            (me, TusLock::Acquired(row)) => {
                assert_eq!(row.expires_at, expires);
                winners.push(me);
            }
            (_, TusLock::Busy(h)) => busy.push(h.owner),
            (_, TusLock::Missing) => panic!("the upload went missing"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let a = winners[0];
    assert!(
        busy.iter().all(|&o| o == a),
        "busy with {busy:?}, held by {a}"
    );
    let held = |takeover, completing| TusHolder {
        owner: a,
        takeover,
        completing,
    };
    assert_eq!(
        db.store.tus_holder(up.id, now).await.unwrap(),
        Some(held(Takeover::None, false))
    );
    assert_eq!(
        db.store
            .lock_tus_upload("eve", up.id, Uuid::now_v7(), lease, expires)
            .await
            .unwrap(),
        TusLock::Missing
    );
    // Only the holder writes.
    let b = Uuid::now_v7();
    assert!(!records_progress(&db, up.id, b, 10, false).await);
    assert!(!db.store.set_tus_length(up.id, b, 900, "{}").await.unwrap());
    assert!(records_progress(&db, up.id, a, 10, false).await);
    let row = db
        .store
        .get_tus_upload("dora", up.id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.upload_offset, row.hash_state),
        (10, Some(vec![1, 2, 3]))
    );
    assert_eq!(
        db.store.check_tus_lock(up.id, b, None).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(
        db.store.check_tus_lock(up.id, a, None).await.unwrap(),
        LeaseCheck::Held
    );

    // A takeover request is seen by the holder's next check, once acknowledged.
    assert!(!db.store.request_tus_takeover(up.id, b).await.unwrap());
    assert!(db.store.request_tus_takeover(up.id, a).await.unwrap());
    assert!(db.store.request_tus_takeover(up.id, a).await.unwrap());
    assert_eq!(
        db.store.tus_holder(up.id, now).await.unwrap(),
        Some(held(Takeover::Requested, false))
    );
    assert_eq!(
        db.store.check_tus_lock(up.id, a, None).await.unwrap(),
        LeaseCheck::TakeoverRequested
    );
    assert_eq!(
        db.store.tus_holder(up.id, now).await.unwrap(),
        Some(held(Takeover::Releasing, false))
    );
    db.store.unlock_tus_upload(up.id, b).await.unwrap();
    assert!(db.store.tus_holder(up.id, now).await.unwrap().is_some());
    db.store.unlock_tus_upload(up.id, a).await.unwrap();
    assert_eq!(db.store.tus_holder(up.id, now).await.unwrap(), None);

    // Retaken, renewed past its first deadline, then completing: neither a
    // takeover request nor a break takes it while it is live.
    let TusLock::Acquired(_) = db
        .store
        .lock_tus_upload("dora", up.id, a, lease, expires)
        .await
        .unwrap()
    else {
        panic!("a free lease is taken");
    };
    db.clock.advance(Duration::from_secs(50));
    let renewed = lease + chrono::Duration::seconds(60);
    assert_eq!(
        db.store
            .check_tus_lock(up.id, a, Some(renewed))
            .await
            .unwrap(),
        LeaseCheck::Held
    );
    assert_eq!(
        db.store
            .check_tus_lock(up.id, b, Some(renewed))
            .await
            .unwrap(),
        LeaseCheck::Lost
    );
    db.clock.advance(Duration::from_secs(50));
    let now = db.clock.now_at_micros();
    assert!(matches!(
        db.store.lock_tus_upload("dora", up.id, b, renewed, expires).await.unwrap(),
        TusLock::Busy(h) if h.owner == a
    ));
    assert!(records_progress(&db, up.id, a, 1000, true).await);
    assert!(!db.store.request_tus_takeover(up.id, a).await.unwrap());
    assert!(!db.store.break_tus_lock(up.id, a, now).await.unwrap());
    assert_eq!(
        db.store.tus_holder(up.id, now).await.unwrap(),
        Some(held(Takeover::None, true))
    );
    // A renewal acknowledges a request made before the holder was completing.
    assert!(records_progress(&db, up.id, a, 1000, false).await);
    assert!(db.store.request_tus_takeover(up.id, a).await.unwrap());
    assert_eq!(
        db.store
            .check_tus_lock(up.id, a, Some(renewed))
            .await
            .unwrap(),
        LeaseCheck::TakeoverRequested
    );
    assert_eq!(
        db.store.tus_holder(up.id, now).await.unwrap(),
        Some(held(Takeover::Releasing, false))
    );

    // The lease runs out: the next request takes it; the old holder's
    // progress is refused and its check finds the lease lost.
    db.clock.advance(Duration::from_secs(21));
    let now = db.clock.now_at_micros();
    assert_eq!(db.store.tus_holder(up.id, now).await.unwrap(), None);
    let later = now + chrono::Duration::seconds(60);
    let TusLock::Acquired(row) = db
        .store
        .lock_tus_upload("dora", up.id, b, later, expires)
        .await
        .unwrap()
    else {
        panic!("a lease that ran out is taken");
    };
    assert_eq!(row.upload_offset, 1000);
    assert_eq!(
        db.store.tus_holder(up.id, now).await.unwrap(),
        Some(TusHolder {
            owner: b,
            takeover: Takeover::None,
            completing: false
        })
    );
    assert!(!records_progress(&db, up.id, a, 5, false).await);
    assert_eq!(
        db.store.check_tus_lock(up.id, a, None).await.unwrap(),
        LeaseCheck::Lost
    );
    // A live holder taken for dead loses it to a break.
    assert!(!db.store.break_tus_lock(up.id, a, now).await.unwrap());
    assert!(db.store.break_tus_lock(up.id, b, now).await.unwrap());
    assert_eq!(db.store.tus_holder(up.id, now).await.unwrap(), None);
    assert_eq!(
        db.store.check_tus_lock(up.id, b, None).await.unwrap(),
        LeaseCheck::Lost
    );
    // The length learned late is written under the lease.
    let TusLock::Acquired(_) = db
        .store
        .lock_tus_upload("dora", up.id, a, later, expires)
        .await
        .unwrap()
    else {
        panic!("a broken lease is free");
    };
    assert!(db
        .store
        .set_tus_length(up.id, a, 1000, "{\"x\":1}")
        .await
        .unwrap());
    let row = db
        .store
        .get_tus_upload("dora", up.id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.upload_length, row.metadata.as_str()),
        (1000, "{\"x\":1}")
    );
}

/// The end of an append is one transaction: progress, the reservation's
/// new expiry and (when asked) the lease's release. Without the lease
/// nothing changes, not even the reservation; a reservation that is gone
/// does not stop the progress from being recorded.
async fn tus_progress_is_recorded_at_once(open: Open) {
    let db = open().await;
    let now = db.clock.now_at_micros();
    let lease = now + chrono::Duration::seconds(60);
    let later = 3 * HOUR;
    let a = Uuid::now_v7();
    let up = new_upload(&db, "gus", 500, HOUR, Some((a, lease))).await;
    let row = |id| {
        let store = db.store.clone();
        async move {
            let r = store.get_tus_upload("gus", id, now).await.unwrap().unwrap();
            (r.upload_offset, r.hash_state)
        }
    };
    let held_by = |owner| {
        Some(TusHolder {
            owner,
            takeover: Takeover::None,
            completing: false,
        })
    };
    let record = |id, owner, offset, release| {
        let store = db.store.clone();
        let p = progress(&db, offset, false);
        async move {
            store
                .record_tus_progress(id, owner, &p, later, release)
                .await
                .unwrap()
        }
    };

    // Not the holder: nothing changes.
    assert_eq!(
        record(up.id, Uuid::now_v7(), 10, true).await,
        TusRecorded::Lost
    );
    assert_eq!(row(up.id).await, (0, None));
    assert_eq!(db.store.tus_holder(up.id, now).await.unwrap(), held_by(a));
    // The holder records and keeps the lease, then records and lets go.
    assert_eq!(record(up.id, a, 10, false).await, TusRecorded::Recorded);
    assert_eq!(row(up.id).await, (10, Some(vec![1, 2, 3])));
    assert_eq!(db.store.tus_holder(up.id, now).await.unwrap(), held_by(a));
    assert_eq!(record(up.id, a, 20, true).await, TusRecorded::Recorded);
    assert_eq!(row(up.id).await, (20, Some(vec![1, 2, 3])));
    assert_eq!(db.store.tus_holder(up.id, now).await.unwrap(), None);
    assert_eq!(
        db.store.check_tus_lock(up.id, a, None).await.unwrap(),
        LeaseCheck::Lost
    );
    // Released: the former holder writes nothing more.
    assert_eq!(record(up.id, a, 30, false).await, TusRecorded::Lost);
    assert_eq!(row(up.id).await.0, 20);

    // The reservation is gone: the progress is recorded all the same.
    let b = Uuid::now_v7();
    let gone = new_upload(&db, "gus", 100, HOUR, Some((b, lease))).await;
    assert!(db.store.release(gone.id).await.unwrap());
    assert_eq!(
        record(gone.id, b, 40, true).await,
        TusRecorded::NoReservation
    );
    assert_eq!(row(gone.id).await.0, 40);
    assert_eq!(db.store.tus_holder(gone.id, now).await.unwrap(), None);

    // A lost lease did not push its reservation; a recorded one did.
    let c = Uuid::now_v7();
    let lost = new_upload(&db, "gus", 100, HOUR, Some((c, lease))).await;
    assert_eq!(
        record(lost.id, Uuid::now_v7(), 50, true).await,
        TusRecorded::Lost
    );
    db.clock.advance(2 * HOUR);
    let expired: Vec<Uuid> = db
        .store
        .expired_reservations(db.clock.now_at_micros())
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(expired.contains(&lost.id), "{expired:?}");
    assert!(!expired.contains(&up.id), "{expired:?}");
}

/// Of concurrent completions of one upload exactly one commits its file
/// (in the transaction that deletes the row under the lease and releases
/// the reservation); a completion whose lease was lost changes nothing.
/// Termination and expiry leave a leased upload alone.
async fn tus_upload_completes_once(open: Open) {
    let db = open().await;
    let now = db.clock.now_at_micros();
    let owner = Uuid::now_v7();
    let lease = now + chrono::Duration::seconds(60);
    let up = new_upload(&db, "fay", 400, HOUR, Some((owner, lease))).await;
    assert_eq!(usage(&db, "fay").await, (0, 400, 0));
    // Not the holder: refused, nothing changes.
    match db
        .store
        .complete_tus_upload(Uuid::now_v7(), new_file(up.id, "fay", 400))
        .await
    {
        Err(MetaError::Conflict(_)) => {}
        other => panic!("completion without the lease: {other:?}"),
    }
    assert!(db
        .store
        .get_tus_upload("fay", up.id, now)
        .await
        .unwrap()
        .is_some());
    assert_eq!(usage(&db, "fay").await, (0, 400, 0));
    // Termination and expiry wait for the lease.
    assert!(matches!(
        db.store.terminate_tus_upload("fay", up.id, now).await.unwrap(),
        TusLock::Busy(h) if h.owner == owner
    ));
    let far = now + chrono::Duration::hours(2);
    assert!(db.store.expire_tus_uploads(now).await.unwrap().is_empty());
    assert!(db.store.expire_tus_uploads(lease).await.unwrap().is_empty());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .complete_tus_upload(owner, new_file(up.id, "fay", 400))
                .await
        }));
    }
    let (mut done, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(rec) => {
                assert_eq!((rec.id, rec.file_size), (up.id, 400));
                done += 1;
            }
            Err(MetaError::Conflict(_)) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((done, refused), (1, 7));
    assert_eq!(usage(&db, "fay").await, (400, 0, 1));
    assert!(!db.store.reservation_exists(up.id).await.unwrap());
    assert!(db.store.get_file("fay", up.id).await.unwrap().is_some());
    assert_eq!(
        db.store
            .terminate_tus_upload("fay", up.id, now)
            .await
            .unwrap(),
        TusLock::Missing
    );

    // A completion that does not fit rolls back whole: the row and its
    // lease stay.
    db.store.set_quota("fay", 600).await.unwrap();
    let big = new_upload(&db, "fay", 100, HOUR, Some((owner, lease))).await;
    match db
        .store
        .complete_tus_upload(owner, new_file(big.id, "fay", 300))
        .await
    {
        Err(MetaError::QuotaExceeded { needed, available }) => {
            assert_eq!(needed, 300);
            assert!(available < 300, "refused with {available} bytes free");
        }
        other => panic!("completion past the room: {other:?}"),
    }
    assert!(db.store.get_file("fay", big.id).await.unwrap().is_none());
    assert!(db.store.reservation_exists(big.id).await.unwrap());
    assert_eq!(
        db.store
            .tus_holder(big.id, now)
            .await
            .unwrap()
            .map(|h| h.owner),
        Some(owner)
    );
    db.store.release(big.id).await.unwrap();
    assert!(db.store.finish_tus_upload(big.id, owner).await.unwrap());
    assert!(!db.store.finish_tus_upload(big.id, owner).await.unwrap());

    // Unleased uploads are terminated at once, and expire once their time
    // has passed; a leased one stays until its lease has run out too.
    let gone = new_upload(&db, "fay", 10, Duration::from_secs(30), None).await;
    let idle = new_upload(&db, "fay", 10, Duration::from_secs(30), None).await;
    let held = new_upload(&db, "fay", 10, Duration::from_secs(30), Some((owner, far))).await;
    match db
        .store
        .terminate_tus_upload("fay", gone.id, now)
        .await
        .unwrap()
    {
        TusLock::Acquired(row) => assert_eq!(row, gone),
        other => panic!("terminating an idle upload: {other:?}"),
    }
    assert_eq!(
        db.store
            .terminate_tus_upload("fay", gone.id, now)
            .await
            .unwrap(),
        TusLock::Missing
    );
    assert!(db.store.expire_tus_uploads(now).await.unwrap().is_empty());
    db.clock.advance(Duration::from_secs(31));
    let now = db.clock.now_at_micros();
    assert!(db
        .store
        .get_tus_upload("fay", idle.id, now)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        db.store.expire_tus_uploads(now).await.unwrap(),
        vec![idle.id]
    );
    assert!(db.store.expire_tus_uploads(now).await.unwrap().is_empty());
    assert_eq!(
        db.store
            .expire_tus_uploads(far + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        vec![held.id]
    );
}
