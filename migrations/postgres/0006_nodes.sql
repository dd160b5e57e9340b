-- Process identity (src/node.rs). Every `stowage serve` process registers one
-- row per start (an incarnation of its node, whose id is kept in the data
-- dir) and pushes heartbeat_at forward while it runs.
--
-- A reservation taken by a request in flight (a multipart upload) records
-- the incarnation holding it; when that incarnation is gone (a later start of
-- the same node, or a heartbeat older than the dead-after limit) any process
-- releases the reservation and removes its staging data at once, instead of
-- waiting for expires_at. tus reservations belong to their upload and have no
-- holder. Rows written before this migration have no holder either, and are
-- left to expire.
CREATE TABLE nodes (
  incarnation_id UUID         PRIMARY KEY,
  node_id        UUID         NOT NULL,
  host           VARCHAR(255) NOT NULL DEFAULT '',
  pid            BIGINT       NOT NULL DEFAULT 0,
  started_at     TIMESTAMPTZ  NOT NULL,
  heartbeat_at   TIMESTAMPTZ  NOT NULL
);
CREATE INDEX idx_nodes_node ON nodes(node_id);
CREATE INDEX idx_nodes_heartbeat ON nodes(heartbeat_at);

ALTER TABLE upload_reservations ADD COLUMN holder_node UUID;
ALTER TABLE upload_reservations ADD COLUMN holder_incarnation UUID;
CREATE INDEX idx_upload_reservations_holder ON upload_reservations(holder_node, holder_incarnation)
  WHERE holder_incarnation IS NOT NULL;
