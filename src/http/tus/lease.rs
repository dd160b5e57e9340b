//! A tus upload's lease, and takeover instead of 423 (SPEC §10).
//!
//! A request that writes to an upload (a `PATCH`, a creation-with-upload
//! `POST`) holds the lease on its row (`lock_owner`, `locked_until`), so two
//! requests never write at once, whichever nodes they reach. A later `HEAD`,
//! `PATCH` or `DELETE` of that upload does not wait for the lease nor answer
//! 423: it ends the earlier request, which keeps every byte it made durable,
//! records its offset and gives the lease up.
//!
//! - **Same node**: every running writer is in [`Writers`] (part of
//!   `AppState`) with a cancellation token; the later request cancels it and
//!   waits for the release, which takes milliseconds.
//! - **Other node** (or a process that died): the later request sets the
//!   row's takeover marker. A live holder checks its lease every
//!   [`CHECK_EVERY`], acknowledges the marker and releases; one that has not
//!   acknowledged within [`STEAL_AFTER`] is taken for dead and its lease is
//!   taken away. A holder never writes a byte more than [`CHECK_EVERY`]
//!   after it last saw its lease as its own, and a lease is taken away only
//!   [`STEAL_AFTER`] (longer) after the marker was set, so a holder that was
//!   merely slow cannot write over its successor.
//! - **Completion** is never interrupted: while a holder completes the upload
//!   (the row's `completing` flag) it renews its lease and nobody takes it;
//!   a `PATCH` waits for the outcome instead.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::core::expiry_from;
use crate::{
    app::AppState,
    http::error::{AppError, AppResult},
    meta::{LeaseCheck, Takeover, TusHolder, TusLock, TusUpload},
};

/// A writer's lease on its upload row; renewed while it works.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a writer renews its lease.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a writer looks for a takeover request from another node (and
/// the longest it writes without having seen its lease as its own).
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A holder that has not acknowledged a takeover request this long after it
/// was made is taken for dead.
pub const STEAL_AFTER: Duration = Duration::from_secs(2);
/// The longest a holder that acknowledged may take to release (fsync,
/// offset, unlock) before its lease is taken away all the same.
pub const RELEASE_MAX: Duration = Duration::from_secs(10);
/// How often a request waiting for another to let go looks at the row.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// Rounds of takeover before a request gives up (a new writer appearing
/// each time).
const ROUNDS: usize = 4;

/// The writers running on this process, by upload id: how a later request
/// on the same node ends an earlier one at once. Entries live exactly as
/// long as their [`Lease`], so the map holds only requests in progress.
#[derive(Default)]
pub struct Writers {
    map: Mutex<HashMap<Uuid, Running>>,
}

struct Running {
    owner: Uuid,
    /// Cancelled to ask the writer to stop.
    stop: CancellationToken,
    /// Cancelled by the writer once its lease is released.
    released: CancellationToken,
}

impl Writers {
    fn register(&self, id: Uuid, owner: Uuid) -> (CancellationToken, CancellationToken) {
        let stop = CancellationToken::new();
        let released = CancellationToken::new();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(
            id,
            Running {
                owner,
                stop: stop.clone(),
                released: released.clone(),
            },
        );
        (stop, released)
    }

    fn unregister(&self, id: Uuid, owner: Uuid) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&id).is_some_and(|r| r.owner == owner) {
            m.remove(&id);
        }
    }

    /// Asks `owner`'s writer of upload `id` to stop, if it runs here;
    /// returns the token its release cancels.
    fn stop(&self, id: Uuid, owner: Uuid) -> Option<CancellationToken> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let r = m.get(&id).filter(|r| r.owner == owner)?;
        r.stop.cancel();
        Some(r.released.clone())
    }

    /// Writers running now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Outcome of [`Lease::acquire`].
#[allow(clippy::large_enum_variant)] // short-lived, returned once per request
pub enum Acquired {
    /// The caller holds the lease; the row as it is now.
    Held(Lease, TusUpload),
    /// Another request is completing the upload.
    Completing,
    /// No such live upload of this user.
    Missing,
}

/// What [`end_writer`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Nobody was writing.
    NoWriter,
    /// A writer was ended; the row has its final offset.
    Ended,
    /// A request is completing the upload; it was left alone.
    Completing,
}

/// The shared append loop keeps the lease while a body streams.
impl crate::ingest::append::Hold for Lease {
    type Error = AppError;

