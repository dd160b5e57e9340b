//! The registry of `serve` processes ([`NodeStore`], table `nodes`): their
//! heartbeats, and the reservations held by requests of processes that are
//! gone (a restart of the same node, or a silent incarnation), so those can
//! be reclaimed at once instead of when they expire.

use async_trait::async_trait;
use uuid::Uuid;

use super::engine::{query, Engine, Query, Row};
use super::quota::id_user_pairs;
use super::SqlStore;
use crate::meta::{Gone, Holder, MetaError, MetaResult, NodeRow, NodeStore};

/// Registers an incarnation or records its heartbeat: 6 values of the row,
/// then the heartbeat again for an existing row. Only the upsert clause
/// differs between the engines (MySQL has no `ON CONFLICT`).
fn heartbeat_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::MySql => {
            "INSERT INTO nodes (incarnation_id, node_id, host, pid, started_at, heartbeat_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE heartbeat_at = ?"
        }
        Engine::Postgres | Engine::Sqlite => {
            "INSERT INTO nodes (incarnation_id, node_id, host, pid, started_at, heartbeat_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (incarnation_id) DO UPDATE SET heartbeat_at = ?"
        }
    }
}

fn node_from_row(r: &Row) -> Result<NodeRow, sqlx::Error> {
    Ok(NodeRow {
        holder: Holder {
            node: r.get("node_id")?,
            incarnation: r.get("incarnation_id")?,
        },
        host: r.get("host")?,
        pid: r.get("pid")?,
        started_at: r.get("started_at")?,
        heartbeat_at: r.get("heartbeat_at")?,
    })
}

/// The reservations `gone` names, as `(id, user_id)`.
fn gone_reservations_query(gone: &Gone) -> Query {
    match *gone {
        // No incarnation has the nil id, so `except: None` spares none.
        Gone::Node { node, except } => query(
            "SELECT id, user_id FROM upload_reservations \
             WHERE holder_node = ? AND holder_incarnation IS NOT NULL AND holder_incarnation <> ?",
        )
        .bind(node)
        .bind(except.unwrap_or(Uuid::nil())),
        Gone::SilentSince(t) => query(
            "SELECT id, user_id FROM upload_reservations r \
             WHERE r.holder_incarnation IS NOT NULL AND NOT EXISTS ( \
               SELECT 1 FROM nodes n \
               WHERE n.incarnation_id = r.holder_incarnation AND n.heartbeat_at >= ?)",
        )
        .bind(t),
    }
}

/// Deletes the node rows `gone` names.
fn forget_query(gone: &Gone) -> Query {
    match *gone {
        Gone::Node { node, except } => {
            query("DELETE FROM nodes WHERE node_id = ? AND incarnation_id <> ?")
                .bind(node)
                .bind(except.unwrap_or(Uuid::nil()))
        }
        Gone::SilentSince(t) => query("DELETE FROM nodes WHERE heartbeat_at < ?").bind(t),
    }
}

#[async_trait]
impl NodeStore for SqlStore {
    async fn heartbeat_node(&self, n: &NodeRow) -> MetaResult<()> {
        let s = self;
        query(heartbeat_sql(s.engine()))
            .bind(n.holder.incarnation)
            .bind(n.holder.node)
            .bind(&n.host)
            .bind(n.pid)
            .bind(n.started_at)
            .bind(n.heartbeat_at)
            .bind(n.heartbeat_at)
            .execute(s.db())
            .await?;
        Ok(())
    }

    async fn remove_node(&self, incarnation: Uuid) -> MetaResult<()> {
        let s = self;
        query("DELETE FROM nodes WHERE incarnation_id = ?")
            .bind(incarnation)
            .execute(s.db())
            .await?;
        Ok(())
    }

    async fn list_nodes(&self) -> MetaResult<Vec<NodeRow>> {
        let s = self;
        let rows = query(
            "SELECT incarnation_id, node_id, host, pid, started_at, heartbeat_at \
             FROM nodes ORDER BY started_at, incarnation_id",
        )
        .fetch_all(s.db())
        .await?;
        rows.iter()
            .map(node_from_row)
            .collect::<Result<_, _>>()
            .map_err(MetaError::from)
    }

    async fn gone_reservations(&self, gone: &Gone) -> MetaResult<Vec<(Uuid, String)>> {
        let s = self;
        let rows = gone_reservations_query(gone).fetch_all(s.db()).await?;
        id_user_pairs(&rows)
    }

    async fn forget_nodes(&self, gone: &Gone) -> MetaResult<u64> {
        let s = self;
        Ok(forget_query(gone).execute(s.db()).await?)
    }
}
