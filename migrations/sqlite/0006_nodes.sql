-- Process identity; SQLite dialect of migrations/postgres/0006_nodes.sql.
CREATE TABLE nodes (
  incarnation_id BLOB    PRIMARY KEY,
  node_id        BLOB    NOT NULL,
  host           TEXT    NOT NULL DEFAULT '',
  pid            INTEGER NOT NULL DEFAULT 0,
  started_at     TEXT    NOT NULL,
  heartbeat_at   TEXT    NOT NULL
);
CREATE INDEX idx_nodes_node ON nodes(node_id);
CREATE INDEX idx_nodes_heartbeat ON nodes(heartbeat_at);

ALTER TABLE upload_reservations ADD COLUMN holder_node BLOB;
ALTER TABLE upload_reservations ADD COLUMN holder_incarnation BLOB;
CREATE INDEX idx_upload_reservations_holder ON upload_reservations(holder_node, holder_incarnation)
  WHERE holder_incarnation IS NOT NULL;