    /// Resolves when a later request on this node asks this one to stop.
    fn asked_to_stop(&self) -> impl std::future::Future<Output = ()> + Send {
        self.stop.cancelled()
    }

    fn next_check(&self) -> Duration {
        self.check_due()
    }

    fn still_ours(&mut self) -> impl std::future::Future<Output = AppResult<bool>> + Send {
        self.keep()
    }
}

/// A request's hold on an upload row. Released explicitly, or (error,
/// panic) by a background task on drop; a crashed process's lease is taken
/// over by the next request, or runs out.
pub struct Lease {
    state: AppState,
    id: Uuid,
    owner: Uuid,
    last_renew: Instant,
    last_check: Instant,
    held: bool,
    stop: CancellationToken,
    released: CancellationToken,
}

impl Lease {
    /// Takes the lease of the user's upload `id`, ending any request still
    /// writing to it (see the module docs).
    pub async fn acquire(state: &AppState, user: &str, id: Uuid) -> AppResult<Acquired> {
        for _ in 0..ROUNDS {
            let owner = Uuid::new_v4();
            let now = state.now();
            let lock = state
                .meta
                .lock_tus_upload(user, id, owner, now + lease_len(), expiry_from(state, now))
                .await?;
            match lock {
                TusLock::Acquired(up) => {
                    return Ok(Acquired::Held(Lease::held(state, id, owner), up))
                }
                TusLock::Missing => return Ok(Acquired::Missing),
                TusLock::Busy(h) if h.completing => return Ok(Acquired::Completing),
                TusLock::Busy(h) => stop_holder(state, id, h).await?,
            }
        }
        Err(busy())
    }

    /// A lease taken by creating the row already locked, or just acquired.
    pub fn held(state: &AppState, id: Uuid, owner: Uuid) -> Lease {
        let (stop, released) = state.tus_writers.register(id, owner);
        Lease {
            state: state.clone(),
            id,
            owner,
            last_renew: Instant::now(),
            last_check: Instant::now(),
            held: true,
            stop,
            released,
        }
    }

    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Time until the lease is due for a check.
    pub fn check_due(&self) -> Duration {
        CHECK_EVERY.saturating_sub(self.last_check.elapsed())
    }

    /// Whether writing may go on: `Ok(true)` while the lease is ours and
    /// nobody asked for it, `Ok(false)` once a later request did (stop,
    /// keep what is durable, release), an error when it is lost. Cheap
    /// unless a check or a renewal is due.
    pub async fn keep(&mut self) -> AppResult<bool> {
        if self.stop.is_cancelled() {
            return Ok(false);
        }
        let renew = self.last_renew.elapsed() >= LEASE_RENEW_EVERY;
        if !renew && self.last_check.elapsed() < CHECK_EVERY {
            return Ok(true);
        }
        let now = Instant::now();
        let check = self
            .state
            .meta
            .check_tus_lock(
                self.id,
                self.owner,
                renew.then(|| self.state.now() + lease_len()),
            )
            .await?;
        self.last_check = now;
        if renew {
            self.last_renew = now;
        }
        match check {
            LeaseCheck::Held => Ok(true),
            LeaseCheck::TakeoverRequested => Ok(false),
            LeaseCheck::Lost => {
                self.held = false;
                Err(lost())
            }
        }
    }

    /// The lease was found lost while recording progress.
    pub fn mark_lost(&mut self) {
        self.held = false;
    }

    /// The lease was given up by the transaction that recorded progress
    /// (see [`crate::meta::TusStore::record_tus_progress`]): a later
    /// [`Lease::release`] has nothing left to do in the database.
    pub fn mark_released(&mut self) {
        self.held = false;
        self.unregister();
    }

    /// The row was deleted by the completion transaction.
    pub fn mark_done(&mut self) {
        self.held = false;
        self.unregister();
    }

    pub async fn release(&mut self) {
        if self.held {
            self.held = false;
            if let Err(e) = self.state.meta.unlock_tus_upload(self.id, self.owner).await {
                tracing::warn!(error = %e, upload = %self.id, "could not release upload lock; the next request takes it over");
            }
        }
        self.unregister();
    }

