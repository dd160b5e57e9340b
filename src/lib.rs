//! stowage: per-user file storage with hard quotas.
//!
//! # Layout
//! - [`config`]: one typed configuration from defaults, TOML and environment.
//! - [`app`]: start-up; the shared [`app::AppState`]; `serve(listener, shutdown)`.
//! - [`http`]: routers per area, the one [`http::error::AppError`], extractors
//!   that carry authentication, tus under [`http::tus`].
//! - [`auth`]: session JWTs, development sign-in, signed URLs.
//! - [`ingest`]: the one upload path (reserve → stream → fsync → publish → commit).
//! - [`meta`]: the metadata store trait and its PostgreSQL and SQLite backends.
//! - [`blob`]: the blob store trait and the local volume.
//! - [`jobs`]: the durable job queue, media processing and cleanup.
//! - [`ops`]: operator actions shared by the CLI and the admin API (audit,
//!   backup, `doctor`, the scheduler).
//! - [`node`]: this process's identity and heartbeats; releasing at once
//!   what a stopped process's requests held.
//! - [`scan`]: clamd virus scanning.
//! - [`domain`]: sizes, file types from content, safe names.
//! - [`zip`]: the streaming ZIP writer behind package archives.
//! - [`cli`]: the `stowage` command line.

pub mod app;
pub mod auth;
pub mod blob;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod jobs;
pub mod meta;
pub mod node;
pub mod ops;
pub mod scan;
pub mod telemetry;
pub mod zip;
