#!/usr/bin/env python3
"""Writes the "Multipart upload, download and listing (issue 2)" section of
docs/benchmarks.md from one run's summaries; every other section of that
file is left exactly as it is.

usage: report.py --summary stowage-DATE.tsv --list stowage-DATE.list.tsv
                 --versions stowage-DATE.versions.txt --peers peers-DATE.tsv
                 --doc docs/benchmarks.md [--notes bench/api/notes.md]
"""
import argparse
import os
import re

TITLE = "## Multipart upload, download and listing (issue 2)"


def read_tsv(path):
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        return [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]


def index(rows):
    return {(r["peer"], r["metric"]): r for r in rows}


def versions(path):
    out = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                if ": " in line:
                    k, v = line.rstrip("\n").split(": ", 1)
                    out[k] = v
    return out


def num(r, key="median"):
    try:
        return float(r[key])
    except (KeyError, TypeError, ValueError):
        return None


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "cpu-s/GiB":
        return f"{v:.2f}"
    if unit == "ms":
        return f"{v:.2f}"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def cell(r):
    """median (min–max, n) from a summary row."""
    if not r or num(r) is None:
        return "n/a"
    u = r["unit"]
    s = f"{fmt(num(r), u)} ({fmt(num(r, 'min'), u)}–{fmt(num(r, 'max'), u)}, n={r['n']})"
    if r.get("failed") not in (None, "", "0"):
        s += f", {r['failed']} failed"
    return s


