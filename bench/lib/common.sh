# Shared shell pieces of the benchmark scripts (sourced, not run).
#
#   . "$ROOT/bench/lib/common.sh"
#   LOG_TAG=bench   # prefix of log lines
#   stowage_start NAME DIR PORT [VAR=value ...]   # sets SERVER_PID and TOKEN
#   ...
#   stop_pid "$SERVER_PID"
#
# stowage_start runs "$BIN serve" (BIN must be set) on 127.0.0.1:PORT with its
# data in DIR: SQLite unless STOWAGE_DATABASE_URL is passed, the development
# sign-in (no JWT key), a 1 TiB default quota, 4 GiB files, rate limits out of
# the way. The extra VAR=value arguments go into its environment (for example
# STOWAGE_BLOB_STORE=s3 ...). TOKEN is a session token of user "bench".

LOG_TAG=${LOG_TAG:-bench}
log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pid PID: TERM, up to 10 s, then KILL; reaps it when it is our child.
stop_pid() {
  local pid=${1:-}
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# wait_http URL PID: until URL answers 2xx (bounded: 30 s) while PID lives.
wait_http() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

stowage_start() {
  local name=$1 dir=$2 port=$3; shift 3
  SERVER_PID= TOKEN=
  mkdir -p "$dir"
  if port_busy "$port"; then log "$name: port $port in use"; return 1; fi
  (cd "$dir" && exec env -u STOWAGE_JWT_PUBLIC_KEY -u CLERK_JWT_KEY -u STOWAGE_JWKS_URL \
      -u DATABASE_URL -u PORT -u USER_STORAGE_ROOT -u STOWAGE_CLAMD -u STOWAGE_BLOB_STORE \
      STOWAGE_BIND="127.0.0.1:$port" STOWAGE_DATA_DIR="$dir" \
      STOWAGE_DATABASE_URL="sqlite://$dir/stowage.db" STOWAGE_STORAGE_ROOT="$dir/users" \
      STOWAGE_DEFAULT_QUOTA=1099511627776 STOWAGE_MAX_FILE_SIZE=4294967296 \
      STOWAGE_RATE_LIMIT_USER=100000 STOWAGE_RATE_LIMIT_IP=100000 \
      RUST_LOG="${RUST_LOG:-warn}" "$@" "$BIN" serve) >"$dir.server.log" 2>&1 &
  SERVER_PID=$!
  if ! wait_http "http://127.0.0.1:$port/readyz" "$SERVER_PID"; then
    log "$name: stowage did not come up; log:"; tail -20 "$dir.server.log" >&2
    stop_pid "$SERVER_PID"; SERVER_PID=; return 1
  fi
  TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$port/api/dev/login" -H 'content-type: application/json' \
    -d '{"user_id":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') || true
  if [ -z "$TOKEN" ]; then log "$name: no session token"; stop_pid "$SERVER_PID"; SERVER_PID=; return 1; fi
  log "$name: stowage up, pid $SERVER_PID, port $port"
}

# machine_info: a few lines describing the host, for a versions file
machine_info() {
  echo "date: $(date -Iseconds)"
  echo "host: $(uname -srm); $(nproc) cores; $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
}
