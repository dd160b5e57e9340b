//! Webhook delivery: POSTs each pending event of the outbox
//! ([`crate::meta::events`]) to `STOWAGE_WEBHOOK_URL`, signed with
//! `STOWAGE_WEBHOOK_SECRET`, at least once.
//!
//! - **One worker across nodes.** The worker delivers only while it holds
//!   the `webhooks` task lease ([`crate::ops::lease`]), renewed while it
//!   works; other nodes wait for it to lapse. A stalled holder that loses
//!   the lease may overlap its successor for one attempt: receivers dedupe
//!   by event id.
//! - **Order.** Due events are taken oldest first; one user's events go
//!   one after the other in creation order, users in parallel (at most
//!   `concurrency` requests in flight). A failure stops that user's chain
//!   for this pass; the retried event may then arrive after later ones.
//! - **Retries.** Anything but a 2xx (or no answer within the timeouts) is
//!   retried after an exponential, jittered, capped delay, until the event
//!   has been queued for `retry_for` (24 h); then it is `failed`, until
//!   `stowage events replay` queues it again.
//! - **Bounded.** Connect and response timeouts; at most
//!   [`MAX_ANSWER_BYTES`] of an answer are read, and only to quote it in
//!   `last_error`.
//! - **A crash** (even SIGKILL) mid-delivery leaves the event `pending`:
//!   it is sent again, with the same id and body, by whoever holds the
//!   lease next.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use crate::{config::WebhookConfig, core::Core, meta::Event, ops::lease};

/// Lease name in `task_leases`.
pub const LEASE_NAME: &str = "webhooks";
/// Events taken per pass.
const BATCH: u32 = 256;
/// How much of a receiver's answer is read (for the error message).
pub const MAX_ANSWER_BYTES: usize = 1024;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "Stowage-Signature";

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &[u8], t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delay before retry number `attempt` (1 = after the first failure):
/// `backoff_base · 2^(attempt-1)` capped at `backoff_max`, then a random
/// point between half of it and all of it, so receivers coming back are not
/// hit by every sender at once.
pub fn backoff(cfg: &WebhookConfig, attempt: i64) -> Duration {
    let exp = attempt.clamp(1, 40) - 1;
    let full = cfg
        .backoff_base
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(cfg.backoff_max)
        .min(cfg.backoff_max);
    let half = full / 2;
    half + full.mul_f64(rand::random::<f64>() * 0.5)
}

/// When a failed attempt is retried, or `None` when the retry window of
/// an event queued at `queued_at` is over.
pub fn retry_at(
    cfg: &WebhookConfig,
    queued_at: DateTime<Utc>,
    attempts: i64,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let deadline = queued_at + chrono::Duration::from_std(cfg.retry_for).ok()?;
    if now >= deadline {
        return None;
    }
    let next = now + chrono::Duration::from_std(backoff(cfg, attempts)).ok()?;
    Some(next.min(deadline))
}

/// How long the lease is taken for: long enough to ride over a slow pass
/// (it is renewed meanwhile), short enough that a dead holder's successor
/// starts soon.
fn lease_ttl(cfg: &WebhookConfig) -> Duration {
    (cfg.poll * 15).clamp(Duration::from_secs(3), Duration::from_secs(60))
}

