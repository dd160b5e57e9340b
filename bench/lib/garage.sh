# A 3-node Garage cluster on loopback (replication factor 3, one zone per node,
# data_fsync=false as in the test cluster), for the object-store benchmarks.
# Sourced after common.sh:
#
#   garage_start DIR PORT     # RPC on PORT+10.., S3 API on PORT+20..; bucket "bench"
#   ... GARAGE_ENDPOINT, GARAGE_KEY_ID, GARAGE_SECRET, GARAGE_BUCKET, GARAGE_PIDS
#   garage_stop
#
# GARAGE: the binary (default STOWAGE_GARAGE_BIN, else the cached 2.5.0 build).
GARAGE=${GARAGE:-${STOWAGE_GARAGE_BIN:-$HOME/.cache/stowage/garage-2.5.0/bin/garage}}
GARAGE_KEY_ID=GK0123456789abcdef01234567
GARAGE_SECRET=5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7
GARAGE_BUCKET=bench
GARAGE_PIDS=()
GARAGE_DIR=

_garage_retry() { for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; "$@"; }

garage_start() {
  local dir=$1 port=$2 i d id
  [ -x "$GARAGE" ] || { log "garage not found at $GARAGE (set GARAGE)"; return 1; }
  GARAGE_DIR=$dir
  for i in 0 1 2; do
    d=$dir/g$i; mkdir -p "$d"
    cat >"$d/garage.toml" <<TOML
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((port + 10 + i))"
rpc_public_addr = "127.0.0.1:$((port + 10 + i))"
rpc_secret = "$(printf '%064d' 7)"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$((port + 20 + i))"
root_domain = ".s3.garage.localhost"
TOML
    RUST_LOG=garage=warn "$GARAGE" -c "$d/garage.toml" server >"$d/log" 2>&1 &
    GARAGE_PIDS+=($!)
  done
  _g() { "$GARAGE" -c "$dir/g0/garage.toml" "$@"; }
  _node_id() {
    _garage_retry "$GARAGE" -c "$dir/g$1/garage.toml" node id -q
    "$GARAGE" -c "$dir/g$1/garage.toml" node id -q 2>/dev/null
  }
  _garage_retry _g status || return 1
  for i in 1 2; do _g node connect "$(_node_id $i)" >/dev/null || return 1; done
  for i in 0 1 2; do
    id=$(_node_id $i); _g layout assign -z "z$i" -c 10G "${id%@*}" >/dev/null || return 1
  done
  _g layout apply --version 1 >/dev/null || return 1
  _garage_retry _g key import --yes -n bench "$GARAGE_KEY_ID" "$GARAGE_SECRET" || return 1
  _garage_retry _g bucket create "$GARAGE_BUCKET" || return 1
  _g bucket allow --read --write --owner "$GARAGE_BUCKET" --key bench >/dev/null || return 1
  GARAGE_ENDPOINT=http://127.0.0.1:$((port + 20))
  log "garage: 3 nodes up (pids ${GARAGE_PIDS[*]}), S3 at $GARAGE_ENDPOINT"
}

garage_stop() {
  local p
  for p in "${GARAGE_PIDS[@]}"; do stop_pid "$p"; done
  GARAGE_PIDS=()
}

# env for `stowage serve` on this cluster (pass to stowage_start)
garage_stowage_env() {
  echo STOWAGE_BLOB_STORE=s3 STOWAGE_S3_BUCKET="$GARAGE_BUCKET" STOWAGE_S3_ENDPOINT="$GARAGE_ENDPOINT" \
    AWS_ACCESS_KEY_ID="$GARAGE_KEY_ID" AWS_SECRET_ACCESS_KEY="$GARAGE_SECRET"
}
