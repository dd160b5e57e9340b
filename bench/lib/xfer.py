#!/usr/bin/env python3
"""Transfers that ../shared/peers/measure.py does not make, measured its way.

Rows go into the same raw TSV format (timestamp, peer, metric, rep, value,
unit, note) through measure.py's own Raw writer, CPU and RSS helpers (it is
imported from --peers-dir, not copied), so bench/lib/table.py reads them
beside measure.py's rows.

  xfer.py range --peers-dir D --label L --url URL --size N --offset O --length N
                [-H 'Authorization: ...'] [--server-pid P] [--reps R] --out RAW
      curl -r O-(O+N-1) of a file already on the server (bench/run.sh reads
      it once first, so it is warm in the page cache), HTTP 206 and the byte
      count checked; MB/s and server cpu-s/GiB. --metric names the rows
      (bench/run.sh: download_warm_<size> for the whole file as one range).

  xfer.py s3 --peers-dir D --label L --endpoint URL --bucket B --data-dir DATA
             --size N --concurrency C --conc-size N [--server-pid P ...] --out RAW
      boto3 straight to the object store: upload_file of the SIZE file (boto3's
      default multipart: 8 MiB parts, 10 threads), download_fileobj of it into
      a sink, then C uploads of CONC_SIZE at once (one thread each). CPU is
      that of the given server processes (the object store's nodes).
"""
import argparse
import os
import subprocess
import sys
import threading
import time


def load_measure(peers_dir):
    sys.path.insert(0, peers_dir)
    import measure  # noqa: E402  (the peers' client, imported as a module)
    return measure


def cpu_of(m, pids):
    return sum(m.tree_cpu_s(p) for p in pids)


def cmd_range(a, m):
    raw = m.Raw(a.out, a.label)
    end = a.offset + a.length - 1
    hdr = []
    for h in a.header:
        hdr += ["-H", h]
    metric = a.metric or f"download_range_{m.fmt_size(a.length)}"
    pids = [a.server_pid] if a.server_pid else []
    for rep in range(1, a.reps + 1):
        m.sync()
        c0 = cpu_of(m, pids)
        p = subprocess.run(["curl", "-sS", "--max-time", "600", "-o", "/dev/null", "-w", m.CURL_W,
                            "-r", f"{a.offset}-{end}"] + hdr + [a.url],
                           capture_output=True, text=True, timeout=630)
        cpu = cpu_of(m, pids) - c0
        try:
            code, t, _, down = m.Http._parse_w(p.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raw.row(metric, rep, None, "MB/s", f"curl rc={p.returncode} {p.stderr.strip()[:200]}")
            continue
        if code != 206 or down != a.length:
            raw.row(metric, rep, None, "MB/s", f"HTTP {code}, {down} bytes (want 206, {a.length})")
            continue
        raw.row(metric, rep, m.mbps(a.length, t), "MB/s", f"curl -r {a.offset}-{end}, {t:.3f}s")
        if pids:
            raw.row(f"{metric}_server_cpu", rep, cpu / (a.length / m.GIB), "cpu-s/GiB",
                    f"utime+stime of the server tree, {cpu:.2f}s")
    return 1 if raw.failures else 0


class Sink:
    def write(self, b):
        return len(b)


def cmd_s3(a, m):
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    raw = m.Raw(a.out, a.label)
    s3 = boto3.client("s3", endpoint_url=a.endpoint, region_name="us-east-1",
                      aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                      config=Config(s3={"addressing_style": "path"},
                                    max_pool_connections=max(16, a.concurrency)))
    big, small = m.data_files(a.data_dir, a.size, a.concurrency, a.conc_size)
    sz, csz = m.fmt_size(a.size), m.fmt_size(a.conc_size)
    tc = TransferConfig()
    pids = a.server_pid
    for rep in range(1, a.reps + 1):
        key = f"boto3-{os.getpid()}-{rep}-{time.monotonic_ns()}"
        m.sync()
        c0 = cpu_of(m, pids)
        t0 = time.monotonic()
        s3.upload_file(big, a.bucket, key, Config=tc)
        t = time.monotonic() - t0
        cpu = cpu_of(m, pids) - c0
        raw.row(f"upload_{sz}", rep, m.mbps(a.size, t), "MB/s", f"boto3 upload_file, {t:.3f}s")
        if pids:
            raw.row(f"upload_{sz}_server_cpu", rep, cpu / (a.size / m.GIB), "cpu-s/GiB",
                    f"utime+stime of the object store's nodes, {cpu:.2f}s")
        c0 = cpu_of(m, pids)
        t0 = time.monotonic()
        s3.download_fileobj(a.bucket, key, Sink(), Config=tc)
        t = time.monotonic() - t0
        cpu = cpu_of(m, pids) - c0
        raw.row(f"download_{sz}", rep, m.mbps(a.size, t), "MB/s", f"boto3 download_fileobj, {t:.3f}s")
        if pids:
            raw.row(f"download_{sz}_server_cpu", rep, cpu / (a.size / m.GIB), "cpu-s/GiB",
                    f"utime+stime of the object store's nodes, {cpu:.2f}s")
    for rep in range(1, a.reps + 1):
        m.sync()
        errs = []

        def one(i, path):
            try:
                s3.upload_file(path, a.bucket, f"boto3-c{rep}-{i:02d}-{os.getpid()}", Config=tc)
            except Exception as e:  # noqa: BLE001 (reported as a failed row)
                errs.append(str(e)[:200])
        threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(small)]
        t0 = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.monotonic() - t0
        metric = f"conc{a.concurrency}x{csz}_upload"
        raw.row(metric, rep, None if errs else m.mbps(a.conc_size * a.concurrency, wall), "MB/s",
                errs[0] if errs else f"{a.concurrency} boto3 upload_file at once, {wall:.3f}s aggregate")
    return 1 if raw.failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("range", "s3"):
        p = sub.add_parser(name)
        p.add_argument("--peers-dir", required=True)
        p.add_argument("--label", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--reps", type=int, default=1)
    r = sub.choices["range"]
    r.add_argument("--url", required=True)
    r.add_argument("--offset", type=int, required=True)
    r.add_argument("--length", type=int, required=True)
    r.add_argument("-H", "--header", action="append", default=[])
    r.add_argument("--server-pid", type=int)
    r.add_argument("--metric", help="the row's metric (default download_range_<length>)")
    s = sub.choices["s3"]
    s.add_argument("--endpoint", required=True)
    s.add_argument("--bucket", required=True)
    s.add_argument("--data-dir", required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--concurrency", type=int, default=16)
    s.add_argument("--conc-size", type=int, required=True)
    s.add_argument("--server-pid", type=int, action="append", default=[])
    a = ap.parse_args()
    m = load_measure(a.peers_dir)
    return {"range": cmd_range, "s3": cmd_s3}[a.cmd](a, m)


if __name__ == "__main__":
    sys.exit(main())
