#!/usr/bin/env python3
"""GET /api/files latency for the listing mix, one keep-alive connection.

Kinds (each --n requests, interleaved round-robin so a noisy spell hits all):
  date_desc, date_asc, name_asc, name_desc, size_asc, size_desc
            page 1 of that sort, limit=50, then (every other round) the page
            after it, following next_cursor
  q_match   q=beach (10 % of the names), default sort
  q_match_name, q_match_size
            q=beach with sort=file_name asc / sort=file_size desc
  q_rare    q=000123 (one name)
  q_nomatch q=NOMATCH (no name)
  q_short   q=zz (two characters: no trigram; reads the user's rows; no
            target, reported apart and left out of "all")
  type_audio
            type=audio (15 % of the rows), default sort
  deep_cursor
            pages 2..5 of the default sort, each following the next_cursor
            of the one before (4 requests a round)
Latency: request sent to last body byte; JSON parsed after the clock stops.
Every answer must be 200 with the number of files the data implies.

--summary writes label/kind/n/p50/p99/max rows (bench/list/run.sh, and
bench/run.sh's table through it); --api-summary writes the same figures in
bench/api's peer/metric rows (list50_<kind>_p50|p99, bench/api/report.py).

usage: list_mix.py --url URL --token T --label L [--n 100] [--rows R]
                   [--summary OUT.tsv] [--raw OUT.tsv] [--api-summary OUT.tsv]
"""
import argparse
import datetime as dt
import http.client
import json
import os
import sys
import time
from urllib.parse import quote, urlsplit

SORTS = {
    "date_desc": "sort=upload_date&order=desc",
    "date_asc": "sort=upload_date&order=asc",
    "name_asc": "sort=file_name&order=asc",
    "name_desc": "sort=file_name&order=desc",
    "size_asc": "sort=file_size&order=asc",
    "size_desc": "sort=file_size&order=desc",
}
QUERIES = {
    "q_match": ("q=beach", 50),
    "q_match_name": ("q=beach&sort=file_name&order=asc", 50),
    "q_match_size": ("q=beach&sort=file_size&order=desc", 50),
    "q_rare": ("q=000123", 1),
    "q_nomatch": ("q=NOMATCH", 0),
    "q_short": ("q=zz", 0),
    "type_audio": ("type=audio", 50),
}
# bench/api/report.py's names for some of the kinds above
API_KINDS = {
    "all": "all",
    "date_desc": "first",
    "deep_cursor": "cursor",
    "q_match": "q",
    "type_audio": "type",
    "name_asc": "name",
    "q_nomatch": "q_nomatch",
}


def pct(v, p):
    s = sorted(v)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--raw")
    ap.add_argument("--summary")
    ap.add_argument("--api-summary")
    ap.add_argument("--rows", type=int, default=0, help="rows seeded (written to --summary)")
    a = ap.parse_args()
    u = urlsplit(a.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    hdrs = {"Authorization": f"Bearer {a.token}", "Connection": "keep-alive"}

    def get(path):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=hdrs)
        r = conn.getresponse()
        body = r.read()
        ms = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            sys.exit(f"{path}: HTTP {r.status} {body[:200]!r}")
        return ms, json.loads(body)

    rows = []
    cursors = {}
    for rnd in range(a.warmup + a.n):
        for kind, qs in SORTS.items():
            path = f"/api/files?limit=50&{qs}"
            if rnd % 2 == 1 and cursors.get(kind):
                path += "&cursor=" + quote(cursors[kind], safe="")
            ms, page = get(path)
            if len(page["files"]) != 50 or not page["next_cursor"]:
                sys.exit(f"{kind}: {len(page['files'])} files")
            cursors[kind] = page["next_cursor"] if rnd % 2 == 0 else None
            if rnd >= a.warmup:
                rows.append((kind, rnd, ms))
        for kind, (qs, want) in QUERIES.items():
            ms, page = get(f"/api/files?limit=50&{qs}")
            if len(page["files"]) != want:
                sys.exit(f"{kind}: {len(page['files'])} files, expected {want}")
            if rnd >= a.warmup:
                rows.append((kind, rnd, ms))
        _, page = get("/api/files?limit=50")  # page 1, untimed: the cursor pages follow it
        cursor = page["next_cursor"]
        for _ in range(4):
            ms, page = get("/api/files?limit=50&cursor=" + quote(cursor, safe=""))
            if len(page["files"]) != 50 or not page["next_cursor"]:
                sys.exit(f"deep_cursor: {len(page['files'])} files")
            cursor = page["next_cursor"]
            if rnd >= a.warmup:
                rows.append(("deep_cursor", rnd, ms))
    conn.close()

    ts = dt.datetime.now().isoformat(timespec="seconds")
    if a.raw:
        new = not os.path.exists(a.raw) or os.path.getsize(a.raw) == 0
        with open(a.raw, "a") as f:
            if new:
                f.write("ts\tlabel\tkind\tround\tms\n")
            for kind, rnd, ms in rows:
                f.write(f"{ts}\t{a.label}\t{kind}\t{rnd}\t{ms:.3f}\n")
    groups = {"all": [r[2] for r in rows if r[0] != "q_short"]}
    for kind in list(SORTS) + list(QUERIES) + ["deep_cursor"]:
        groups[kind] = [r[2] for r in rows if r[0] == kind]
    out = []
    for kind, v in groups.items():
        out.append((kind, len(v), pct(v, 50), pct(v, 99), max(v)))
        print(f"{a.label:18s} {kind:13s} n={len(v):5d} p50={pct(v, 50):8.2f} ms "
              f"p99={pct(v, 99):8.2f} ms max={max(v):8.2f} ms", file=sys.stderr)
    if a.summary:
        new = not os.path.exists(a.summary) or os.path.getsize(a.summary) == 0
        with open(a.summary, "a") as f:
            if new:
                f.write("label\trows\tkind\tn\tp50_ms\tp99_ms\tmax_ms\n")
            for kind, n, p50, p99, mx in out:
                f.write(f"{a.label}\t{a.rows}\t{kind}\t{n}\t{p50:.2f}\t{p99:.2f}\t{mx:.2f}\n")
    if a.api_summary:
        new = not os.path.exists(a.api_summary) or os.path.getsize(a.api_summary) == 0
        with open(a.api_summary, "a") as f:
            if new:
                f.write("peer\tmetric\tunit\tn\tvalue\tmin\tmax\tnote\n")
            for kind, n, p50, p99, mx in out:
                if kind not in API_KINDS:
                    continue
                v = groups[kind]
                note = f"{n} sequential keep-alive GETs (list_mix.py {kind})"
                for p, val in ((50, p50), (99, p99)):
                    f.write(f"{a.label}\tlist50_{API_KINDS[kind]}_p{p}\tms\t{n}\t{val:.2f}"
                            f"\t{min(v):.2f}\t{mx:.2f}\t{note}\n")


if __name__ == "__main__":
    main()
