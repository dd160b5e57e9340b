#!/usr/bin/env python3
"""Sequential GET /api/files latency over one keep-alive connection.

N requests (default 1000) in a fixed cycle of ten:
  first    page 1, default order (upload_date desc), limit=50
  cursor   pages 2..5 following next_cursor from the request before (4 of 10)
  q        q=beach (matches 10 % of the names), limit=50 (2 of 10)
  type     type=audio (15 % of the rows), limit=50 (2 of 10)
  name     sort=file_name&order=asc, limit=50 (1 of 10)
then, outside those N, a worst case: q=NOMATCH (no name matches, so the
whole user's rows are read) --worst times.

Latency: from sending the request to the last body byte (http.client,
Connection: keep-alive); JSON is parsed after the clock stops. After --warmup
untimed requests. Every answer must be 200 with 50 files (the worst case: 0).

usage: list_latency.py --url http://127.0.0.1:PORT --token T --label L
                       [--n 1000] [--worst 50] [--raw OUT.tsv] [--summary OUT.tsv]
"""
import argparse
import datetime as dt
import http.client
import json
import os
import statistics
import sys
import time
from urllib.parse import quote, urlsplit

CYCLE = ["first", "cursor", "cursor", "cursor", "cursor", "q", "q", "type", "type", "name"]


def pct(v, p):
    """Nearest-rank percentile."""
    s = sorted(v)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--worst", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--raw")
    ap.add_argument("--summary")
    a = ap.parse_args()
    u = urlsplit(a.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
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

    cursor = None

    def path_for(kind):
        base = "/api/files?limit=50"
        if kind == "first":
            return base
        if kind == "cursor":
            return base + "&cursor=" + quote(cursor, safe="")
        if kind == "q":
            return base + "&q=beach"
        if kind == "type":
            return base + "&type=audio"
        if kind == "name":
            return base + "&sort=file_name&order=asc"
        if kind == "q_nomatch":
            return base + "&q=NOMATCH"
        raise ValueError(kind)

    for i in range(a.warmup):
        get(path_for(["first", "q", "type", "name"][i % 4]))
    rows = []
    for i in range(a.n):
        kind = CYCLE[i % len(CYCLE)]
        ms, page = get(path_for(kind))
        nfiles = len(page["files"])
        if nfiles != 50:
            sys.exit(f"{kind}: {nfiles} files, expected 50")
        if kind in ("first", "cursor"):
            cursor = page["next_cursor"]
            if not cursor:
                sys.exit("no next_cursor")
        rows.append((kind, i + 1, ms, nfiles))
    for i in range(a.worst):
        ms, page = get(path_for("q_nomatch"))
        if page["files"] or page["next_cursor"]:
            sys.exit("q=NOMATCH answered files")
        rows.append(("q_nomatch", a.n + i + 1, ms, 0))
    conn.close()

    ts = dt.datetime.now().isoformat(timespec="seconds")
    if a.raw:
        new = not os.path.exists(a.raw) or os.path.getsize(a.raw) == 0
        with open(a.raw, "a") as f:
            if new:
                f.write("ts\tpeer\tkind\ti\tms\tfiles\n")
            for kind, i, ms, n in rows:
                f.write(f"{ts}\t{a.label}\t{kind}\t{i}\t{ms:.3f}\t{n}\n")
    groups = {"all": [r[2] for r in rows if r[0] != "q_nomatch"]}
    for kind in CYCLE + ["q_nomatch"]:
        groups.setdefault(kind, [r[2] for r in rows if r[0] == kind])
    out = []
    for kind, v in groups.items():
        metric = f"list50_{kind}"
        note = f"{len(v)} sequential keep-alive GETs; mean {statistics.mean(v):.2f} ms"
        for p in (50, 99):
            out.append((metric + f"_p{p}", len(v), pct(v, p), min(v), max(v), note))
        print(f"{a.label} {kind:10s} n={len(v):4d} p50={pct(v, 50):7.2f} ms p99={pct(v, 99):7.2f} ms "
              f"max={max(v):7.2f} ms", file=sys.stderr)
    if a.summary:
        new = not os.path.exists(a.summary) or os.path.getsize(a.summary) == 0
        with open(a.summary, "a") as f:
            if new:
                f.write("peer\tmetric\tunit\tn\tvalue\tmin\tmax\tnote\n")
            for metric, n, val, lo, hi, note in out:
                f.write(f"{a.label}\t{metric}\tms\t{n}\t{val:.2f}\t{lo:.2f}\t{hi:.2f}\t{note}\n")


if __name__ == "__main__":
    main()
