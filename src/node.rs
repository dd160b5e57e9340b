//! Process identity, heartbeats, and reclaiming what dead processes held
//! (SPEC §10, docs/architecture.md).
//!
//! * **Node and incarnation.** A `serve` process is one start (an
//!   *incarnation*, a fresh id) of a *node*, whose id is created once in
//!   `{data_dir}/node-id` (0600) by the first `serve` on that data dir. While it runs the process holds an
//!   exclusive `flock` on that file, so two processes never share a node id
//!   and `stowage cleanup` can tell whether this node's process is alive.
//! * **Heartbeats.** Each incarnation has a row in `nodes`, written at
//!   start-up and pushed forward every `heartbeat_interval`.
//! * **Holders.** A reservation taken by a request in flight (a multipart
//!   upload, and the growth of one of unknown size) records the incarnation
//!   holding it. tus reservations have none: they belong to their upload,
//!   which outlives any request, and live until it completes, is terminated
//!   or expires.
//! * **Reclaim.** A holder is gone when a later incarnation of its node has
//!   started (reclaimed at that start-up), when no process of its node runs
//!   (`stowage cleanup` holding the node's lock), or when its heartbeat is
//!   older than `node_dead_after` (any process, in its heartbeat loop, and
//!   `stowage cleanup`). Reclaiming removes the staging data (named by the
//!   reservation id) and any blob published but never committed, then
//!   releases the reservation, at once; the reservation TTL is only the last
//!   resort for rows that name no holder.

use std::{
    io::Write,
    os::unix::{fs::OpenOptionsExt, io::AsRawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

pub use crate::core::{read_node_id, NODE_ID_FILE};
use crate::{
    core::Core,
    domain::{filetype::FileType, names::user_dir_name},
    meta::{Gone, MetaResult, NodeRow},
};

/// How long a starting `serve` waits for the node lock (a `stowage cleanup`
/// holds it for the moment of its reclaim).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Writes `id` into `{data_dir}/node-id` (0600) unless it is there already;
/// another id there is an error (the process read the file before someone
/// else created it).
pub fn persist_id(data_dir: &Path, id: Uuid) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(id.to_string().as_bytes())?;
            f.sync_all()?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read_node_id(data_dir)? {
            Some(have) if have == id => Ok(()),
            other => anyhow::bail!(
                "{} changed while starting (holds {other:?}, expected {id})",
                path.display()
            ),
        },
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// The exclusive lock on a node's id file: held by its `serve` process for
/// as long as it runs (the kernel drops it when the process dies).
pub struct NodeLock {
    _file: std::fs::File,
}

/// Takes the node lock of `data_dir` without waiting; `None` when a process
/// holds it.
pub fn try_lock(data_dir: &Path) -> anyhow::Result<Option<NodeLock>> {
    let path = data_dir.join(NODE_ID_FILE);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("locking {}", path.display()));
    }
    Ok(Some(NodeLock { _file: file }))
}

/// What one reclaim released.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Reclaimed {
    /// Reservations of gone holders released.
    pub reservations: u64,
    /// Blobs they had published without committing a row.
    pub unpublished_blobs: u64,
    /// `nodes` rows removed.
    pub nodes: u64,
}

impl Reclaimed {
    fn add(&mut self, o: Reclaimed) {
        self.reservations += o.reservations;
        self.unpublished_blobs += o.unpublished_blobs;
        self.nodes += o.nodes;
    }
}

/// Releases what `gone` holders held: for each reservation, its staging
/// data and any blob it published without a row go first, then the
/// reservation itself (so staging data never outlives its reservation
/// unnoticed). Each reservation is released once, whoever else reclaims it
/// at the same moment.
pub async fn reclaim(state: &Core, gone: Gone) -> MetaResult<Reclaimed> {
    let mut out = Reclaimed::default();
    for (id, user) in state.meta.gone_reservations(&gone).await? {
        if let Err(e) = state.blobs.discard(id).await {
            tracing::warn!(error = %e, staging = %id, "could not remove the staging data of a dead upload; leaving its reservation to cleanup");
            continue;
        }
        // The holder is gone: nothing of it can be committing now.
        match sweep_unpublished_any(state, id, &user, Duration::ZERO).await {
            Ok(n) => out.unpublished_blobs += n,
            Err(e) => {
                tracing::warn!(error = %e, reservation = %id, "could not look for an unpublished blob; leaving its reservation to cleanup");
                continue;
            }
        }
        if state.meta.release(id).await? {
            out.reservations += 1;
        }
    }
    out.nodes = state.meta.forget_nodes(&gone).await?;
    if out.reservations > 0 || out.unpublished_blobs > 0 {
        tracing::info!(
            ?gone,
            reservations = out.reservations,
            unpublished_blobs = out.unpublished_blobs,
            "released what a stopped process held"
        );
    }
    Ok(out)
}