    /// Deletes the row (a failed upload); true when it was deleted. When
    /// the database refused, the lease is at least given up, so the next
    /// request need not wait for it to run out.
    pub async fn finish_row(&mut self) -> bool {
        let done = match self.state.meta.finish_tus_upload(self.id, self.owner).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, upload = %self.id, "could not delete the upload row; cleanup will");
                if let Err(e) = self.state.meta.unlock_tus_upload(self.id, self.owner).await {
                    tracing::warn!(error = %e, upload = %self.id, "could not release upload lock either");
                }
                false
            }
        };
        self.held = false;
        self.unregister();
        done
    }

    fn unregister(&self) {
        self.state.tus_writers.unregister(self.id, self.owner);
        self.released.cancel();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.held {
            self.unregister();
            return;
        }
        let (state, id, owner) = (self.state.clone(), self.id, self.owner);
        let released = self.released.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = state.meta.unlock_tus_upload(id, owner).await;
                    state.tus_writers.unregister(id, owner);
                    released.cancel();
                });
            }
            Err(_) => self.unregister(),
        }
    }
}

/// Renews `owner`'s lease on upload `id` every [`LEASE_RENEW_EVERY`], for
/// as long as it is polled (alongside a completion). Never resolves.
pub async fn renew_forever(state: &AppState, id: Uuid, owner: Uuid) {
    loop {
        tokio::time::sleep(LEASE_RENEW_EVERY).await;
        match state
            .meta
            .check_tus_lock(id, owner, Some(state.now() + lease_len()))
            .await
        {
            Ok(LeaseCheck::Lost) => {
                tracing::warn!(upload = %id, "the completing request lost its lease; its commit will not pass")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, upload = %id, "could not renew the completing request's lease")
            }
        }
    }
}

/// Ends whichever request is writing to upload `id` (whose ownership the
/// caller checked), so the offset recorded is final; leaves a completing
/// request alone.
pub async fn end_writer(state: &AppState, id: Uuid) -> AppResult<Ended> {
    let mut ended = Ended::NoWriter;
    for _ in 0..ROUNDS {
        match state.meta.tus_holder(id, state.now()).await? {
            None => return Ok(ended),
            Some(h) if h.completing => return Ok(Ended::Completing),
            Some(h) => {
                stop_holder(state, id, h).await?;
                ended = Ended::Ended;
            }
        }
    }
    Err(busy())
}

/// Waits while a request completes upload `id` (its lease is renewed while
/// it works; a dead one's runs out).
pub async fn wait_for_completion(state: &AppState, id: Uuid) -> AppResult<()> {
    while let Some(h) = state.meta.tus_holder(id, state.now()).await? {
        if !h.completing {
            break;
        }
        tokio::time::sleep(WAIT_POLL * 2).await;
    }
    Ok(())
}

/// Makes holder `h` of upload `id` let go: at once when it runs on this
/// node, through the row's takeover marker otherwise, by taking its lease
/// away when it does not answer.
async fn stop_holder(state: &AppState, id: Uuid, h: TusHolder) -> AppResult<()> {
    if h.owner.is_nil() {
        return Ok(());
    }
    if let Some(released) = state.tus_writers.stop(id, h.owner) {
        if tokio::time::timeout(RELEASE_MAX, released.cancelled())
            .await
            .is_ok()
        {
            return Ok(());
        }
    } else {
        if !state.meta.request_tus_takeover(id, h.owner).await? {
            // Released (or completing) meanwhile.
            return Ok(());
        }
        let asked = Instant::now();
        loop {
            tokio::time::sleep(WAIT_POLL).await;
            match state.meta.tus_holder(id, state.now()).await? {
                Some(now) if now.owner == h.owner && !now.completing => {
                    let limit = if now.takeover == Takeover::Releasing {
                        RELEASE_MAX
                    } else {
                        STEAL_AFTER
                    };
                    if asked.elapsed() >= limit {
                        break;
                    }
                }
                _ => return Ok(()),
            }
        }
    }
    if state.meta.break_tus_lock(id, h.owner, state.now()).await? {
        tracing::warn!(upload = %id, holder = %h.owner, "took over the lease of a request that did not answer");
    }
    Ok(())
}

fn busy() -> AppError {
    AppError::Locked("other requests keep writing to this upload; retry shortly".into())
}

fn lost() -> AppError {
    AppError::Conflict("another request took this upload over".into())
}

/// [`LEASE`] as a time span.
pub fn lease_len() -> chrono::Duration {
    chrono::Duration::from_std(LEASE).expect("small duration")
}
