#!/usr/bin/env python3
"""Summary of an interleaved benchmark run (bench/run.sh).

  table.py DIR --size 1GiB --conc 16 --conc-size 64MiB --range-size 512MiB

Reads DIR/round-<N>.raw.tsv (measure.py's raw format, one file per round),
writes DIR/raw.tsv (every row, with its round), DIR/summary.tsv (median,
min, max, n per peer and metric) and DIR/table.md (the figures stowage is
held to: medians with min–max and n, the ratio of the two medians, and the
range of the per-round ratios, each taken from one round's rows only), and
prints the table. Listing summaries in DIR (list-<rows>.tsv, written by
bench/list/run.sh through list_mix.py) add a table of p50/p99 per query kind
and engine.
"""
import argparse
import glob
import os
import re
import statistics
import sys

# (figure, stowage label, metric, reference label, reference metric, better)
# metric names: {sz} single file, {csz} each concurrent file, {n} how many,
# {rsz} the Range length. better: "high" (throughput) or "low" (CPU, RSS).
ROWS = [
    ("multipart upload {sz}, fsynced, MB/s", "stowage", "upload_{sz}_then_sync",
     "express-multer", "upload_{sz}_then_sync", "high"),
    ("multipart upload {sz}, fsynced, MB/s", "stowage", "upload_{sz}_then_sync",
     "disk-dd", "write_fsync_newblocks_{sz}", "high"),
    ("multipart upload server CPU, cpu-s/GiB", "stowage", "upload_{sz}_server_cpu",
     "express-multer", "upload_{sz}_server_cpu", "low"),
    ("multipart upload peak RSS, MiB", "stowage", "upload_{sz}_peak_rss",
     "express-multer", "upload_{sz}_peak_rss", "low"),
    ("tus upload {sz}, 1 PATCH, fsynced, MB/s", "stowage-tus", "upload_{sz}_then_sync",
     "tus-node", "upload_{sz}_then_sync", "high"),
    ("tus upload {sz}, 8 MiB PATCHes, fsynced, MB/s", "stowage-tus-8MiB", "upload_{sz}_then_sync",
     "tus-node-8MiB", "upload_{sz}_then_sync", "high"),
    ("tus upload server CPU (1 PATCH), cpu-s/GiB", "stowage-tus", "upload_{sz}_server_cpu",
     "tus-node", "upload_{sz}_server_cpu", "low"),
    ("tus upload server CPU (8 MiB PATCHes), cpu-s/GiB", "stowage-tus-8MiB", "upload_{sz}_server_cpu",
     "tus-node-8MiB", "upload_{sz}_server_cpu", "low"),
    ("tus upload peak RSS (1 PATCH), MiB", "stowage-tus", "upload_{sz}_peak_rss",
     "tus-node", "upload_{sz}_peak_rss", "low"),
    ("tus: {n} × {csz} uploads at once (1 PATCH each), MB/s", "stowage-tus", "conc{n}x{csz}_upload",
     "tus-node", "conc{n}x{csz}_upload", "high"),
    ("tus: {n} × {csz} uploads at once, server CPU, cpu-s/GiB", "stowage-tus",
     "conc{n}x{csz}_upload_server_cpu", "tus-node", "conc{n}x{csz}_upload_server_cpu", "low"),
    ("tus: {n} × {csz} uploads at once, peak RSS, MiB", "stowage-tus", "conc{n}x{csz}_upload_peak_rss",
     "tus-node", "conc{n}x{csz}_upload_peak_rss", "low"),
    ("download {sz}, curl, MB/s", "stowage", "download_{sz}", "nginx-sendfile", "download_{sz}", "high"),
    ("download {sz}, lean client, MB/s", "stowage-pyclient", "download_{sz}",
     "nginx-sendfile-pyclient", "download_{sz}", "high"),
    ("download server CPU (curl), cpu-s/GiB", "stowage", "download_{sz}_server_cpu",
     "nginx-sendfile", "download_{sz}_server_cpu", "low"),
    ("download server CPU (lean client), cpu-s/GiB", "stowage-pyclient", "download_{sz}_server_cpu",
     "nginx-sendfile-pyclient", "download_{sz}_server_cpu", "low"),
    ("download {sz} warm in the page cache (one Range of all of it), curl, MB/s", "stowage",
     "download_warm_{sz}", "nginx-sendfile", "download_{sz}", "high"),
    ("download server CPU, warm (curl), cpu-s/GiB", "stowage", "download_warm_{sz}_server_cpu",
     "nginx-sendfile", "download_{sz}_server_cpu", "low"),
    ("download Range {rsz}, curl, MB/s", "stowage", "download_range_{rsz}",
     "nginx-sendfile", "download_range_{rsz}", "high"),
    ("download Range server CPU, cpu-s/GiB", "stowage", "download_range_{rsz}_server_cpu",
     "nginx-sendfile", "download_range_{rsz}_server_cpu", "low"),
    ("{n} × {csz} uploads at once, MB/s", "stowage", "conc{n}x{csz}_upload",
     "disk-dd", "conc{n}x{csz}_write_fsync", "high"),
    ("{n} × {csz} uploads at once, MB/s", "stowage", "conc{n}x{csz}_upload",
     "express-multer", "conc{n}x{csz}_upload", "high"),
    ("{n} × {csz} uploads at once, server CPU, cpu-s/GiB", "stowage", "conc{n}x{csz}_upload_server_cpu",
     "express-multer", "conc{n}x{csz}_upload_server_cpu", "low"),
    ("{n} × {csz} uploads at once, peak RSS, MiB", "stowage", "conc{n}x{csz}_upload_peak_rss",
     "express-multer", "conc{n}x{csz}_upload_peak_rss", "low"),
    ("S3: multipart upload {sz}, MB/s", "stowage-s3", "upload_{sz}",
     "boto3-garage", "upload_{sz}", "high"),
    ("S3: download {sz}, curl, MB/s", "stowage-s3", "download_{sz}",
     "boto3-garage", "download_{sz}", "high"),
    ("S3: {n} × {csz} uploads at once, MB/s", "stowage-s3", "conc{n}x{csz}_upload",
     "boto3-garage", "conc{n}x{csz}_upload", "high"),
    ("S3: upload {sz} peak RSS, MiB", "stowage-s3", "upload_{sz}_peak_rss", None, None, "low"),
    ("S3: {n} × {csz} uploads at once, peak RSS, MiB", "stowage-s3", "conc{n}x{csz}_upload_peak_rss",
     None, None, "low"),
    # the build given as BASE_BIN, measured in the same rounds
    ("download {sz}, curl, MB/s: this build / BASE_BIN", "stowage", "download_{sz}",
     "stowage-before", "download_{sz}", "high"),
    ("download {sz}, lean client, MB/s: this build / BASE_BIN", "stowage-pyclient", "download_{sz}",
     "stowage-before-pyclient", "download_{sz}", "high"),
    ("download server CPU (curl), cpu-s/GiB: this build / BASE_BIN", "stowage", "download_{sz}_server_cpu",
     "stowage-before", "download_{sz}_server_cpu", "low"),
    ("download Range {rsz}, MB/s: this build / BASE_BIN", "stowage", "download_range_{rsz}",
     "stowage-before", "download_range_{rsz}", "high"),
    ("multipart upload server CPU, cpu-s/GiB: this build / BASE_BIN", "stowage", "upload_{sz}_server_cpu",
     "stowage-before", "upload_{sz}_server_cpu", "low"),
    ("multipart upload {sz}, fsynced, MB/s: this build / BASE_BIN", "stowage", "upload_{sz}_then_sync",
     "stowage-before", "upload_{sz}_then_sync", "high"),
]


