//! The API integration suite: one binary, a real server per test, every
//! behaviour on SQLite and PostgreSQL.

mod garage;
mod helpers;

mod admin;
mod audit;
mod auth;
mod backup;
mod download;
mod files;
mod hostile;
mod media;
mod openapi;
mod quota;
mod s3;
mod scan;
mod tus;
