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
        connect_with_clock, DumpFile, DumpUser, ManualClock, MediaUpdate, MetaError, MetaResult,
        MetaStore, NewFile, RowSource, SnapshotSink,
    },
};
use uuid::Uuid;

/// A fresh, migrated store on one engine, and its clock.
struct Db {
    store: Arc<dyn MetaStore>,
    clock: Arc<ManualClock>,
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
    Db {
        store,
        clock,
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
                job_claims_are_exclusive,
                snapshot_round_trip
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

/// Reserves `size` and commits a file of that size; returns its id.
async fn put(db: &Db, user: &str, size: i64) -> Uuid {
    let r = db
        .store
        .reserve(user, 1 << 40, size as u64, HOUR)
        .await
        .expect("reserve");
    db.store
        .commit_file(r, new_file(r, user, size))
        .await
        .expect("commit")
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
            let r = store.reserve(user, 1 << 40, size as u64, HOUR).await?;
            store.commit_file(r, new_file(r, user, size)).await?;
            MetaResult::Ok((user, r, size))
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
    let scratch = tempfile::tempdir().unwrap();
    let mut rows = Rows::default();
    db.store.snapshot(scratch.path(), &mut rows).await.unwrap();
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
    assert_eq!(before.files[1].tags, vec!["x", "ünï", ""]);

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
