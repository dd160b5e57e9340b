//! stowage: per-user file storage with hard quotas.
//!
//! # Layout
//! Top to bottom; arrows point down only (`scripts/check-layers.sh`,
//! docs/architecture.md).
//! - [`cli`]: the `stowage` command line.
//! - [`app`]: start-up; [`app::AppState`] (the [`crate::core::Core`] plus what
//!   only HTTP needs); `serve(listener, shutdown)`.
//! - [`http`]: routers per area, the one [`http::error::AppError`] (which
//!   maps every service error to the SPEC's JSON), extractors that carry
//!   authentication, tus under [`http::tus`].
//! - [`jobs`]: the durable job queue, media processing, cleanup, webhooks;
//!   [`jobs::after_commit`] queues a committed file's follow-up work.
//! - [`ops`]: operator actions shared by the CLI and the admin API (audit,
//!   backup, `doctor`, the scheduler).
//! - [`ingest`]: the one upload path (reserve → stream → fsync → publish →
//!   commit), returning the record or an [`ingest::IngestError`].
//! - [`node`]: this process's identity and heartbeats; releasing at once
//!   what a stopped process's requests held.
//! - [`quota`]: a user's quota and usage by type.
//! - [`core`]: the service core every operation takes.
//! - [`meta`]: the metadata store trait and its PostgreSQL and SQLite backends.
//! - [`blob`]: the blob store trait, the local volume and S3.
//! - [`auth`]: session JWTs, development sign-in, signed URLs.
//! - [`scan`]: clamd virus scanning.
//! - [`media`]: this node's media tools and limits.
//! - [`domain`]: sizes, file types from content, safe names.
//! - [`zip`]: the streaming ZIP writer behind package archives.
//! - [`config`], [`telemetry`]: configuration; logs and metrics.

pub mod app;
pub mod auth;
pub mod blob;
pub mod cli;
pub mod config;
pub mod core;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod jobs;
pub mod media;
pub mod meta;
pub mod node;
pub mod ops;
pub mod quota;
pub mod scan;
pub mod telemetry;
pub mod zip;