def ratio(a, b):
    va, vb = num(a), num(b)
    if va is None or vb in (None, 0):
        return None
    return va / vb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--summary", required=True)
    ap.add_argument("--list")
    ap.add_argument("--versions")
    ap.add_argument("--peers")
    ap.add_argument("--doc", required=True)
    ap.add_argument("--notes", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md"))
    a = ap.parse_args()

    s = index(read_tsv(a.summary))
    p = index(read_tsv(a.peers))
    lst = index([dict(r, median=r["value"]) for r in read_tsv(a.list)])
    v = versions(a.versions)
    pv = versions(a.peers[: -len(".tsv")] + ".versions.txt") if a.peers else {}
    root = os.path.dirname(os.path.dirname(os.path.abspath(a.doc)))  # docs/.. = the repository
    rel = lambda path: os.path.relpath(os.path.abspath(path), root) if path else "n/a"

    conc = next((m for (peer, m) in s if peer == "stowage" and re.fullmatch(r"conc\d+x\w+_upload", m)), None)
    conc_disk = conc.replace("_upload", "_write_fsync") if conc else None
    peer_conc = next((m for (peer, m) in p if peer == "express-multer" and re.fullmatch(r"conc\d+x\w+_upload", m)), None)
    same_session = bool(a.peers) and os.path.dirname(os.path.abspath(a.peers)) == os.path.dirname(os.path.abspath(a.summary))
    peer_when = pv.get("date", "unknown date")

    L = []
    w = L.append
    w(TITLE)
    w("")
    w(f"Run of {v.get('date', '?')} on {v.get('host', '?')} ({v.get('cpu', '?')}); "
      f"stowage {v.get('stowage', '?')}, release build; {v.get('fs', '')}. "
      f"Command: `bench/api/run.sh`; raw figures in `bench/api/results/` "
      f"(`{os.path.basename(a.summary)}` and its `.raw.tsv`, `.list*.tsv`, `.versions.txt`, `.log`).")
    w("")
    w("How: the peers' own client, `../shared/peers/measure.py`, against `stowage serve` "
      "(SQLite metadata, development sign-in, one user, quota raised to 1 TiB), exactly as it measures the peers: "
      "curl multipart upload of a 1 GiB file (field `file`, `Expect:` off), then a download of it, "
      "each repetition landing on new disk blocks (nothing deleted until the end); "
      "peak RSS = VmHWM of the server after `clear_refs`; server CPU from `/proc`. "
      "stowage fsyncs before it answers, so its `upload_1GiB` is held against `dd conv=fsync` "
      "of the same file on the same volume in the same run (`write_fsync_newblocks`), and against "
      "the peers' `upload_1GiB_then_sync` (they do not fsync). The source files are the ZIP magic "
      "`PK\\x03\\x04` followed by random bytes (stowage refuses content it cannot type; a ZIP is stored as a "
      "`project`, which has no media job), as incompressible as the peers' purely random files. "
      "Medians with (min–max, n); MB/s = 10^6 B/s.")
    w("")
    if a.peers:
        w(f"Peer figures: `{rel(a.peers)}`, run of {peer_when} "
          f"({'this session, right before stowage' if same_session else 'an earlier session on this machine: ratios against them carry the host noise between runs'}).")
    else:
        w("Peer figures: none found.")
    w("")

    rows = []

    def line(label, mine, ref=None, ref_label="", target=None, cmp=None):
        r = ratio(mine, ref) if ref else None
        met = ""
        if target is not None:
            val = r if cmp == "ratio" else num(mine)
            if val is None:
                met = "n/a"
            elif cmp == "ratio":
                met = "**met**" if val >= target[0] else "**not met**"
            else:
                met = "**met**" if val < target[0] else "**not met**"
            met = f"{target[1]}: {met}"
        rows.append((label, cell(mine), f"{ref_label} {cell(ref)}" if ref else "", f"{r:.2f}" if r is not None else "", met))

    g = lambda m, peer="stowage": s.get((peer, m))
    gp = lambda peer, m: p.get((peer, m))
    line("upload 1 GiB, MB/s (fsynced)", g("upload_1GiB"), g("write_fsync_newblocks_1GiB", "disk-dd"),
         "dd conv=fsync, same run:", (0.80, "≥ 0.80 × dd"), "ratio")
    line("upload 1 GiB, MB/s", g("upload_1GiB"), gp("express-multer", "upload_1GiB_then_sync"),
         "express-multer + sync:")
    line("upload 1 GiB, MB/s", g("upload_1GiB"), gp("disk-dd", "write_fsync_newblocks_1GiB"),
         "peers' dd conv=fsync:")
    line("upload 1 GiB (second series, py-client run), MB/s", g("upload_1GiB", "stowage-pyclient"),
         g("write_fsync_newblocks_1GiB", "disk-dd"), "dd conv=fsync, same run:")
    line("upload 1 GiB peak RSS, MiB", g("upload_1GiB_peak_rss"), gp("express-multer", "upload_1GiB_peak_rss"),
         "express-multer:", (64, "< 64 MiB"), "abs")
    line("upload server CPU, cpu-s/GiB", g("upload_1GiB_server_cpu"), gp("express-multer", "upload_1GiB_server_cpu"),
         "express-multer:")
    line("download 1 GiB (curl), MB/s", g("download_1GiB"), gp("nginx-sendfile", "download_1GiB"),
         "nginx-sendfile (curl):", (0.90, "≥ 0.90 × nginx"), "ratio")
    line("download 1 GiB (py client), MB/s", g("download_1GiB", "stowage-pyclient"),
         gp("nginx-sendfile-pyclient", "download_1GiB"), "nginx-sendfile-pyclient:", (0.90, "≥ 0.90 × nginx"), "ratio")
    line("download 1 GiB (curl), MB/s", g("download_1GiB"), gp("express-multer", "download_1GiB"), "express-multer:")
    line("download server CPU (curl), cpu-s/GiB", g("download_1GiB_server_cpu"),
         gp("nginx-sendfile", "download_1GiB_server_cpu"), "nginx-sendfile:")
    if conc:
        line(f"{conc} (aggregate), MB/s", g(conc), g(conc_disk, "disk-dd"), "16 dd conv=fsync at once, same run:")
        if peer_conc:
            line(f"{conc} (aggregate), MB/s", g(conc), gp("express-multer", peer_conc),
                 f"express-multer {peer_conc.split('_')[0]}:")
        line(f"{conc} peak RSS, MiB", g(conc + "_peak_rss"),
             gp("express-multer", peer_conc + "_peak_rss") if peer_conc else None, "express-multer:")
        line(f"{conc} server CPU, cpu-s/GiB", g(conc + "_server_cpu"),
             gp("express-multer", peer_conc + "_server_cpu") if peer_conc else None, "express-multer:")
    line("idle RSS, MiB", g("idle_rss"), gp("express-multer", "idle_rss"), "express-multer:")
    line("sha256 round trip", g("verify_sha256"))

    w("| figure | stowage | reference | ratio | target |")
    w("|---|---|---|---|---|")
    for r in rows:
        w("| " + " | ".join(r) + " |")
    w("")

    if lst:
        w(f"Listing: {v.get('settings', '').split('LIST_ROWS=')[-1].split()[0] if 'LIST_ROWS=' in v.get('settings', '') else '100000'} "
          "rows of one user inserted straight into the database (`bench/api/seed_sqlite.py`, "
          "`bench/api/seed_postgres.sql`: the same rows on both; 30 % video, 40 % image, 15 % audio, "
          "5 % scene, 10 % project; \"beach\" in 10 % of the names), then "
          "sequential `GET /api/files?limit=50` over one keep-alive connection (`bench/list/list_mix.py`), "
          "timed from request to last body byte, round-robin over every sort and order (with cursor pages), "
          "`q=` matching 10 %, one name and none, `type=audio`, and four `cursor` pages "
          "following `next_cursor`. "
          "PostgreSQL: 15, local, `ANALYZE` after the insert; SQLite: no `ANALYZE`, as a store grown by uploads.")
        w("")
        w("| requests | SQLite p50 / p99, ms | PostgreSQL p50 / p99, ms | target |")
        w("|---|---|---|---|")
        kinds = [("all", "all (the mix)"), ("first", "first page"), ("cursor", "cursor pages"),
                 ("q", "`q=beach`"), ("type", "`type=audio`"), ("name", "`sort=file_name`"),
                 ("q_nomatch", "`q=NOMATCH` (worst case)")]
        for k, label in kinds:
            cells = []
            n = ""
            for peer in ("stowage-sqlite", "stowage-postgres"):
                r50, r99 = lst.get((peer, f"list50_{k}_p50")), lst.get((peer, f"list50_{k}_p99"))
                if r50 and r99:
                    cells.append(f"{float(r50['value']):.2f} / {float(r99['value']):.2f}")
                    n = r50["n"]
                else:
                    cells.append("n/a")
            tgt = ""
            if k == "all":
                ok = []
                for peer in ("stowage-sqlite", "stowage-postgres"):
                    r99 = lst.get((peer, "list50_all_p99"))
                    if r99:
                        ok.append(f"{'SQLite' if 'sqlite' in peer else 'PostgreSQL'} "
                                  f"{'**met**' if float(r99['value']) < 10 else '**not met**'}")
                tgt = "p99 < 10 ms: " + ", ".join(ok)
            w(f"| {label} (n={n}) | {cells[0]} | {cells[1]} | {tgt} |")
        w("")

    if os.path.exists(a.notes):
        with open(a.notes) as f:
            notes = f.read().strip()
        if notes:
            w(notes)
            w("")

    section = "\n".join(L).rstrip() + "\n"
    doc = open(a.doc).read() if os.path.exists(a.doc) else "# Benchmarks\n"
    pat = re.compile(r"^" + re.escape(TITLE) + r"[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pat.search(doc):
        doc = pat.sub(lambda m: section + ("\n" if m.end() < len(doc) else ""), doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    tmp = a.doc + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, a.doc)


if __name__ == "__main__":
    main()
