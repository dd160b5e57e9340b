-- Process identity (src/node.rs): one row per start of a `stowage serve`
-- process (an incarnation of its node), whose heartbeat_at moves forward
-- while it runs. A reservation taken by a request in flight records the
-- incarnation holding it, so that it is released at once when that
-- incarnation is gone. tus reservations have no holder.
CREATE TABLE nodes (
  incarnation_id BINARY(16)   NOT NULL PRIMARY KEY,
  node_id        BINARY(16)   NOT NULL,
  host           VARCHAR(255) NOT NULL DEFAULT '',
  pid            BIGINT       NOT NULL DEFAULT 0,
  started_at     DATETIME(6)  NOT NULL,
  heartbeat_at   DATETIME(6)  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idx_nodes_node ON nodes(node_id);
CREATE INDEX idx_nodes_heartbeat ON nodes(heartbeat_at);

ALTER TABLE upload_reservations ADD COLUMN holder_node BINARY(16);
ALTER TABLE upload_reservations ADD COLUMN holder_incarnation BINARY(16);
CREATE INDEX idx_upload_reservations_holder ON upload_reservations(holder_node, holder_incarnation);
