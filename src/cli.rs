//! The `stowage` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;

use crate::blob::BlobStore as _;
use clap::{CommandFactory, Parser, Subcommand};

use crate::{
    app::{self, AppState},
    config::Config,
    core::Core,
    domain::size::{format_size, parse_size},
    jobs::cleanup,
    ops::{audit, backup, backup::dest as backup_dest, doctor, progress::Progress},
    telemetry,
};

/// Per-user file storage with hard quotas.
///
/// Configuration comes from an optional TOML file (--config, or ./stowage.toml
/// when present) and the STOWAGE_* environment variables, which win.
#[derive(Parser, Debug)]
#[command(name = "stowage", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file (default: ./stowage.toml if it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP API and web UI (applies migrations first).
    Serve,
    /// Apply database schema migrations and exit.
    Migrate,
    /// Inspect and manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Release what stopped processes held and expired reservations, and
    /// remove stale temporary files. Safe while serve processes run.
    Cleanup {
        /// Leave temp files younger than this many seconds alone.
        #[arg(long, default_value_t = 60)]
        temp_grace_secs: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reconcile the database with the volume: counter drift, missing blobs,
    /// size mismatches, orphan files, stray temp files. Exits 0 only when clean.
    Audit {
        /// Repair counters and remove orphans and stray temp files older than
        /// the grace period (rows are never deleted).
        #[arg(long)]
        fix: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Leave orphans and temp files younger than this alone (e.g. 24h, 30m, 3600s).
        #[arg(long, default_value = "24h", value_parser = parse_grace)]
        grace: Duration,
        /// Print progress to stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// Show the recent runs of the periodic tasks `serve` schedules (cleanup,
    /// audit): which process ran each, when, and how it ended. With several
    /// nodes on one database, runs of a task never overlap.
    Tasks {
        /// Only this task (cleanup or audit).
        #[arg(long, value_name = "NAME")]
        task: Option<String>,
        /// How many runs to show, newest first.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print the runs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create, list, verify and restore backups.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// The event outbox: what was recorded and whether the webhook got it.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Copy the local volume (STOWAGE_STORAGE_ROOT) into the object store
    /// (STOWAGE_S3_*), verifying every file by sha256, while the service runs.
    /// Resumable: files already in the store are skipped. Run it once more
    /// after switching to STOWAGE_BLOB_STORE=s3; the volume is left as it is.
    /// Exits 1 when any file could not be copied.
    MigrateBlobs {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Print progress to stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// Check what `serve` depends on: configuration, database and
    /// migrations, volume permissions and free space, object store, clamd,
    /// ffmpeg/ffprobe, token keys and clock skew. One line per check (ok,
    /// warn, fail); exits 1 when any check fails. Changes nothing.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script for bash, zsh, fish, elvish or
    /// powershell (e.g. `stowage completions bash > /etc/bash_completion.d/stowage`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout, or write one page per
    /// command into DIR (`stowage man | man -l -`).
    Man {
        /// Write stowage.1, stowage-serve.1, … into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    crate::ops::audit::parse_duration(s)
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Write one archive (database snapshot, referenced blobs, manifest) into
    /// DEST: a directory, or s3://bucket/prefix in any S3-compatible store
    /// (STOWAGE_S3_ENDPOINT, STOWAGE_S3_REGION, AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, as for blobs), streamed as one multipart upload.
    Create {
        /// Destination: a directory or s3://bucket/prefix.
        #[arg(long, value_name = "DEST")]
        dest: String,
        /// Keep only the newest N stowage archives in DEST.
        #[arg(long, value_name = "N", conflicts_with = "keep_days")]
        keep: Option<usize>,
        /// Delete stowage archives in DEST older than D days.
        #[arg(long, value_name = "D")]
        keep_days: Option<u64>,
        /// Compress the archive with gzip (media rarely shrinks; costs CPU).
        #[arg(long)]
        gzip: bool,
        /// Print progress to stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the archives in DEST (a directory or s3://bucket/prefix) with
    /// date, size and file count.
    List {
        #[arg(long, value_name = "DEST")]
        dest: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-read an archive (a file or s3://bucket/prefix/<archive name>) end
    /// to end and check every sum; exits non-zero on any problem.
    Verify {
        archive: String,
        #[arg(long)]
        progress: bool,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the configured (empty) database and volume from an archive
    /// (a file or s3://bucket/prefix/<archive name>).
    Restore {
        archive: String,
        #[arg(long)]
        progress: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// List events, newest first.
    List {
        /// Only this type (file.created, file.updated, file.deleted,
        /// upload.failed, media.ready, media.failed, quota.threshold).
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// Only pending, delivered or failed events.
        #[arg(long)]
        status: Option<String>,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the events as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Queue one event for delivery again (due now, with a fresh 24 h of
    /// retries), whatever its state.
    Replay { id: String },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// List users with usage and quota.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one user.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a user's quota, creating the user if new (SIZE like 10GiB, 500MB, bytes; 0 blocks uploads).
    SetQuota { id: String, size: String },
    /// Delete a user with every file, upload, thumbnail and row.
    Delete {
        id: String,
        /// Required: confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the command definition; no configuration needed.
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "stowage",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => return man(dir.as_deref()),
        _ => {}
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            if let Command::Doctor { json } = cli.command {
                // A configuration that does not load is the first thing
                // the doctor reports, in the form asked for.
                return print_doctor(&doctor::Report::config_failed(&e.to_string()), json);
            }
            eprintln!("stowage: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(config.log_json);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let source = config_source(cli.config.as_deref());
    let res = rt.block_on(run(cli.command, config, source));
    // A stopped server leaves nothing it waits for: tasks still running
    // (a request cut at the deadline, a blocking read) are abandoned.
    rt.shutdown_timeout(Duration::from_millis(100));
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stowage: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the man page, or writes one per command into `dir`.
fn man(dir: Option<&std::path::Path>) -> ExitCode {
    let res = match dir {
        Some(dir) => clap_mangen::generate_to(Cli::command(), dir),
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stowage: writing the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_doctor(report: &doctor::Report, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("stowage: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Where the configuration came from, in words, for `doctor`.
fn config_source(path: Option<&std::path::Path>) -> String {
    match path {
        Some(p) => format!("loaded from {} and the environment", p.display()),
        None if std::path::Path::new("stowage.toml").exists() => {
            "loaded from ./stowage.toml and the environment".into()
        }
        None => "loaded from the environment (no configuration file)".into(),
    }
}

/// The service core, migrated, for the commands that work on the stores
/// directly (everything but `serve`, which needs the HTTP parts too).
async fn state(config: Config) -> anyhow::Result<Core> {
    let core = Core::open(config).await?;
    core.meta.migrate().await.context("applying migrations")?;
    Ok(core)
}

/// Runs `cmd`; `source` says where `config` came from.
async fn run(cmd: Command, config: Config, source: String) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Serve => {
            app::check_auth_safety(&config)?;
            let bind = config.bind;
            let state = AppState::build(config).await?;
            state.meta.migrate().await.context("applying migrations")?;
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("binding {bind}"))?;
            let exit_within = state.config.limits.shutdown_timeout;
            app::serve(listener, state, async move {
                shutdown_signal().await;
                exit_deadline(exit_within);
            })
            .await?;
            tracing::info!("stopped");
        }
        Command::Migrate => {
            let state = Core::open(config).await?;
            state.meta.migrate().await.context("applying migrations")?;
            println!("migrations applied ({})", state.meta.backend());
        }
        Command::User(u) => return user(u, state(config).await?).await,
        Command::Cleanup {
            temp_grace_secs,
            json,
        } => {
            let state = state(config).await?;
            let report = cleanup::run(&state, Duration::from_secs(temp_grace_secs)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "removed {} expired upload(s) and {} unpublished blob(s); released {} reservation(s) of stopped processes and {} expired reservation(s); removed {} stale temp file(s), {}",
                    report.expired_uploads,
                    report.unpublished_blobs,
                    report.reclaimed_reservations,
                    report.expired_reservations,
                    report.stale_temp_files,
                    format_size(report.stale_temp_bytes)
                );
            }
        }
        Command::Audit {
            fix,
            json,
            grace,
            progress,
        } => {
            let state = state(config).await?;
            let opts = audit::AuditOptions {
                fix,
                grace,
                progress: Progress::new("audit", progress),
            };
            let report = audit::run(&state, opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            return Ok(if report.clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Tasks { task, limit, json } => {
            let state = state(config).await?;
            let runs = crate::ops::lease::recent_runs(&state, task.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else if runs.is_empty() {
                println!("no scheduled runs recorded yet (see STOWAGE_CLEANUP_INTERVAL_SECS, STOWAGE_AUDIT_INTERVAL_SECS)");
            } else {
                println!(
                    "{:<8} {:<20} {:>8} {:<9} {:<30} SUMMARY",
                    "TASK", "STARTED (UTC)", "SECONDS", "OUTCOME", "BY"
                );
                for r in runs {
                    let secs = r
                        .finished_at
                        .map(|f| {
                            format!(
                                "{:.1}",
                                (f - r.started_at).num_milliseconds() as f64 / 1000.0
                            )
                        })
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<8} {:<20} {:>8} {:<9} {:<30} {}",
                        r.name,
                        r.started_at.format("%Y-%m-%d %H:%M:%S"),
                        secs,
                        r.outcome.as_deref().unwrap_or("running"),
                        r.holder,
                        r.summary.as_deref().unwrap_or("")
                    );
                }
            }
        }
        Command::Backup(b) => return backup_cmd(b, config).await,
        Command::Events(e) => return events_cmd(e, state(config).await?).await,
        Command::Doctor { json } => {
            return Ok(print_doctor(&doctor::run(&config, &source).await, json))
        }
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("answered in `main` before the configuration is loaded")
        }
        Command::MigrateBlobs { json, progress } => {
            if config.s3_bucket.is_none() {
                anyhow::bail!("migrate-blobs needs the object store: set STOWAGE_S3_BUCKET (and STOWAGE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)");
            }
            let meta = crate::meta::connect(&config.database_url).await?;
            let from = crate::blob::local::LocalStore::open(&config.storage_root)
                .with_context(|| format!("opening {}", config.storage_root.display()))?;
            let to = crate::blob::s3::S3Store::open(&config.s3_options())
                .context("opening the object store")?;
            to.check_writable()
                .await
                .context("the object store does not accept writes")?;
            let r = crate::ops::migrate::run(
                meta.as_ref(),
                &from,
                &to,
                Progress::new("migrate-blobs", progress),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} file(s): {} copied ({}), {} already in the store, {} deleted meanwhile, {} failed; {} thumbnail(s) copied",
                    r.files_total,
                    r.copied,
                    format_size(r.bytes_copied),
                    r.already_present,
                    r.deleted_meanwhile,
                    r.failed.len(),
                    r.thumbnails_copied
                );
                for f in &r.failed {
                    println!("  failed {} ({}): {}", f.file_id, f.key, f.reason);
                }
            }
            if !r.failed.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn backup_cmd(cmd: BackupCmd, config: Config) -> anyhow::Result<ExitCode> {
    match cmd {
        BackupCmd::Create {
            dest,
            keep,
            keep_days,
            gzip,
            progress,
            json,
        } => {
            let dest = backup_dest::Dest::parse(&dest, &config)?;
            let state = state(config).await?;
            let opts = backup::CreateOptions {
                dest,
                keep,
                keep_days,
                gzip,
                progress: Progress::new("backup", progress),
            };
            let r = backup::create(&state, opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "wrote {} ({}): {} user(s), {} file(s), {} blob(s) {}",
                    r.path.display(),
                    format_size(r.archive_bytes),
                    r.header.users,
                    r.header.files,
                    r.blobs,
                    format_size(r.blob_bytes)
                );
                if !r.skipped.is_empty() {
                    println!("{} blob(s) deleted after the snapshot were skipped (recorded in the manifest)", r.skipped.len());
                }
                for p in &r.removed {
                    println!("removed old backup {}", p.display());
                }
            }
        }
        BackupCmd::List { dest, json } => {
            let dest = backup_dest::Dest::parse(&dest, &config)?;
            let list = backup::list_at(&dest).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<45} {:<20} {:>10} {:>8} {:>12}",
                    "ARCHIVE", "DATE (UTC)", "SIZE", "FILES", "DATA"
                );
                for a in list {
                    let name = a
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let (files, data) = match &a.header {
                        Some(h) => (h.files.to_string(), format_size(h.bytes)),
                        None => ("?".into(), a.error.clone().unwrap_or_default()),
                    };
                    println!(
                        "{:<45} {:<20} {:>10} {:>8} {:>12}",
                        name,
                        a.created_at.format("%Y-%m-%d %H:%M:%S"),
                        format_size(a.size),
                        files,
                        data
                    );
                }
            }
        }
        BackupCmd::Verify {
            archive,
            progress,
            json,
        } => {
            let archive = backup_dest::Location::parse(&archive, &config)?;
            let r = backup::verify_at(&archive, Progress::new("verify", progress)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for p in &r.problems {
                    println!("problem: {p}");
                }
                println!(
                    "{}: {} entries, {}; {} blob(s) recorded as deleted after the snapshot",
                    if r.ok { "OK" } else { "FAILED" },
                    r.entries_checked,
                    format_size(r.bytes_checked),
                    r.skipped
                );
            }
            if !r.ok {
                return Ok(ExitCode::from(1));
            }
        }
        BackupCmd::Restore {
            archive,
            progress,
            json,
        } => {
            let archive = backup_dest::Location::parse(&archive, &config)?;
            let state = Core::open(config).await?;
            let r =
                backup::restore_from(&state, &archive, Progress::new("restore", progress)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "restored {} user(s), {} file(s), {}, {} thumbnail(s); {} row(s) left out (deleted after the snapshot)",
                    r.users,
                    r.files,
                    format_size(r.bytes),
                    r.thumbnails,
                    r.rows_skipped
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn events_cmd(cmd: EventsCmd, state: Core) -> anyhow::Result<ExitCode> {
    use crate::meta::{EventQuery, EventStatus, EventType};
    match cmd {
        EventsCmd::List {
            event_type,
            status,
            limit,
            json,
        } => {
            let q = EventQuery {
                event_type: event_type
                    .as_deref()
                    .map(|t| {
                        EventType::parse(t)
                            .ok_or_else(|| anyhow::anyhow!("unknown event type {t:?}"))
                    })
                    .transpose()?,
                status: status
                    .as_deref()
                    .map(|s| {
                        EventStatus::parse(s).ok_or_else(|| {
                            anyhow::anyhow!(
                                "status must be pending, delivered or failed, not {s:?}"
                            )
                        })
                    })
                    .transpose()?,
                before_seq: None,
                limit: limit.clamp(1, 10_000),
            };
            let events = state.meta.list_events(&q).await?;
            if json {
                let v: Vec<_> = events.iter().map(|e| e.to_json()).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if events.is_empty() {
                println!("no events");
            } else {
                println!(
                    "{:<36} {:<16} {:<24} {:<10} {:>8} USER",
                    "ID", "TYPE", "CREATED (UTC)", "STATUS", "ATTEMPTS"
                );
                for e in events {
                    println!(
                        "{:<36} {:<16} {:<24} {:<10} {:>8} {}",
                        e.id,
                        e.event_type,
                        e.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                        e.status.as_str(),
                        e.attempts,
                        e.user_id
                    );
                    if let Some(err) = &e.last_error {
                        println!("    last error: {err}");
                    }
                }
            }
        }
        EventsCmd::Replay { id } => {
            let Ok(uuid) = uuid::Uuid::parse_str(&id) else {
                eprintln!("stowage: {id:?} is not an event id");
                return Ok(ExitCode::from(1));
            };
            if state.meta.replay_event(uuid, state.now()).await?.is_none() {
                eprintln!("stowage: no event {id}");
                return Ok(ExitCode::from(1));
            }
            if state.config.webhook.url.is_some() {
                println!("event {id} queued for delivery");
            } else {
                println!("event {id} queued; set STOWAGE_WEBHOOK_URL for `serve` to deliver it");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn user(cmd: UserCmd, state: Core) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCmd::List { json } => {
            let users = state.meta.list_users().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!(
                    "{:<40} {:>12} {:>12} {:>7} {:>7}",
                    "USER", "USED", "QUOTA", "USED%", "FILES"
                );
                for u in users {
                    println!(
                        "{:<40} {:>12} {:>12} {:>6.2}% {:>7}",
                        u.user_id,
                        format_size(u.total_bytes.max(0) as u64),
                        format_size(u.max_bytes.max(0) as u64),
                        crate::quota::percent(u.total_bytes, u.max_bytes),
                        u.file_count
                    );
                }
            }
        }
        UserCmd::Show { id, json } => {
            let Some(u) = state.meta.get_user(&id).await? else {
                eprintln!("stowage: no user {id:?}");
                return Ok(ExitCode::from(1));
            };
            let usage = crate::quota::usage_for(&state, &u)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&usage)?);
            } else {
                println!("user       {}", u.user_id);
                println!(
                    "used       {} of {} ({:.2}%)",
                    format_size(u.total_bytes.max(0) as u64),
                    format_size(u.max_bytes.max(0) as u64),
                    usage.percent_used
                );
                println!("reserved   {}", format_size(u.reserved_bytes.max(0) as u64));
                println!("files      {}", u.file_count);
                for (t, tu) in &usage.by_type {
                    println!(
                        "  {:<8} {:>5} files {:>12}",
                        t,
                        tu.count,
                        format_size(tu.bytes.max(0) as u64)
                    );
                }
                println!("created    {}", u.created_at.to_rfc3339());
            }
        }
        UserCmd::SetQuota { id, size } => {
            let bytes = parse_size(&size).map_err(anyhow::Error::msg)?;
            let u = state.meta.set_quota(&id, bytes).await?;
            println!(
                "{}: quota {} ({} bytes), using {}",
                u.user_id,
                format_size(bytes),
                bytes,
                format_size(u.total_bytes.max(0) as u64)
            );
        }
        UserCmd::Delete { id, yes } => {
            if !yes {
                eprintln!(
                    "stowage: deleting {id:?} removes all of their files; add --yes to confirm"
                );
                return Ok(ExitCode::from(2));
            }
            match crate::ops::delete_user(&state, &id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                Some(r) => println!(
                    "deleted {id}: {} file(s), {}",
                    r.files,
                    format_size(r.bytes)
                ),
                None => {
                    eprintln!("stowage: no user {id:?}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The last resort behind the deadlines `serve` keeps itself: a thread of
/// its own (independent of the runtime) that ends the process `after` the
/// signal if it is still there.
fn exit_deadline(after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        eprintln!("stowage: still running {after:?} after the shutdown signal; exiting");
        std::process::exit(1);
    });
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
