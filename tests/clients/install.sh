#!/usr/bin/env bash
# Installs the real tus clients the API tests drive (tests/api/tus.rs).
# Idempotent: npm ci runs only when node_modules is missing or the lockfile
# changed since the last install; pip only when tusclient does not import.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

js="$here/tus-js"
stamp="$js/node_modules/.package-lock.sha256"
want="$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)"
if [[ ! -d "$js/node_modules/tus-js-client" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "install.sh: npm ci in $js" >&2
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
fi

py="${PYTHON:-python3}"
if ! "$py" -c 'import tusclient' 2>/dev/null; then
  echo "install.sh: pip install -r $here/tuspy/requirements.txt" >&2
  "$py" -m pip install --quiet -r "$here/tuspy/requirements.txt"
fi
