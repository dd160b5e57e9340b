#!/usr/bin/env python3
"""Source files for the upload benchmark, under the names measure.py uses.

stowage decides a file's type from its first bytes and refuses content it
does not recognise, so pure random bytes (what measure.py makes by itself)
would be answered 415. Each file here is the 4-byte ZIP local-header magic
`PK\\x03\\x04` followed by random bytes: accepted as a `project`, which has no
thumbnail or media-probe job, so nothing runs in the background after an
upload. Same sizes and names as measure.py's own files, equally
incompressible; measure.py reuses a file that is already there with the
right size.

usage: mkdata.py DIR SIZE CONC CONC_SIZE
"""
import os
import sys

MAGIC = b"PK\x03\x04"


def parse_size(s):
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for u, f in units.items():
        if s.endswith(u):
            return int(s[: -len(u)]) * f
    return int(s)


def fmt_size(n):  # as measure.py names its files
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f}{unit}"
    return f"{n}B"


def make(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        with open(path, "rb") as f:
            if f.read(4) == MAGIC:
                return
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        left = size - len(MAGIC)
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main():
    d, size, conc, csize = sys.argv[1], parse_size(sys.argv[2]), int(sys.argv[3]), parse_size(sys.argv[4])
    os.makedirs(d, exist_ok=True)
    make(os.path.join(d, f"random-{fmt_size(size)}.bin"), size)
    for i in range(conc):
        make(os.path.join(d, f"random-{fmt_size(csize)}-{i:02d}.bin"), csize)


if __name__ == "__main__":
    main()