def read_rounds(d):
    rows = []
    for path in sorted(glob.glob(os.path.join(d, "round-*.raw.tsv"))):
        rnd = int(re.search(r"round-(\d+)", path).group(1))
        with open(path) as f:
            header = f.readline().rstrip("\n").split("\t")
            for line in f:
                if not line.strip() or line.startswith("timestamp\t"):
                    continue
                r = dict(zip(header, line.rstrip("\n").split("\t")))
                r["round"] = rnd
                rows.append(r)
    return rows


def fmt(v, unit):
    if v is None:
        return "–"
    if unit == "cpu-s/GiB":
        return f"{v:.2f}"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


def stat(vals, unit):
    if not vals:
        return "–"
    return f"{fmt(statistics.median(vals), unit)} ({fmt(min(vals), unit)}–{fmt(max(vals), unit)}, n={len(vals)})"


ENGINES = [("sqlite", "SQLite"), ("postgres", "PostgreSQL"), ("mariadb", "MariaDB")]
# The engines the listing target is stated for (MariaDB has no trigram index).
TARGET_ENGINES = ("sqlite", "postgres")


def listing_table(d):
    """Lines of the listing table from DIR/list-*.tsv (none without): a column
    per engine measured (its label ends with the engine's name)."""
    lst = {}
    for path in sorted(glob.glob(os.path.join(d, "list-*.tsv"))):
        if path.endswith(".raw.tsv"):
            continue
        with open(path) as f:
            head = f.readline().rstrip("\n").split("\t")
            for line in f:
                r = dict(zip(head, line.rstrip("\n").split("\t")))
                engine = next((e for e, _ in ENGINES if r["label"].endswith(e)), None)
                if engine is None:
                    continue
                lst[(int(r.get("rows") or 0), r["kind"], engine)] = r
    if not lst:
        return []
    engines = [(e, name) for e, name in ENGINES if any(k[2] == e for k in lst)]
    out = ["", "Listing (`GET /api/files?limit=50`, one keep-alive connection, bench/list/list_mix.py; "
           "target: p99 < 10 ms on SQLite and PostgreSQL):", "",
           "| rows | kind | " + " | ".join(f"{name} p50 / p99, ms" for _, name in engines)
           + " | p99 < 10 ms |",
           "|---|---|" + "---|" * len(engines) + "---|"]
    kinds = []
    for _, k, _ in lst:
        if k not in kinds:
            kinds.append(k)
    for rows in sorted({r for r, _, _ in lst}):
        for k in kinds:
            cells, met = [], []
            for engine, _ in engines:
                r = lst.get((rows, k, engine))
                if r:
                    cells.append(f"{float(r['p50_ms']):.2f} / {float(r['p99_ms']):.2f}")
                    if engine in TARGET_ENGINES:
                        met.append(float(r["p99_ms"]) < 10)
                else:
                    cells.append("n/a")
            verdict = "no target" if k == "q_short" else (
                "met" if met and all(met) else "**not met**" if met else "")
            out.append(f"| {rows:,} | {k} | " + " | ".join(cells) + f" | {verdict} |")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--conc", default="16")
    ap.add_argument("--conc-size", default="64MiB")
    ap.add_argument("--range-size", default="512MiB")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    rows = read_rounds(a.dir)
    cols = ["round", "timestamp", "peer", "metric", "rep", "value", "unit", "note"]
    with open(os.path.join(a.dir, "raw.tsv"), "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            f.write("\t".join(str(r.get(c, "")) for c in cols) + "\n")
    vals, units, fails = {}, {}, {}
    for r in rows:
        key = (r["peer"], r["metric"])
        units[key] = r["unit"]
        if r["value"] == "NA":
            fails[key] = fails.get(key, 0) + 1
            continue
        vals.setdefault(key, []).append((r["round"], float(r["value"])))
    with open(os.path.join(a.dir, "summary.tsv"), "w") as f:
        f.write("peer\tmetric\tunit\tn\tmedian\tmin\tmax\tfailed\n")
        for key in sorted(set(vals) | set(fails)):
            v = [x for _, x in vals.get(key, [])]
            cells = [f"{statistics.median(v):.3f}", f"{min(v):.3f}", f"{max(v):.3f}"] if v else ["NA"] * 3
            f.write("\t".join([key[0], key[1], units[key], str(len(v))] + cells + [str(fails.get(key, 0))]) + "\n")

    sub = {"sz": a.size, "csz": a.conc_size, "n": a.conc, "rsz": a.range_size}
    out = []
    if a.title:
        out += [a.title, ""]
    head = ["| figure | stowage | reference | ratio of medians | per-round ratios |",
            "|---|---|---|---|---|"]
    out += head
    for fig, sl, sm, rl, rm, _better in ROWS:
        sm, fig = sm.format(**sub), fig.format(**sub)
        s = vals.get((sl, sm))
        if not s:
            continue
        unit = units[(sl, sm)]
        sv = [x for _, x in s]
        ref, ratio, per_round = "", "", ""
        if rl:
            rm = rm.format(**sub)
            r = vals.get((rl, rm))
            if not r:
                continue
            rv = [x for _, x in r]
            ref = f"{rl} `{rm}`: {stat(rv, unit)}"
            mr = statistics.median(rv)
            ratio = f"{statistics.median(sv) / mr:.2f}×" if mr else "–"
            rr = []
            for rnd in sorted({k for k, _ in s} & {k for k, _ in r}):
                a_ = statistics.median([x for k, x in s if k == rnd])
                b_ = statistics.median([x for k, x in r if k == rnd])
                if b_:
                    rr.append(a_ / b_)
            if rr:
                per_round = f"{min(rr):.2f}–{max(rr):.2f} ({len(rr)} rounds)"
        out.append(f"| {fig} | {sl}: {stat(sv, unit)} | {ref} | {ratio} | {per_round} |")
    if out[-len(head):] == head:
        out = out[:-len(head)]  # no round figures (ONLY=list)
    fails_txt = [f"{p} {m}: {n}" for (p, m), n in sorted(fails.items())]
    if fails_txt:
        out += ["", "Failed measurements (NA rows in raw.tsv): " + "; ".join(fails_txt) + "."]
    out += listing_table(a.dir)
    text = "\n".join(out) + "\n"
    with open(os.path.join(a.dir, "table.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
