//! The service core: what every operation below the edges needs (the
//! metadata and blob stores, the scanner, the job queue's wake-up, media
//! tools, this process's identity, shutdown, a clock, scratch space and
//! the configuration). [`Core`] is cheap to clone.
//!
//! The edges (HTTP in [`crate::http`] with [`crate::app::AppState`], the
//! command line in [`crate::cli`], the background workers) call services
//! that take `&Core`; the core and those services never name the edges. A
//! service that needs follow-up work (a media job after a commit) returns
//! what it did and lets its caller queue the rest ([`crate::jobs::after_commit`]).

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    blob::{local::LocalStore, s3::S3Store, BlobStore},
    config::{redact_url, BlobBackend, Config},
    domain::filetype::DEFAULT_ALLOWED,
    meta::{self, Holder, MetaStore},
    scan::Scanner,
};

/// The shared services; see the module docs.
#[derive(Clone)]
pub struct Core {
    pub config: Arc<Config>,
    pub meta: Arc<dyn MetaStore>,
    pub blobs: Arc<dyn BlobStore>,
    /// Content types accepted for upload (configured, or the default list).
    pub allowed_mime: Arc<Vec<String>>,
    /// clamd, when configured: every upload is scanned before it is published.
    pub scanner: Option<Scanner>,
    /// Wakes the background job workers after work is queued.
    pub jobs_notify: Arc<tokio::sync::Notify>,
    /// Media tools and the node's media concurrency limit.
    pub media: crate::media::MediaRuntime,
    /// This process (its node and this start of it): the holder recorded on
    /// the reservations its requests take (see [`crate::node`]).
    pub holder: Holder,
    /// Cancelled when a stopping server stops waiting for requests in
    /// flight (SPEC §10): uploads still streaming end (a multipart upload is
    /// released, a tus PATCH keeps what it fsynced).
    pub shutdown: CancellationToken,
    /// Short clean-up tasks (releasing an abandoned upload) that a stopping
    /// server waits for before it exits.
    pub tasks: Background,
    /// Where "now" comes from for the services that take it from here.
    pub clock: Arc<dyn Clock>,
    /// A directory on local disk for work files (database dumps, media
    /// scratch), inside the volume so renames out of it stay on one disk.
    pub scratch: PathBuf,
}

impl Core {
    /// Connects the stores. Does not migrate.
    pub async fn open(config: Config) -> anyhow::Result<Core> {
        Core::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Core::open`] with the services and the store reading the time from
    /// `clock` (tests move a [`crate::meta::ManualClock`] forward to see
    /// links, uploads and leases expire without sleeping).
    pub async fn open_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Core> {
        let meta = meta::connect_with_clock(&config.database_url, clock.clone())
            .await
            .with_context(|| format!("opening database {}", redact_url(&config.database_url)))?;
        let blobs: Arc<dyn BlobStore> = match config.blob_store {
            BlobBackend::Local => Arc::new(
                LocalStore::open(&config.storage_root)
                    .with_context(|| {
                        format!("opening storage root {}", config.storage_root.display())
                    })?
                    .with_direct_io(config.direct_io),
            ),
            BlobBackend::S3 => {
                let o = config.s3_options();
                let store = S3Store::open(&o).with_context(|| {
                    format!(
                        "opening bucket {} at {}",
                        o.bucket,
                        o.endpoint.as_deref().unwrap_or("AWS")
                    )
                })?;
                store.clean_scratch().with_context(|| {
                    format!("cleaning the upload spool {}", o.scratch.display())
                })?;
                Arc::new(store)
            }
        };
        let allowed_mime = config
            .allowed_mime
            .clone()
            .unwrap_or_else(|| DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect());
        let scanner = config
            .clamd
            .as_deref()
            .map(|c| Scanner::new(c).with_timeout(config.limits.clamd_timeout));
        let media = crate::media::MediaRuntime::new(&config.limits);
        let holder = Holder {
            // Written to the data dir by the first `serve` (see `node`).
            node: read_node_id(&config.data_dir)?.unwrap_or_else(Uuid::now_v7),
            incarnation: Uuid::now_v7(),
        };
        let scratch = config.storage_root.join(".tmp");
        Ok(Core {
            config: Arc::new(config),
            meta,
            blobs,
            allowed_mime: Arc::new(allowed_mime),
            scanner,
            jobs_notify: Arc::new(tokio::sync::Notify::new()),
            media,
            holder,
            shutdown: CancellationToken::new(),
            tasks: Background::default(),
            clock,
            scratch,
        })
    }

    /// The current time by [`Core::clock`].
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// The file in the data dir holding the node id.
pub const NODE_ID_FILE: &str = "node-id";

/// The node id kept in `{data_dir}/node-id`, if a `serve` process ever ran
/// with this data dir.
pub fn read_node_id(data_dir: &Path) -> anyhow::Result<Option<Uuid>> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => Uuid::parse_str(s.trim())
            .map(Some)
            .with_context(|| format!("{} does not hold a node id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The one clock trait of the services and the store (defined beside the
/// store, which is below the core), so a test can drive both with one
/// [`crate::meta::ManualClock`].
pub use crate::meta::{Clock, SystemClock};

/// Tracks short tasks spawned in the background so that shutdown can wait
/// for them: each holds a receiver of a watch channel, and the sender's
/// `closed()` fires when the last one has ended.
#[derive(Clone)]
pub struct Background {
    alive: Arc<tokio::sync::watch::Sender<()>>,
}

impl Default for Background {
    fn default() -> Self {
        Background {
            alive: Arc::new(tokio::sync::watch::channel(()).0),
        }
    }
}

impl Background {
    /// Spawns `task` on the current runtime, tracked.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let guard = self.alive.subscribe();
        tokio::spawn(async move {
            task.await;
            drop(guard);
        });
    }

    /// Resolves when no tracked task is running.
    pub async fn idle(&self) {
        self.alive.closed().await
    }
}
