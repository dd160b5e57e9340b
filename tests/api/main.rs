//! The API integration suite: one binary, a real server per test, every
//! behaviour on SQLite and PostgreSQL.

mod garage;
mod helpers;
mod netproxy;
#[path = "../support/serve.rs"]
mod serve;

mod accel;
mod admin;
mod audit;
mod auth;
mod backup;
mod backup_remote;
mod clerk;
mod connections;
mod dependencies;
mod download;
mod events;
mod files;
mod hostile;
mod identity;
mod integration;
mod limits;
mod media;
mod nodes;
mod openapi;
mod quota;
mod restore_tamper;
mod resumable;
mod s3;
mod scan;
mod search;
mod sendfile;
mod tus;
mod tus_takeover;
