#!/usr/bin/env python3
"""favorite=true listings on SQLite, along the sort order's index (before
migration 0012) and along the favorites' own partial index (after), on a
database seeded by bench/api/seed_sqlite.py (one user, "bench"; every 50th
file a favorite), then again with one favorite in 4,000 files.

Runs the two statements the store issues (SELECT of a page of 51, newest /
last name / largest first), each forced onto its index with INDEXED BY, and
prints p50 and max in ms. No server: the figure is the database's part of
the listing.

usage: favorites.py DB   (a migrated, seeded copy: it is modified)
"""
import sqlite3
import sys
import time

COLS = "id, user_id, file_name, file_type, file_size, upload_date"
SORTS = {"upload_date": "date", "file_name": "name", "file_size": "size"}


def timed(con, sql, args, n):
    v = []
    rows = []
    for _ in range(n):
        a = time.perf_counter()
        rows = con.execute(sql, args).fetchall()
        v.append((time.perf_counter() - a) * 1000)
    v.sort()
    return v[len(v) // 2], v[-1], len(rows)


def run(con, label):
    for sort, key in SORTS.items():
        old = (f"SELECT {COLS} FROM user_files INDEXED BY idx_user_files_user_{key} "
               f"WHERE user_id = ? AND is_favorite = ? ORDER BY {sort} DESC, id DESC LIMIT 51")
        new = (f"SELECT {COLS} FROM user_files INDEXED BY idx_user_files_user_fav_{key} "
               f"WHERE user_id = ? AND is_favorite = 1 ORDER BY {sort} DESC, id DESC LIMIT 51")
        o = timed(con, old, ("bench", True), 5)
        n = timed(con, new, ("bench",), 20)
        print(f"{label}\t{sort} desc\tsort index p50 {o[0]:.2f} max {o[1]:.2f} ms"
              f"\tfavorites index p50 {n[0]:.3f} max {n[1]:.3f} ms\t({n[2]} rows)")


def main():
    con = sqlite3.connect(sys.argv[1])
    con.execute("ANALYZE")
    total = con.execute("SELECT count(*) FROM user_files").fetchone()[0]
    fav = con.execute("SELECT count(*) FROM user_files WHERE is_favorite").fetchone()[0]
    print(f"sqlite {sqlite3.sqlite_version}, {total} files")
    run(con, f"{fav} favorites")
    con.execute("UPDATE user_files SET is_favorite = 0 WHERE is_favorite = 1 AND rowid % 4000 != 0")
    con.commit()
    fav = con.execute("SELECT count(*) FROM user_files WHERE is_favorite").fetchone()[0]
    run(con, f"{fav} favorites")


if __name__ == "__main__":
    main()