/// Starts the delivery worker when a webhook URL is configured.
pub fn spawn(state: Core, stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    let url = state.config.webhook.url.clone()?;
    Some(tokio::spawn(async move { run(state, url, stop).await }))
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn run(state: Core, url: String, mut stop: watch::Receiver<bool>) {
    let cfg = state.config.webhook.clone();
    let holder = format!("{}:{}", std::process::id(), Uuid::new_v4().simple());
    let ttl = lease_ttl(&cfg);
    let client = match reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; events stay pending");
            return;
        }
    };
    tracing::info!(url = %url, "webhook delivery on");
    loop {
        if *stop.borrow() {
            break;
        }
        let mut busy = false;
        match lease::try_acquire(&state, LEASE_NAME, &holder, ttl).await {
            Ok(true) => {
                let work = pass(&state, &client, &url);
                tokio::pin!(work);
                let mut renew = tokio::time::interval(ttl / 3);
                renew.tick().await;
                loop {
                    tokio::select! {
                        r = &mut work => {
                            match r {
                                Ok(n) => busy = n > 0,
                                Err(e) => tracing::warn!(error = %e, "webhook pass failed"),
                            }
                            break;
                        }
                        _ = renew.tick() => {
                            if let Err(e) = lease::try_acquire(&state, LEASE_NAME, &holder, ttl).await {
                                tracing::warn!(error = %e, "could not renew the webhook lease");
                            }
                        }
                        _ = stopped(&mut stop) => {
                            // Unfinished deliveries stay pending: sent again later.
                            let _ = lease::release(&state, LEASE_NAME, &holder).await;
                            return;
                        }
                    }
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not take the webhook lease"),
        }
        if busy {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.poll) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    let _ = lease::release(&state, LEASE_NAME, &holder).await;
}

/// Delivers the events due now; returns how many were attempted.
async fn pass(state: &Core, client: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
    let due = state.meta.due_events(state.now(), BATCH).await?;
    let n = due.len();
    // One chain per user, in creation order.
    let mut chains: Vec<Vec<Event>> = Vec::new();
    for ev in due {
        match chains.iter_mut().find(|c| c[0].user_id == ev.user_id) {
            Some(c) => c.push(ev),
            None => chains.push(vec![ev]),
        }
    }
    futures::stream::iter(chains)
        .for_each_concurrent(state.config.webhook.concurrency, |chain| async move {
            for ev in chain {
                if !deliver(state, client, url, &ev).await {
                    break;
                }
            }
        })
        .await;
    Ok(n)
}

/// One attempt; records its outcome. True when delivered.
async fn deliver(state: &Core, client: &reqwest::Client, url: &str, ev: &Event) -> bool {
    let cfg = &state.config.webhook;
    let secret = cfg.secret.as_ref().map(|s| s.expose()).unwrap_or_default();
    // The wall clock, not the core's: the receiver checks this against its
    // own clock to refuse replays.
    let t = Utc::now().timestamp();
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(secret.as_bytes(), t, &ev.body))
        .header("Stowage-Event-Id", ev.id.to_string())
        .header("Stowage-Event-Type", &ev.event_type)
        .body(ev.body.clone())
        .send()
        .await;
    let outcome = match sent {
        Ok(r) if r.status().is_success() => {
            drain(r).await;
            Ok(())
        }
        Ok(r) => {
            let status = r.status();
            let answer = drain(r).await;
            Err(format!("HTTP {}: {}", status.as_u16(), answer.trim()))
        }
        Err(e) => Err(describe(&e)),
    };
    let now = state.now();
    match outcome {
        Ok(()) => {
            ::metrics::counter!("stowage_webhook_deliveries_total", "outcome" => "delivered")
                .increment(1);
            tracing::debug!(event_id = %ev.id, event_type = %ev.event_type, "event delivered");
            if let Err(e) = state.meta.mark_delivered(ev.id, now).await {
                // Left pending: delivered once more later, which at least once allows.
                tracing::warn!(event_id = %ev.id, error = %e, "could not record a delivery");
            }
            true
        }
        Err(msg) => {
            ::metrics::counter!("stowage_webhook_deliveries_total", "outcome" => "failed")
                .increment(1);
            let next = retry_at(cfg, ev.queued_at, ev.attempts + 1, now);
            match next {
                Some(at) => {
                    tracing::info!(event_id = %ev.id, attempt = ev.attempts + 1, error = %msg, retry_at = %at, "webhook delivery failed; will retry")
                }
                None => {
                    tracing::warn!(event_id = %ev.id, attempt = ev.attempts + 1, error = %msg, "webhook delivery failed for good")
                }
            }
            if let Err(e) = state.meta.mark_attempt_failed(ev.id, &msg, next).await {
                tracing::warn!(event_id = %ev.id, error = %e, "could not record a failed delivery");
            }
            false
        }
    }
}

/// Reads at most [`MAX_ANSWER_BYTES`] of an answer, as text.
async fn drain(mut r: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_ANSWER_BYTES {
        match r.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c[..c.len().min(MAX_ANSWER_BYTES - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        format!("request failed: {e}")
    }
}

/// Deletes events past their retention: delivered ones, and without a
/// webhook URL (nothing will deliver them) every one. Failed events stay
/// until replayed or until a URL is removed. Returns how many went.
pub async fn prune(state: &Core) -> anyhow::Result<u64> {
    let cfg = &state.config.webhook;
    let cutoff = state.now() - chrono::Duration::from_std(cfg.retention)?;
    let any = cfg.url.is_none().then_some(cutoff);
    Ok(state.meta.prune_events(cutoff, any).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, r#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn backoff_doubles_jitters_and_caps() {
        let cfg = WebhookConfig {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(3600),
            ..Default::default()
        };
        for _ in 0..100 {
            let b1 = backoff(&cfg, 1);
            assert!(
                b1 >= Duration::from_secs(5) && b1 <= Duration::from_secs(10),
                "{b1:?}"
            );
            let b3 = backoff(&cfg, 3);
            assert!(
                b3 >= Duration::from_secs(20) && b3 <= Duration::from_secs(40),
                "{b3:?}"
            );
            let big = backoff(&cfg, 500);
            assert!(big >= Duration::from_secs(1800) && big <= Duration::from_secs(3600));
        }
    }

    #[test]
    fn retries_stop_at_the_end_of_the_window() {
        let cfg = WebhookConfig::default();
        let q = Utc::now();
        let t = retry_at(&cfg, q, 1, q).unwrap();
        assert!(t > q);
        let late = q + chrono::Duration::hours(23) + chrono::Duration::minutes(59);
        // Never past the deadline…
        assert!(retry_at(&cfg, q, 30, late).unwrap() <= q + chrono::Duration::hours(24));
        // …and nothing after it.
        assert_eq!(retry_at(&cfg, q, 31, q + chrono::Duration::hours(24)), None);
    }
}
