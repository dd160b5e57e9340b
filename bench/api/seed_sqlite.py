#!/usr/bin/env python3
"""Inserts N file rows for one user straight into a migrated SQLite database.

The rows are a deterministic function of their number i, the same function
as seed_postgres.sql, so both backends list the same data:
  type by i % 20: 0-5 video, 6-13 image, 14-16 audio, 17 scene, 18-19 project
  name: WORDS[7i % 20] _ WORDS[(13i + 5) % 20] _ i (6 digits) . ext
        ("beach" is in 10 % of the names)
  upload_date: 2026-01-01T00:00:00Z + 60 s * i + (7919 i mod 10^6) µs
  favourite: every 50th; tags: none; id: md5("bench-" || i) as a UUID.
user_storage's counters follow from the insert trigger.

usage: seed_sqlite.py DB USER N MAX_BYTES
"""
import datetime as dt
import hashlib
import sqlite3
import sys
import uuid

WORDS = ["beach", "sunset", "intro", "outro", "family", "drone", "city", "forest",
         "studio", "concert", "holiday", "wedding", "mountain", "river", "night",
         "morning", "travel", "party", "sport", "lecture"]
# (type, dir, ext, mime) by i % 20
KINDS = ([("video", "videos", "mp4", "video/mp4")] * 6 + [("image", "images", "jpg", "image/jpeg")] * 8
         + [("audio", "audio", "mp3", "audio/mpeg")] * 3 + [("scene", "scenes", "json", "application/json")]
         + [("project", "projects", "zip", "application/zip")] * 2)
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def row(user, i):
    t, d, ext, mime = KINDS[i % 20]
    fid = uuid.UUID(hashlib.md5(f"bench-{i}".encode()).hexdigest())
    name = f"{WORDS[(7 * i) % 20]}_{WORDS[(13 * i + 5) % 20]}_{i:06d}.{ext}"
    when = BASE + dt.timedelta(seconds=60 * i, microseconds=(7919 * i) % 1000000)
    sha = hashlib.md5(str(i).encode()).hexdigest() + hashlib.md5(f"{i}x".encode()).hexdigest()
    return (fid.bytes, user, name, t, mime, 1024 + (104729 * i) % 50000000,
            f"{user}/{d}/{fid}.{ext}", "[]", i % 50 == 0, sha,
            when.isoformat(timespec="microseconds"))


def main():
    db, user, n, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    con = sqlite3.connect(db, timeout=30)
    with con:
        con.execute("INSERT INTO user_storage (user_id, max_bytes) VALUES (?, ?) "
                    "ON CONFLICT(user_id) DO UPDATE SET max_bytes = excluded.max_bytes", (user, max_bytes))
        con.executemany(
            "INSERT INTO user_files (id, user_id, file_name, file_type, mime_type, file_size, file_path,"
            " tags, is_favorite, sha256, upload_date) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (row(user, i) for i in range(1, n + 1)))
    cnt, fc = con.execute("SELECT (SELECT count(*) FROM user_files WHERE user_id = ?),"
                          " (SELECT file_count FROM user_storage WHERE user_id = ?)", (user, user)).fetchone()
    con.close()
    print(f"rows={cnt} file_count={fc}")
    if cnt != n or fc != n:
        sys.exit("seed: row count or trigger-kept counter is off")


if __name__ == "__main__":
    main()