/// [`reclaim`] of every incarnation whose heartbeat is older than the
/// dead-after limit at `now`.
pub async fn reclaim_silent(state: &Core, now: DateTime<Utc>) -> MetaResult<Reclaimed> {
    let dead_after = chrono::Duration::from_std(state.config.limits.node_dead_after)
        .unwrap_or(chrono::Duration::seconds(30));
    reclaim(state, Gone::SilentSince(now - dead_after)).await
}

/// For `stowage cleanup`: reclaims what silent processes held and, when no
/// `serve` process of this data dir's node runs (its lock is free), what
/// every incarnation of this node held. Safe while processes are alive:
/// a live process's lock and heartbeat keep its reservations.
pub async fn reclaim_for_cleanup(state: &Core, now: DateTime<Utc>) -> MetaResult<Reclaimed> {
    let mut out = Reclaimed::default();
    let data_dir = state.config.data_dir.clone();
    let lock = tokio::task::spawn_blocking(move || match read_node_id(&data_dir) {
        // No serve ever ran with this data dir: nothing of this node to reclaim.
        Ok(None) => Ok(None),
        Ok(Some(_)) => try_lock(&data_dir),
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| crate::meta::MetaError::Unavailable(e.to_string()))?;
    match lock {
        Ok(Some(lock)) => {
            let gone = Gone::Node {
                node: state.holder.node,
                except: None,
            };
            out.add(reclaim(state, gone).await?);
            drop(lock);
        }
        Ok(None) => tracing::debug!("no stopped serve process of this data dir to reclaim"),
        Err(e) => tracing::warn!(error = %e, "could not check this node's lock"),
    }
    out.add(reclaim_silent(state, now).await?);
    Ok(out)
}

/// A process killed between publishing a blob (rename) and committing its
/// row leaves the blob in place and the reservation behind. The file id is
/// the reservation id, so the blob is found from the expired reservation and
/// removed when no row claims it. The rename time (ctime) must be older than
/// `grace`, so an upload committing right now is never touched.
async fn sweep_unpublished(
    state: &Core,
    root: &Path,
    id: Uuid,
    user: &str,
    grace: Duration,
) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!("{id}.");
    let mut removed = 0;
    for t in FileType::ALL {
        let dir = root.join(user_dir_name(user)).join(t.dir());
        let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
            continue;
        };
        while let Some(e) = rd.next_entry().await? {
            if !e.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let meta = e.metadata().await?;
            let renamed = DateTime::from_timestamp(meta.ctime().max(0), 0).unwrap_or_default();
            let old = (state.now() - renamed).to_std().unwrap_or_default() >= grace;
            if old && state.meta.get_file_any(id).await?.is_none() {
                tokio::fs::remove_file(e.path()).await?;
                tracing::warn!(file = %e.path().display(), "removed a blob whose upload died before its commit");
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// [`sweep_unpublished`] for object stores: the published object is found by
/// its key prefix `{user}/{type}/{id}.` and its write time.
async fn sweep_unpublished_objects(
    state: &Core,
    id: Uuid,
    user: &str,
    grace: Duration,
) -> anyhow::Result<u64> {
    let cutoff = state.now() - chrono::Duration::from_std(grace).unwrap_or_default();
    let mut removed = 0;
    for t in FileType::ALL {
        let prefix = format!("{}/{}/{id}.", user_dir_name(user), t.dir());
        for e in state.blobs.list_prefix(&prefix).await? {
            if e.modified.is_some_and(|m| m > cutoff)
                || state.meta.get_file_any(id).await?.is_some()
            {
                continue;
            }
            let key = e.key;
            state.blobs.remove(&key).await?;
            tracing::warn!(%key, "removed an object whose upload died before its commit");
            removed += 1;
        }
    }
    Ok(removed)
}

/// [`sweep_unpublished`] or [`sweep_unpublished_objects`], whichever fits
/// the blob store.
pub(crate) async fn sweep_unpublished_any(
    state: &Core,
    id: Uuid,
    user: &str,
    grace: Duration,
) -> anyhow::Result<u64> {
    match state.blobs.local_root() {
        Some(root) => sweep_unpublished(state, root, id, user, grace).await,
        None => sweep_unpublished_objects(state, id, user, grace).await,
    }
}

/// This machine's name, for the `nodes` table and task leases.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

fn row(state: &Core, started_at: DateTime<Utc>, now: DateTime<Utc>) -> NodeRow {
    NodeRow {
        holder: state.holder,
        host: hostname(),
        pid: i64::from(std::process::id()),
        started_at,
        heartbeat_at: now,
    }
}

/// This process's registration, heartbeat loop and lock, from
/// [`Registration::start`] to [`Registration::stop`].
pub struct Registration {
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
    _lock: NodeLock,
}

impl Registration {
    /// Takes the node lock (refusing to start while another process holds
    /// it), registers this incarnation, reclaims what earlier incarnations
    /// of the node held, and starts the heartbeat loop.
    pub async fn start(state: &Core) -> anyhow::Result<Registration> {
        persist_id(&state.config.data_dir, state.holder.node)?;
        let lock = lock_node(&state.config.data_dir).await?;
        let started_at = state.now();
        state
            .meta
            .heartbeat_node(&row(state, started_at, started_at))
            .await
            .context("registering this process in the nodes table")?;
        let earlier = Gone::Node {
            node: state.holder.node,
            except: Some(state.holder.incarnation),
        };
        let r = reclaim(state, earlier)
            .await
            .context("releasing what the previous start of this node held")?;
        tracing::info!(
            node = %state.holder.node,
            incarnation = %state.holder.incarnation,
            reclaimed = r.reservations,
            "node registered"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(heartbeats(state.clone(), started_at, stop_rx));
        Ok(Registration {
            stop_tx,
            task,
            _lock: lock,
        })
    }

    /// Stops the heartbeats, releases whatever this incarnation still holds
    /// (requests cut at the deadline) and leaves the nodes table.
    pub async fn stop(self, state: &Core) {
        let _ = self.stop_tx.send(true);
        let _ = self.task.await;
        let mine = Gone::Node {
            node: state.holder.node,
            except: None,
        };
        if let Err(e) = reclaim(state, mine).await {
            tracing::warn!(error = %e, "could not release this process's reservations; the next start or another node will");
        }
        if let Err(e) = state.meta.remove_node(state.holder.incarnation).await {
            tracing::warn!(error = %e, "could not remove this process from the nodes table");
        }
    }
}

async fn lock_node(data_dir: &Path) -> anyhow::Result<NodeLock> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let dir: PathBuf = data_dir.to_path_buf();
        if let Some(lock) = tokio::task::spawn_blocking(move || try_lock(&dir)).await?? {
            return Ok(lock);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "another stowage process uses the data dir {} (its {NODE_ID_FILE} is locked): \
                 every serve process needs a data dir of its own",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every `heartbeat_interval`: records this process as alive, then reclaims
/// what silent processes held.
async fn heartbeats(state: Core, started_at: DateTime<Utc>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.config.limits.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let now = state.now();
        if let Err(e) = state
            .meta
            .heartbeat_node(&row(&state, started_at, now))
            .await
        {
            tracing::warn!(error = %e, "heartbeat failed");
            continue;
        }
        if let Err(e) = reclaim_silent(&state, now).await {
            tracing::warn!(error = %e, "could not reclaim what stopped processes held");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_node_id(dir.path()).unwrap(), None);
        let id = Uuid::now_v7();
        persist_id(dir.path(), id).unwrap();
        persist_id(dir.path(), id).unwrap();
        assert_eq!(read_node_id(dir.path()).unwrap(), Some(id));
        assert!(persist_id(dir.path(), Uuid::now_v7()).is_err());
        let mode = std::fs::metadata(dir.path().join(NODE_ID_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn one_process_at_a_time_holds_a_node() {
        let dir = tempfile::tempdir().unwrap();
        persist_id(dir.path(), Uuid::now_v7()).unwrap();
        let held = try_lock(dir.path()).unwrap().expect("free at first");
        assert!(try_lock(dir.path()).unwrap().is_none(), "held");
        drop(held);
        assert!(try_lock(dir.path()).unwrap().is_some(), "free again");
    }
}
