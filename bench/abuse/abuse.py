#!/usr/bin/env python3
"""Abuse benchmark of stowage (SPEC §9: no client can hurt anyone else).

Python 3 standard library only; RS256 tokens are signed with the `openssl`
command line tool. Normally started through `bench/abuse/run.sh`, which builds
the release binary first; `run.sh --help` describes the knobs.

Three roles, one file:

    abuse.py run                       orchestrator (reads its knobs from env)
    abuse.py good CONF OUT             the well-behaved client
    abuse.py attack NAME CONF OUT      one attack
    abuse.py table RESULTS.json        the markdown table of a recorded run

The orchestrator starts a fresh `stowage serve` per attack (SQLite, a data
dir of its own, real RS256 authentication, an admin token, the default
limits), measures a baseline with the good client alone, then the good client
again while the attack runs, and compares. The server's RSS is sampled from
/proc every 100 ms, its CPU from utime+stime. Clients and attackers come from
different loopback addresses (127.0.0.2 for the good client, 127.0.1.x for
attackers), so per-IP limits separate them as they would separate two hosts.
"""

import base64
import errno
import http.client
import json
import math
import os
import random
import re
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MiB = 1024 * 1024
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STOP = threading.Event()


def env_num(name, default, conv=float):
    v = os.environ.get(name, "")
    if v.strip() == "":
        return default
    try:
        return conv(v)
    except ValueError:
        sys.exit(f"{name}={v!r}: not a number")


def env_str(name, default):
    v = os.environ.get(name, "")
    return v if v.strip() else default


def log(*a):
    print(f"[abuse {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


# ---------------------------------------------------------------- tokens

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(key_pem, claims, kid="k1", sign=True):
    """An RS256 JWT; `sign=False` puts a garbage signature (for unknown kids)."""
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    if sign:
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", key_pem],
            input=signing_input, capture_output=True, check=True).stdout
    else:
        sig = os.urandom(256)
    return f"{header}.{payload}.{b64url(sig)}"


def make_keys(work):
    key = os.path.join(work, "jwt-key.pem")
    pub = os.path.join(work, "jwt-pub.pem")
    if not os.path.exists(key):
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", key],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", key, "-pubout", "-out", pub],
                       check=True, capture_output=True)
    mod = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"],
                         check=True, capture_output=True, text=True).stdout
    n = bytes.fromhex(mod.strip().split("=", 1)[1])
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                      "n": b64url(n), "e": b64url((65537).to_bytes(3, "big"))}]}
    return key, open(pub).read(), jwks


# ---------------------------------------------------------------- HTTP bits

def connect(conf, src_ip, timeout=10.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src_ip, 0))
    s.connect((conf["host"], conf["port"]))
    return s


def http_conn(conf, src_ip, timeout):
    return http.client.HTTPConnection(conf["host"], conf["port"], timeout=timeout,
                                      source_address=(src_ip, 0))


def multipart(boundary, filename, content, ctype="application/zip"):
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode()


def zip_bytes(n):
    """Content stowage types as a `project` (ZIP magic), no media job."""
    return b"PK\x03\x04" + os.urandom(max(0, n - 4))


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return r, data


class Client:
    """A keep-alive connection from one source address. A request that fails
    on a reused connection before any answer (the server closed it between
    requests) is retried once on a new one; everything else is raised."""

    def __init__(self, conf, src_ip, timeout):
        self.conf, self.ip, self.timeout = conf, src_ip, timeout
        self.conn = None

    def do(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self.conn = http_conn(self.conf, self.ip, self.timeout)
            try:
                r, data = request(self.conn, method, path, body, headers)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if fresh or attempt:
                    raise
                continue
            except Exception:
                self.close()
                raise
            if r.will_close:
                self.close()
            return r, data

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None


# ---------------------------------------------------------------- good client

def good_main(conf, out):
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    dur = conf["duration"]
    interval = 1.0 / conf["good_rps"]
    blob = zip_bytes(conf["good_size"])
    boundary = "good" + uuid.uuid4().hex
    auth = {"Authorization": f"Bearer {conf['good_token']}"}
    rows, conns = [], 0
    conn = None
    start = time.monotonic()
    deadline = start + dur
    next_t = start
    i = 0
    while not STOP.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        if now < next_t:
            time.sleep(min(next_t - now, deadline - now))
            continue
        next_t = max(next_t + interval, now)
        kind = "upload" if i % 2 == 0 else "list"
        i += 1
        t0 = time.monotonic()
        status, err = None, None
        try:
            if conn is None:
                conn = http_conn(conf, conf["good_ip"], conf["req_timeout"])
                conn.connect()
                conns += 1
            if kind == "upload":
                body = multipart(boundary, f"good-{i}.zip", blob)
                h = dict(auth)
                h["Content-Type"] = f"multipart/form-data; boundary={boundary}"
                r, _ = request(conn, "POST", "/api/files/upload", body, h)
            else:
                r, _ = request(conn, "GET", "/api/files?limit=50", None, auth)
            status = r.status
            if (r.getheader("Connection") or "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 - every failure is a data point
            err = f"{type(e).__name__}: {e}"[:160]
            if conn is not None:
                conn.close()
            conn = None
        rows.append([kind, round(t0 - start, 4),
                     round((time.monotonic() - t0) * 1000, 3), status, err])
    if conn is not None:
        conn.close()
    with open(out, "w") as f:
        json.dump({"rows": rows, "connections": conns}, f)


def summarize_good(rows):
    lat = [r[2] for r in rows]
    errs = [r for r in rows if r[4] is not None or not (200 <= (r[3] or 0) < 300)]
    listing = [r[2] for r in rows if r[0] == "list"]
    reasons = {}
    for r in errs:
        k = r[4].split(":")[0] if r[4] else str(r[3])
        reasons[k] = reasons.get(k, 0) + 1
    return {
        "requests": len(rows),
        "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else None,
        "list_p50_ms": pct(listing, 50), "list_p99_ms": pct(listing, 99),
        "errors": len(errs), "error_kinds": reasons,
    }


# ---------------------------------------------------------------- attacks

def attacker_ip(conf, k=0):
    return f"127.0.1.{1 + (k % 250)}"


def stream_attack(conf, kind):
    """A chunked multipart body that never gets anywhere: a preamble with no
    boundary, or a part whose headers never end. Each connection keeps
    sending until the server answers or closes, then the attacker reconnects."""
    boundary = "XabuseX"
    head = (f"POST /api/files/upload HTTP/1.1\r\nHost: {conf['host']}:{conf['port']}\r\n"
            f"Authorization: Bearer {conf['attacker_token']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    if kind == "part-headers":
        first = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 "filename=\"a.zip\"\r\nX-Pad: ").encode()
    else:
        first = b"preamble "
    payload = b"a" * (64 * 1024)

    def chunk(b):
        return f"{len(b):x}\r\n".encode() + b + b"\r\n"

    rate = conf["stream_rate_mib"] * MiB  # per connection, 0 = as fast as it goes
    attempts = []
    lock = threading.Lock()

    def worker(k):
        ip = attacker_ip(conf, k)
        while not STOP.is_set():
            a = {"t0": time.monotonic(), "bytes": 0, "outcome": "open", "status": None,
                 "secs": None}
            with lock:
                attempts.append(a)
            try:
                s = connect(conf, ip, 5.0)
            except OSError as e:
                a.update(outcome="refused", secs=time.monotonic() - a["t0"], status=str(e)[:60])
                time.sleep(0.05)
                continue
            s.setblocking(False)
            buf = head + chunk(first)
            sent_at_rate_start = time.monotonic()
            while not STOP.is_set():
                r, w, _ = select.select([s], [s] if buf else [], [], 0.2)
                if r:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    a["secs"] = time.monotonic() - a["t0"]
                    if data:
                        a["outcome"] = "answered"
                        a["status"] = data.split(b"\r\n", 1)[0].decode("latin-1")[:60]
                    else:
                        a["outcome"] = "closed"
                    break
                if w and buf:
                    try:
                        n = s.send(buf)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        a.update(outcome="closed", secs=time.monotonic() - a["t0"])
                        break
                    a["bytes"] += n
                    buf = buf[n:]
                if not buf:
                    if rate > 0:
                        ahead = a["bytes"] / rate - (time.monotonic() - sent_at_rate_start)
                        if ahead > 0:
                            time.sleep(min(ahead, 0.2))
                            continue
                    buf = chunk(payload)
            if a["outcome"] == "open":
                a["secs"] = time.monotonic() - a["t0"]
            s.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(conf["stream_conns"])]
    for t in threads:
        t.start()
    STOP.wait(conf["duration"])
    STOP.set()
    for t in threads:
        t.join(5)
    limit = conf["repel_secs"]
    done = [a for a in attempts if a["outcome"] != "open"]
    still = [a for a in attempts if a["outcome"] == "open"]
    late = [a for a in attempts if a["secs"] is not None and a["secs"] > limit]
    statuses = {}
    for a in attempts:
        k = a["status"] if a["outcome"] == "answered" else a["outcome"]
        statuses[k] = statuses.get(k, 0) + 1
    biggest = max([a["bytes"] for a in attempts] or [0])
    # an attempt still open at the end but younger than the limit is undecided
    ok = not late and bool(done)
    if ok:
        text = (f"repelled: {len(done)} attempt(s), each answered or closed within "
                f"{max(a['secs'] for a in done):.1f} s (≤ {limit:g} s), "
                f"at most {biggest / MiB:.2f} MiB sent on one")
    elif late:
        text = (f"not repelled: {len(late)} of {len(attempts)} attempt(s) open longer than "
                f"{limit:g} s; up to {biggest / MiB:.0f} MiB sent on one connection, "
                f"{sum(a['bytes'] for a in attempts) / MiB:.0f} MiB in all")
    else:
        text = (f"undecided: {len(still)} attempt(s) still open after "
                f"{max([a['secs'] or 0 for a in still] or [0]):.1f} s (< {limit:g} s; "
                "make DURATION longer)")
    return {"ok": ok, "outcome": text, "statuses": statuses, "attempts": len(attempts),
            "max_bytes_one_connection": biggest,
            "bytes_sent": sum(a["bytes"] for a in attempts)}


def tags_attack(conf):
    """`PUT /api/files/<random uuid>/tags` with as many distinct tags as the
    JSON body limit lets through, several at once."""
    sizes = [conf["tag_body_bytes"], conf["json_body_bytes"]]
    bodies = {}

    def body(size):
        if size not in bodies:
            n = max(1, (size - 16) // 11)
            bodies[size] = json.dumps({"tags": [f"t{i:07d}" for i in range(n)]},
                                      separators=(",", ":")).encode()
            while len(bodies[size]) > size:
                n = int(n * 0.98)
                bodies[size] = json.dumps({"tags": [f"t{i:07d}" for i in range(n)]},
                                          separators=(",", ":")).encode()
        return bodies[size]

    for s in sizes:
        body(s)
    which = [0]
    reqs = []
    lock = threading.Lock()
    end = time.monotonic() + conf["duration"]

    def worker(k):
        while not STOP.is_set() and time.monotonic() < end:
            size = sizes[which[0]]
            b = body(size)
            left = max(1.0, end - time.monotonic())
            t0 = time.monotonic()
            rec = {"bytes": len(b), "tags": b.count(b",") + 1, "status": None, "secs": None}
            with lock:
                reqs.append(rec)
            conn = http_conn(conf, attacker_ip(conf, k), left)
            try:
                r, _ = request(conn, "PUT", f"/api/files/{uuid.uuid4()}/tags", b, {
                    "Authorization": f"Bearer {conf['attacker_token']}",
                    "Content-Type": "application/json"})
                rec["status"] = r.status
                if r.status == 413:
                    which[0] = max(which[0], min(len(sizes) - 1, sizes.index(size) + 1))
            except (socket.timeout, TimeoutError):
                rec["status"] = "no answer"
            except Exception as e:  # noqa: BLE001
                rec["status"] = type(e).__name__
            conn.close()
            rec["secs"] = time.monotonic() - t0

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(conf["tag_parallel"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(conf["duration"] + 10)
    limit = conf["tag_answer_secs"]
    statuses = {}
    for r in reqs:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    slow = [r for r in reqs if r["secs"] is None or r["secs"] > limit
            or not isinstance(r["status"], int) or not 400 <= r["status"] < 500]
    ok = bool(reqs) and not slow
    answered = [r for r in reqs if isinstance(r["status"], int)]
    mx = max([r["secs"] for r in answered] or [0])
    last = reqs[-1] if reqs else {"tags": 0, "bytes": 0}
    if ok:
        text = (f"repelled: {len(reqs)} request(s) of up to {max(r['tags'] for r in reqs)} "
                f"tags, each answered 4xx within {mx * 1000:.0f} ms (≤ {limit:g} s)")
    else:
        text = (f"not repelled: {len(slow)} of {len(reqs)} request(s) "
                f"({last['tags']} tags, {last['bytes'] / 1024:.0f} KiB) not answered 4xx "
                f"within {limit:g} s")
    return {"ok": ok, "outcome": text, "statuses": statuses, "requests": len(reqs),
            "max_answer_secs": mx, "tags_per_request": [r["tags"] for r in reqs][:50]}


class ConnWatch:
    """Many non-blocking connections in one selector loop: when each was
    opened, got its first byte out, was answered and was closed."""

    def __init__(self, conf):
        self.conf = conf
        self.sel = selectors.DefaultSelector()
        self.conns = []

    def open(self, src_ip, payload, tag):
        c = {"tag": tag, "ip": src_ip, "t_open": time.monotonic(), "t_sent": None,
             "t_answer": None, "t_closed": None, "status": None, "refused": None,
             "payload": payload, "sock": None}
        self.conns.append(c)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((src_ip, 0))
            err = s.connect_ex((self.conf["host"], self.conf["port"]))
        except OSError as e:
            err = e.errno
        if err not in (0, errno.EINPROGRESS):
            c["refused"] = os.strerror(err) if isinstance(err, int) else str(err)
            c["t_closed"] = time.monotonic()
            s.close()
            return c
        c["sock"] = s
        self.sel.register(s, selectors.EVENT_WRITE, c)
        return c

    def _close(self, c, why=None):
        if c["t_closed"] is None:
            c["t_closed"] = time.monotonic()
        if why and c["t_sent"] is None and c["refused"] is None:
            c["refused"] = why
        try:
            self.sel.unregister(c["sock"])
        except (KeyError, ValueError):
            pass
        c["sock"].close()

    def send(self, c, data):
        if c["t_closed"] is not None:
            return
        try:
            c["sock"].send(data)
        except BlockingIOError:
            pass
        except OSError:
            self._close(c)

    def poll(self, timeout):
        for key, ev in self.sel.select(timeout):
            c = key.data
            s = c["sock"]
            if ev & selectors.EVENT_WRITE and c["t_sent"] is None:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._close(c, os.strerror(err))
                    continue
                c["t_sent"] = time.monotonic()
                if c["payload"]:
                    self.send(c, c["payload"])
                if c["t_closed"] is None:
                    self.sel.modify(s, selectors.EVENT_READ, c)
                continue
            if ev & selectors.EVENT_READ:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    if c["t_answer"] is None:
                        c["t_answer"] = time.monotonic()
                        c["status"] = data.split(b"\r\n", 1)[0].decode("latin-1")[:40]
                else:
                    self._close(c, "closed")

    def open_count(self):
        return sum(1 for c in self.conns if c["t_closed"] is None)

    def close_all(self):
        for c in self.conns:
            if c["t_closed"] is None and c["sock"] is not None:
                try:
                    self.sel.unregister(c["sock"])
                except (KeyError, ValueError):
                    pass
                c["sock"].close()


def open_many(w, n, ips, payload, tag, per_sec):
    """Opens n connections round-robin over ips, at most per_sec a second,
    polling meanwhile."""
    t0 = time.monotonic()
    for i in range(n):
        if STOP.is_set():
            break
        w.open(ips[i % len(ips)], payload, tag)
        due = t0 + (i + 1) / per_sec
        while time.monotonic() < due:
            w.poll(max(0.0, due - time.monotonic()))
    # let the connects finish
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        w.poll(0.05)


def slowloris_attack(conf):
    """Many connections, each sending half a header line, then one more byte
    every few seconds, never finishing the headers."""
    n, nips = conf["slow_conns"], conf["slow_ips"]
    ips = [attacker_ip(conf, k) for k in range(nips)]
    payload = f"GET /api/files HTTP/1.1\r\nHost: {conf['host']}\r\nX-Slow: ".encode()
    w = ConnWatch(conf)
    start = time.monotonic()
    open_many(w, n, ips, payload, "slow", conf["open_rate"])
    limit = conf["header_timeout"]
    end = max(start + conf["duration"], time.monotonic() + limit + conf["grace"])
    next_drip = time.monotonic() + conf["slow_drip"]
    while time.monotonic() < end and not STOP.is_set():
        w.poll(0.2)
        if time.monotonic() >= next_drip:
            for c in w.conns:
                if c["t_sent"] is not None and c["t_closed"] is None:
                    w.send(c, b"a")
            next_drip += conf["slow_drip"]
        if w.open_count() == 0 and time.monotonic() >= start + conf["duration"]:
            break
    w.close_all()
    return judge_conns(w.conns, limit, conf["grace"], "first byte", "slowloris")


def idle_attack(conf):
    """Keep-alive connections that made one request and then say nothing,
    and connections that never send a byte."""
    n, nips = conf["idle_conns"], conf["idle_ips"]
    ips = [attacker_ip(conf, 100 + k) for k in range(nips)]
    req = f"GET /healthz HTTP/1.1\r\nHost: {conf['host']}\r\n\r\n".encode()
    w = ConnWatch(conf)
    start = time.monotonic()
    open_many(w, n // 2, ips, req, "idle-after-request", conf["open_rate"])
    open_many(w, n - n // 2, ips, b"", "silent", conf["open_rate"])
    limit = conf["keepalive_timeout"]
    end = max(start + conf["duration"], time.monotonic() + limit + conf["grace"])
    while time.monotonic() < end and not STOP.is_set():
        w.poll(0.2)
        if w.open_count() == 0 and time.monotonic() >= start + conf["duration"]:
            break
    w.close_all()
    return judge_conns(w.conns, limit, conf["grace"], "response (or connect)", "idle")


def judge_conns(conns, limit, grace, since, name):
    now = time.monotonic()
    served_late, closed, refused, times = [], 0, 0, []
    for c in conns:
        if c["refused"] and c["t_sent"] is None:
            refused += 1
            continue
        ref = c["t_answer"] or c["t_sent"] or c["t_open"]
        if c["tag"] == "slow":
            ref = c["t_sent"] or c["t_open"]
        end = c["t_closed"] if c["t_closed"] is not None else now
        secs = end - ref
        if c["t_closed"] is None:
            served_late.append(secs)
        else:
            closed += 1
            times.append(secs)
            if secs > limit + grace:
                served_late.append(secs)
    n = len(conns)
    ok = not served_late and n > 0
    mx = max(times or [0])
    by_tag = {}
    for c in conns:
        t = by_tag.setdefault(c["tag"], {"n": 0, "closed": 0, "refused": 0, "answered": {}})
        t["n"] += 1
        if c["t_closed"] is not None:
            t["closed"] += 1
        if c["refused"] and c["t_sent"] is None:
            t["refused"] += 1
        if c["status"]:
            t["answered"][c["status"]] = t["answered"].get(c["status"], 0) + 1
    if ok:
        text = (f"{closed}/{n} closed by the server {min(times or [0]):.1f}–{mx:.1f} s after the "
                f"{since} (limit {limit:g} s)" + (f", {refused} refused" if refused else ""))
    else:
        still = sum(1 for c in conns if c["t_closed"] is None)
        text = (f"{still}/{n} still open {max(served_late):.0f} s after the {since} "
                f"(limit {limit:g} s); {closed} closed" + (f", {refused} refused" if refused else ""))
    return {"ok": ok, "outcome": text, "connections": n, "closed": closed, "refused": refused,
            "close_secs_min": min(times or [0]), "close_secs_max": mx,
            "still_open": sum(1 for c in conns if c["t_closed"] is None), "by_kind": by_tag}


def flood_attack(conf):
    """Connections from one address past the per-IP cap: each sends a
    complete keep-alive request and holds on; then one more every 100 ms."""
    ip = attacker_ip(conf, 200)
    req = f"GET /healthz HTTP/1.1\r\nHost: {conf['host']}\r\n\r\n".encode()
    w = ConnWatch(conf)
    start = time.monotonic()
    open_many(w, conf["flood_conns"], [ip], req, "burst", conf["open_rate"])
    while time.monotonic() < start + conf["duration"] and not STOP.is_set():
        w.open(ip, req, "later")
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            w.poll(0.02)
    end = time.monotonic() + conf["flood_refuse_secs"]
    while time.monotonic() < end:
        w.poll(0.05)
    now = time.monotonic()
    cap = conf["max_connections_per_ip"]
    # served: answered 200 and still open at the end (held); the rest must be
    # refused (connect failed, closed, or a non-200 answer) quickly
    served = [c for c in w.conns if c["status"] and " 200" in c["status"] and c["t_closed"] is None]
    refused = [c for c in w.conns if c not in served]
    slow_refusals = []
    for c in refused:
        t = c["t_answer"] or c["t_closed"] or now
        if t - c["t_open"] > conf["flood_refuse_secs"]:
            slow_refusals.append(c)
    statuses = {}
    for c in w.conns:
        k = c["status"] or c["refused"] or "no answer"
        if c["status"] and c["t_closed"] is not None:
            k += " then closed"
        statuses[k] = statuses.get(k, 0) + 1
    w.close_all()
    ok = len(served) <= cap and not slow_refusals
    text = (f"{len(served)} of {len(w.conns)} connections from one address served and held "
            f"(cap {cap}); {len(refused) - len(slow_refusals)} refused within "
            f"{conf['flood_refuse_secs']:g} s" + (f", {len(slow_refusals)} left hanging"
                                                    if slow_refusals else ""))
    return {"ok": ok, "outcome": text, "connections": len(w.conns), "served": len(served),
            "statuses": statuses}


def tus_attack(conf):
    """`POST /api/uploads` with `Upload-Length: 1`, as fast as it goes."""
    h = {"Authorization": f"Bearer {conf['attacker_token']}", "Tus-Resumable": "1.0.0",
         "Upload-Length": "1", "Content-Length": "0"}
    statuses = {}
    lock = threading.Lock()
    end = time.monotonic() + conf["duration"]

    def worker(k):
        cl = Client(conf, attacker_ip(conf, 210 + k), 10)
        while not STOP.is_set() and time.monotonic() < end:
            try:
                r, _ = cl.do("POST", "/api/uploads", b"", h)
                st = str(r.status)
            except Exception as e:  # noqa: BLE001
                st = type(e).__name__
            with lock:
                statuses[st] = statuses.get(st, 0) + 1
        cl.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(conf["tus_parallel"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(conf["duration"] + 15)
    created = statuses.get("201", 0)
    cap = conf["max_unfinished_uploads"]
    total = sum(statuses.values())
    other = {k: v for k, v in statuses.items() if k not in ("201", "429")}
    ok = created <= cap and not other
    text = (f"{created} unfinished upload(s) created of {total} attempts (cap {cap}); "
            f"{statuses.get('429', 0)} answered 429" + (f"; other: {other}" if other else ""))
    return {"ok": ok, "outcome": text, "statuses": statuses, "created": created}


def readyz_attack(conf):
    """`GET /readyz` from several keep-alive connections, as fast as it goes."""
    statuses, bodies = {}, {}
    lock = threading.Lock()
    end = time.monotonic() + conf["duration"]

    def worker(k):
        cl = Client(conf, attacker_ip(conf, 220 + k), 10)
        while not STOP.is_set() and time.monotonic() < end:
            try:
                r, data = cl.do("GET", "/readyz")
                st = str(r.status)
                try:
                    shape = json.dumps(sorted(json.loads(data).items()))[:300]
                except ValueError:
                    shape = data[:100].decode("latin-1")
            except Exception as e:  # noqa: BLE001
                st, shape = type(e).__name__, None
            with lock:
                statuses[st] = statuses.get(st, 0) + 1
                if shape is not None and len(bodies) < 5:
                    bodies[shape] = bodies.get(shape, 0) + 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(conf["readyz_parallel"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(conf["duration"] + 15)
    total = sum(statuses.values())
    bad = {k: v for k, v in statuses.items() if k not in ("200", "429")}
    ok = total > 0 and not bad
    text = (f"{total} requests ({total / conf['duration']:.0f}/s): "
            + ", ".join(f"{v}× {k}" for k, v in sorted(statuses.items())))
    return {"ok": ok, "outcome": text, "statuses": statuses, "requests": total,
            "bodies": bodies}


def expect_loop(conf, probes, ip_k):
    """Runs probes (name, method, path, body, headers, expected statuses,
    must_see) round-robin at probe_rps for the duration."""
    results = {p[0]: {} for p in probes}
    end = time.monotonic() + conf["duration"]
    cl = Client(conf, attacker_ip(conf, ip_k), 10)
    i = 0
    interval = 1.0 / conf["probe_rps"]
    while not STOP.is_set() and time.monotonic() < end:
        name, method, path, body, headers, _, _ = probes[i % len(probes)]
        i += 1
        t0 = time.monotonic()
        try:
            r, _ = cl.do(method, path, body, headers)
            st = str(r.status)
        except Exception as e:  # noqa: BLE001
            st = type(e).__name__
        results[name][st] = results[name].get(st, 0) + 1
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    cl.close()
    fails = []
    for name, _, _, _, _, allowed, must in probes:
        got = results[name]
        if not got or any(k not in allowed for k in got) or (must and must not in got):
            fails.append(name)
    return results, fails


def admin_cookie_attack(conf):
    bearer = {"Authorization": f"Bearer {conf['admin_token']}"}
    cookie = {"Cookie": f"__session={conf['admin_token']}"}
    probes = [
        ("admin token in the __session cookie", "GET", "/api/admin/users", None, cookie,
         {"401", "429"}, "401"),
        ("admin token as Bearer (control)", "GET", "/api/admin/users", None, bearer,
         {"200", "429"}, "200"),
    ]
    results, fails = expect_loop(conf, probes, 230)
    ok = not fails
    c = results[probes[0][0]]
    text = ("cookie: " + ", ".join(f"{v}× {k}" for k, v in sorted(c.items()))
            + "; Bearer control: " + ", ".join(f"{v}× {k}" for k, v in
                                              sorted(results[probes[1][0]].items())))
    if fails:
        text = "not refused: " + text
    return {"ok": ok, "outcome": text, "probes": results, "failed": fails}


def hostile_sub_attack(conf):
    up_boundary = "subX" + uuid.uuid4().hex
    body = multipart(up_boundary, "s.zip", zip_bytes(1024))
    probes = []
    for name, tok in conf["hostile_tokens"].items():
        h = {"Authorization": f"Bearer {tok}"}
        hu = dict(h, **{"Content-Type": f"multipart/form-data; boundary={up_boundary}"})
        if name.startswith("valid"):
            probes.append((f"{name}: upload", "POST", "/api/files/upload", body, hu,
                           {"201", "429"}, "201"))
        else:
            probes.append((f"{name}: upload", "POST", "/api/files/upload", body, hu,
                           {"401", "429"}, "401"))
            probes.append((f"{name}: list", "GET", "/api/files", None, h,
                           {"401", "429"}, "401"))
    results, fails = expect_loop(conf, probes, 240)
    longest = 0
    root = conf["storage_root"]
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames + filenames:
            longest = max(longest, len(d.encode()))
    if longest > 200:
        fails.append(f"a directory or file name of {longest} bytes under the storage root")
    res = {"ok": not fails, "probes": results, "failed": fails, "longest_name_bytes": longest}
    res["outcome"] = hostile_text(res)
    return res


def hostile_text(res):
    def st(name):
        return "/".join(f"{v}× {k}" for k, v in sorted(res["probes"].get(name, {}).items()))
    if res["ok"]:
        return ("as expected: invalid subs 401, the 255-byte sub uploads (201); longest name "
                f"under the storage root {res['longest_name_bytes']} bytes")
    return "failed: " + "; ".join(f"{f} ({st(f)})" if f in res["probes"] else f
                                  for f in res["failed"])


def jwks_attack(conf):
    """Tokens with unknown key ids while the JWKS endpoint is down (it hangs,
    then answers 503): the good client's cached key must keep working."""
    statuses = {}
    lock = threading.Lock()
    end = time.monotonic() + conf["duration"]
    claims = {"sub": "attacker", "exp": int(time.time()) + 86400, "iat": int(time.time())}

    def worker(k):
        cl = Client(conf, attacker_ip(conf, 245 + k % 5), 15)
        while not STOP.is_set() and time.monotonic() < end:
            tok = mint(None, claims, kid=uuid.uuid4().hex, sign=False)
            try:
                r, _ = cl.do("GET", "/api/files", None, {"Authorization": f"Bearer {tok}"})
                st = str(r.status)
            except Exception as e:  # noqa: BLE001
                st = type(e).__name__
            with lock:
                statuses[st] = statuses.get(st, 0) + 1
        cl.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(conf["jwks_parallel"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(conf["duration"] + 20)
    total = sum(statuses.values())
    text = (f"{total} unknown-kid requests: "
            + ", ".join(f"{v}× {k}" for k, v in sorted(statuses.items())))
    return {"ok": True, "outcome": text, "statuses": statuses, "requests": total}


ATTACKS = {
    "preamble": ("multipart preamble that never reaches a boundary (chunked)",
                 lambda c: stream_attack(c, "preamble")),
    "part-headers": ("multipart part headers that never end (chunked)",
                     lambda c: stream_attack(c, "part-headers")),
    "tags": ("tag bomb: PUT /api/files/<id>/tags, body-limit-sized, in parallel", tags_attack),
    "slowloris": ("slowloris: connections sending half a header line", slowloris_attack),
    "idle": ("idle keep-alive and silent connections", idle_attack),
    "flood": ("connection flood from one address past the per-IP cap", flood_attack),
    "tus-flood": ("unfinished-upload flood: tus POST with Upload-Length: 1", tus_attack),
    "readyz": ("/readyz hammering", readyz_attack),
    "admin-cookie": ("admin token in the __session cookie", admin_cookie_attack),
    "hostile-sub": ("hostile sub claims (NUL, control chars, empty, 256 bytes; 255 odd bytes)",
                    hostile_sub_attack),
    "jwks": ("unknown kids while the JWKS endpoint is down", jwks_attack),
}


def attack_main(name, conf, out):
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    try:
        res = ATTACKS[name][1](conf)
    except Exception as e:  # noqa: BLE001
        import traceback
        res = {"ok": False, "outcome": f"attack crashed: {type(e).__name__}: {e}",
               "trace": traceback.format_exc()}
    res["stopped_early"] = STOP.is_set()
    with open(out, "w") as f:
        json.dump(res, f, default=str)


# ---------------------------------------------------------------- orchestrator

class Proc:
    """The server's /proc figures."""

    def __init__(self, pid):
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def rss_mib(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def cpu_s(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                s = f.read()
        except OSError:
            return None
        fields = s[s.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / self.tick

    def threads(self):
        try:
            return len(os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            return None

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None


class Sampler(threading.Thread):
    def __init__(self, proc, cap_mib, on_cap):
        super().__init__(daemon=True)
        self.proc, self.cap, self.on_cap = proc, cap_mib, on_cap
        self.peak, self.fd_peak, self.series = 0.0, 0, []
        self.exceeded = False
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        last = 0
        while not self.halt.is_set():
            r = self.proc.rss_mib()
            if r is None:
                break
            self.peak = max(self.peak, r)
            fd = self.proc.fds() or 0
            self.fd_peak = max(self.fd_peak, fd)
            now = time.monotonic()
            if now - last >= 1.0:
                self.series.append([round(now - self.t0, 1), round(r, 1), fd])
                last = now
            if r > self.cap and not self.exceeded:
                self.exceeded = True
                self.on_cap()
            self.halt.wait(0.1)

    def stop(self):
        self.halt.set()
        self.join(2)


class Jwks:
    """A JWKS endpoint on loopback that can be taken down (hangs, then 503)."""

    def __init__(self, jwks, hang):
        self.doc = json.dumps(jwks).encode()
        self.down = False
        self.hang = hang
        self.hits = {"up": 0, "down": 0}
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if outer.down:
                    outer.hits["down"] += 1
                    time.sleep(outer.hang)
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.hits["up"] += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.doc)))
                self.end_headers()
                self.wfile.write(outer.doc)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()


def cpu_busy(secs=3.0):
    """Percent of all cores busy over secs (other builds share the machine)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, idle
    b0, i0 = snap()
    time.sleep(secs)
    b1, i1 = snap()
    tot = (b1 - b0) + (i1 - i0)
    return 100.0 * (b1 - b0) / tot if tot else 0.0


class Quiet:
    """Waits, at most QUIET_MAX seconds over the whole run, for the machine to
    be less than QUIET_BUSY percent busy before a baseline."""

    def __init__(self, budget, busy):
        self.left, self.busy = budget, busy

    def wait(self, what):
        while True:
            b = cpu_busy()
            if b < self.busy:
                return round(b)
            if self.left <= 0:
                log(f"{what}: machine {b:.0f}% busy (other work); measuring anyway")
                return round(b)
            log(f"{what}: machine {b:.0f}% busy (other work), waiting")
            time.sleep(5)
            self.left -= 8


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def server_env(base, extra):
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("STOWAGE_", "CLERK_", "AWS_", "S3_"))
                   or k in ("DATABASE_URL", "PORT", "USER_STORAGE_ROOT"))}
    # STOWAGE_* limits set by the caller go to the server, so a run can try
    # other limits (e.g. STOWAGE_KEEPALIVE_TIMEOUT_SECS=5)
    for k, v in os.environ.items():
        if k.startswith("STOWAGE_") and k not in base:
            env[k] = v
    env.update(base)
    env.update(extra)
    env.setdefault("RUST_LOG", os.environ.get("RUST_LOG", "info"))
    # as deployed: no backtrace capture (symbolizing one on a 500 costs
    # hundreds of MiB), no colours in the log
    if os.environ.get("SERVER_BACKTRACE", "0") != "1":
        env.pop("RUST_BACKTRACE", None)
        env.pop("RUST_LIB_BACKTRACE", None)
    env["NO_COLOR"] = "1"
    return env


OWN_VARS = ("STOWAGE_BIND", "STOWAGE_DATA_DIR", "STOWAGE_DATABASE_URL", "STOWAGE_STORAGE_ROOT",
            "STOWAGE_ADMIN_TOKEN", "STOWAGE_JWT_PUBLIC_KEY", "STOWAGE_JWKS_URL",
            "STOWAGE_DEFAULT_QUOTA", "STOWAGE_MAX_FILE_SIZE", "STOWAGE_BLOB_STORE",
            "STOWAGE_CLAMD", "STOWAGE_JWT_ISSUER", "STOWAGE_AUTHORIZED_PARTIES",
            "STOWAGE_CORS_ORIGINS", "STOWAGE_TRUSTED_PROXIES")


class Server:
    def __init__(self, binary, work, name, auth_env, admin_token):
        self.dir = os.path.join(work, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.port = free_port()
        self.storage_root = os.path.join(self.dir, "users")
        base = {"STOWAGE_BIND": f"127.0.0.1:{self.port}", "STOWAGE_DATA_DIR": self.dir,
                "STOWAGE_DATABASE_URL": f"sqlite://{self.dir}/stowage.db",
                "STOWAGE_STORAGE_ROOT": self.storage_root,
                "STOWAGE_ADMIN_TOKEN": admin_token, "STOWAGE_DEFAULT_QUOTA": "1TiB"}
        empty = {k: "" for k in OWN_VARS if k not in base and k not in auth_env}
        env = server_env(base, auth_env)
        for k in empty:
            env.pop(k, None)
        self.log_path = os.path.join(work, f"{name}.server.log")
        self.logf = open(self.log_path, "w")
        self.p = subprocess.Popen([binary, "serve"], cwd=self.dir, env=env,
                                  stdout=self.logf, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.proc = Proc(self.p.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"stowage exited ({self.p.returncode}); see {self.log_path}:\n"
                                   + open(self.log_path).read()[-2000:])
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"stowage not up after 30 s; see {self.log_path}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()

    def log_counts(self):
        counts = {"WARN": 0, "ERROR": 0}
        try:
            for line in open(self.log_path, errors="replace"):
                line = ANSI.sub("", line)
                for k in counts:
                    if f" {k} " in line or f'"level":"{k}"' in line:
                        counts[k] += 1
        except OSError:
            pass
        return counts


def run_child(args):
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + args,
                         start_new_session=True)
    return p


def stop_child(p, wait):
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def phase(server, conf, work, tag, attack=None, cap_mib=1024):
    """One measured phase: the good client for conf['duration'] seconds,
    with `attack` running alongside when given."""
    cpath = os.path.join(work, f"{tag}.conf.json")
    with open(cpath, "w") as f:
        json.dump(conf, f)
    gout = os.path.join(work, f"{tag}.good.json")
    aout = os.path.join(work, f"{tag}.attack.json")
    for p in (gout, aout):
        if os.path.exists(p):
            os.remove(p)
    atk = None
    holder = {}

    def on_cap():
        log(f"{tag}: server RSS passed {cap_mib} MiB, stopping the attack")
        if holder.get("atk") is not None:
            holder["atk"].send_signal(signal.SIGTERM)

    sampler = Sampler(server.proc, cap_mib, on_cap)
    cpu0 = server.proc.cpu_s()
    t0 = time.monotonic()
    sampler.start()
    if attack:
        atk = run_child(["attack", attack, cpath, aout])
        holder["atk"] = atk
        time.sleep(conf.get("ramp", 0.5))
    good = run_child(["good", cpath, gout])
    stop_child(good, conf["duration"] + conf["req_timeout"] + 15)
    if atk is not None:
        stop_child(atk, conf.get("attack_max_secs", conf["duration"] + 120))
    elapsed = time.monotonic() - t0
    cpu1 = server.proc.cpu_s()
    sampler.stop()
    g = load(gout, {"rows": []})
    res = {
        "secs": round(elapsed, 1),
        "peak_rss_mib": round(sampler.peak, 1),
        "rss_cap_exceeded": sampler.exceeded,
        "peak_fds": sampler.fd_peak,
        "server_cpu_s": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
        "server_alive": server.p.poll() is None,
        "good": summarize_good(g["rows"]),
        "good_connections": g.get("connections"),
        "rss_series": sampler.series,
    }
    if attack:
        res["attack"] = load(aout, {"ok": False, "outcome": "attack process left no result"})
        if sampler.exceeded:
            res["attack"]["ok"] = False
            res["attack"]["outcome"] = (f"stopped when the server's RSS passed {cap_mib:g} MiB; "
                                        + res["attack"].get("outcome", ""))
    return res


def fmt(v, nd=1):
    if v is None:
        return "—"
    return f"{v:.{nd}f}"


def evaluate(r, rss_target, p99_factor):
    b, a = r["baseline"], r["attack_phase"]
    misses = []
    if a["peak_rss_mib"] > rss_target:
        misses.append("RSS")
    bp, ap = b["good"]["p99_ms"], a["good"]["p99_ms"]
    if bp is None or ap is None or ap > p99_factor * bp:
        misses.append("p99")
    if a["good"]["errors"] > 0:
        misses.append("errors")
    if not a.get("attack", {}).get("ok"):
        misses.append("attack")
    if a["rss_cap_exceeded"]:
        misses.append("RSS cap")
    return misses


def table(results, rss_target, p99_factor):
    lines = [
        "| attack | peak RSS, MiB (baseline → attack) | server CPU, s (baseline → attack) "
        "| good p50 / p99, ms (baseline → attack) | good errors | attack outcome | target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | — | — | — | — | run failed: {r['error'][:120]} | no |")
            continue
        b, a = r["baseline"], r["attack_phase"]
        rss = f"{fmt(b['peak_rss_mib'])} → {fmt(a['peak_rss_mib'])}"
        if a["rss_cap_exceeded"]:
            rss += f" (**exceeded {r['rss_cap_mib']} MiB**, attack stopped)"
        cpu = f"{fmt(b['server_cpu_s'], 2)} → {fmt(a['server_cpu_s'], 2)}"
        if a["secs"] > b["secs"] + 2:
            cpu += f" (in {a['secs']:.0f} s)"
        lat = (f"{fmt(b['good']['p50_ms'])} / {fmt(b['good']['p99_ms'])} → "
               f"{fmt(a['good']['p50_ms'])} / {fmt(a['good']['p99_ms'])}")
        errs = f"{a['good']['errors']} of {a['good']['requests']}"
        if a["good"]["error_kinds"]:
            errs += " (" + ", ".join(f"{v}× {k}" for k, v in a["good"]["error_kinds"].items()) + ")"
        outcome = a.get("attack", {}).get("outcome", "—").replace("|", "\\|")
        if not a["server_alive"]:
            outcome += "; **server died**"
        misses = r["misses"]
        met = "**yes**" if not misses else "no (" + ", ".join(misses) + ")"
        lines.append(f"| {r['name']} | {rss} | {cpu} | {lat} | {errs} | {outcome} | {met} |")
    return "\n".join(lines)


def render(meta, results):
    t = meta["targets"]
    for r in results:
        a = r.get("attack_phase", {}).get("attack")
        if r["name"] == "hostile-sub" and a and "probes" in a:
            a["outcome"] = hostile_text(a)
    head = (f"Abuse benchmark, {meta['date']}, {meta['version']} ({meta['commit']}), "
            f"{meta['host']}, {meta['cores']} cores; {meta['duration']:g} s per phase; good "
            f"client: {meta.get('good_rps', 20):g} req/s, 1 MiB multipart uploads and listings "
            f"alternating, one at a time over keep-alive. Targets: peak RSS ≤ "
            f"{t['peak_rss_mib']:g} MiB, good p99 ≤ {t['p99_factor']:g}× baseline, 0 good "
            "errors, attack refused/closed within its limit.\n")
    return head, table(results, t["peak_rss_mib"], t["p99_factor"])


def orchestrate():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    binary = env_str("BIN", os.path.join(os.environ.get("CARGO_TARGET_DIR",
                                                        os.path.join(root, "target")),
                                         "release", "stowage"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"no stowage binary at {binary} (run bench/abuse/run.sh, or set BIN)")
    work = env_str("WORK", f"/var/tmp/stowage-abuse-{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    results_dir = env_str("RESULTS_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results"))
    os.makedirs(results_dir, exist_ok=True)
    names = [n.strip() for n in env_str("ATTACKS", ",".join(ATTACKS)).split(",") if n.strip()]
    for n in names:
        if n not in ATTACKS:
            sys.exit(f"unknown attack {n!r}; known: {', '.join(ATTACKS)}")
    dur = env_num("DURATION", 10.0)
    rss_target = env_num("RSS_TARGET_MIB", 64.0)
    p99_factor = env_num("P99_FACTOR", 3.0)
    cap_mib = env_num("RSS_CAP_MIB", 1024.0)
    limits = {
        "header_timeout": env_num("STOWAGE_HEADER_TIMEOUT_SECS", 10.0),
        "keepalive_timeout": env_num("STOWAGE_KEEPALIVE_TIMEOUT_SECS", 60.0),
        "max_connections_per_ip": env_num("STOWAGE_MAX_CONNECTIONS_PER_IP", 64, int),
        "max_unfinished_uploads": env_num("STOWAGE_MAX_UNFINISHED_UPLOADS", 64, int),
        "json_body_bytes": env_num("STOWAGE_JSON_BODY_BYTES", 64 * 1024, int),
        "jwks_refresh": env_num("STOWAGE_JWKS_REFRESH_SECS", 30.0),
    }
    key, pub_pem, jwks_doc = make_keys(work)
    now = int(time.time())

    def tok(sub, kid="k1"):
        return mint(key, {"sub": sub, "iat": now, "exp": now + 86400}, kid=kid)

    admin_token = f"abuse-admin-{uuid.uuid4().hex}"
    conf_base = {
        "host": "127.0.0.1", "duration": dur, "good_ip": "127.0.0.2",
        "good_rps": env_num("GOOD_RPS", 20.0), "good_size": env_num("GOOD_SIZE", MiB, int),
        "req_timeout": env_num("REQ_TIMEOUT", 10.0),
        "good_token": tok("good-user"), "attacker_token": tok("attacker"),
        "admin_token": admin_token,
        "grace": env_num("GRACE", 5.0), "open_rate": env_num("OPEN_RATE", 500.0),
        "stream_conns": env_num("STREAM_CONNS", 2, int),
        "stream_rate_mib": env_num("STREAM_RATE_MIB", 0.0),
        "repel_secs": env_num("REPEL_SECS", 5.0),
        "tag_body_bytes": env_num("TAG_BODY_BYTES", 2 * MiB - 64, int),
        "tag_parallel": env_num("TAG_PARALLEL", 4, int),
        "tag_answer_secs": env_num("TAG_ANSWER_SECS", 1.0),
        "slow_conns": env_num("SLOW_CONNS", 1100, int),
        "slow_ips": env_num("SLOW_IPS", 20, int), "slow_drip": env_num("SLOW_DRIP", 2.0),
        "idle_conns": env_num("IDLE_CONNS", 200, int), "idle_ips": env_num("IDLE_IPS", 4, int),
        "flood_conns": env_num("FLOOD_CONNS", 256, int),
        "flood_refuse_secs": env_num("FLOOD_REFUSE_SECS", 2.0),
        "tus_parallel": env_num("TUS_PARALLEL", 2, int),
        "readyz_parallel": env_num("READYZ_PARALLEL", 8, int),
        "probe_rps": env_num("PROBE_RPS", 20.0),
        "jwks_parallel": env_num("JWKS_PARALLEL", 8, int),
        **limits,
    }
    long_sub = "!" * 255
    hostile = {
        "NUL in sub": tok("user\u0000nul"), "U+001F in sub": tok("user\u001fx"),
        "U+007F in sub": tok("user\u007fx"), "empty sub": tok(""), "256-byte sub": tok("a" * 256),
        "valid 255-byte sub of '!'": tok(long_sub),
    }
    jwks_hang = env_num("JWKS_HANG", 2.0)
    quiet = Quiet(env_num("QUIET_MAX", 300.0), env_num("QUIET_BUSY", 30.0))

    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": " ".join(os.uname()[i] for i in (0, 2, 4)), "cores": os.cpu_count(),
        "binary": binary, "duration": dur, "limits": limits,
        "targets": {"peak_rss_mib": rss_target, "p99_factor": p99_factor, "good_errors": 0},
        "rss_cap_mib": cap_mib, "good_rps": conf_base["good_rps"],
    }
    src = ["src", "crates", "migrations", "Cargo.toml", "Cargo.lock", "build.rs"]
    try:
        git = ["git", "-C", root]
        meta["commit"] = subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--"] + src,
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            meta["commit"] += " + uncommitted source changes"
    except OSError:
        meta["commit"] = "?"
    meta["version"] = subprocess.run([binary, "--version"], capture_output=True,
                                     text=True).stdout.strip()
    log(f"{meta['version']} ({meta['commit']}), attacks: {', '.join(names)}, "
        f"{dur:g} s each; work dir {work}")

    results = []
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    out_json = os.path.join(results_dir, f"abuse-{stamp}.json")
    out_md = os.path.join(results_dir, f"abuse-{stamp}.md")
    servers = []

    def cleanup(*_):
        for s in servers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                pass
        if _:
            sys.exit(130)

    signal.signal(signal.SIGINT, cleanup)
    signal.signal(signal.SIGTERM, cleanup)
    try:
        for name in names:
            log(f"{name}: {ATTACKS[name][0]}")
            r = {"name": name, "what": ATTACKS[name][0], "rss_cap_mib": cap_mib}
            jwks = None
            try:
                if name == "jwks":
                    jwks = Jwks(jwks_doc, jwks_hang)
                    auth = {"STOWAGE_JWKS_URL": jwks.url}
                else:
                    auth = {"STOWAGE_JWT_PUBLIC_KEY": pub_pem}
                srv = Server(binary, work, name, auth, admin_token)
                servers.append(srv)
                conf = dict(conf_base, port=srv.port, storage_root=srv.storage_root,
                            hostile_tokens=hostile)
                r["machine_busy_pct_before"] = quiet.wait(name)
                # warm up: provision the good user (and fetch the JWKS)
                c = http_conn(conf, conf["good_ip"], 10)
                warm_at = time.monotonic()
                rr, _ = request(c, "GET", "/api/storage/usage", None,
                                {"Authorization": f"Bearer {conf['good_token']}"})
                c.close()
                if rr.status != 200:
                    raise RuntimeError(f"warm-up request answered {rr.status}")
                r["baseline"] = phase(srv, conf, work, f"{name}-baseline")
                log(f"{name}: baseline p50/p99 {fmt(r['baseline']['good']['p50_ms'])}/"
                    f"{fmt(r['baseline']['good']['p99_ms'])} ms, peak RSS "
                    f"{r['baseline']['peak_rss_mib']} MiB")
                if name == "jwks":
                    # an unknown kid may refetch once per refresh interval;
                    # start the outage after the one allowed since warm-up
                    wait = warm_at + limits["jwks_refresh"] + 1 - time.monotonic()
                    if wait > 0:
                        log(f"jwks: waiting {wait:.0f} s (refresh interval since the warm-up fetch)")
                        time.sleep(wait)
                    jwks.down = True
                aconf = dict(conf)
                if name in ("slowloris",):
                    aconf["attack_max_secs"] = dur + limits["header_timeout"] + 60
                if name == "idle":
                    aconf["attack_max_secs"] = dur + limits["keepalive_timeout"] + 60
                aconf["ramp"] = 2.0 if name in ("slowloris", "idle", "flood") else 0.5
                t_down = time.monotonic()
                r["attack_phase"] = phase(srv, aconf, work, f"{name}-attack", attack=name,
                                          cap_mib=cap_mib)
                if jwks is not None:
                    secs = time.monotonic() - t_down
                    fetches = jwks.hits["down"]
                    allowed = 1 + int(secs // limits["jwks_refresh"])
                    a = r["attack_phase"]["attack"]
                    a["jwks_fetches_during_outage"] = fetches
                    a["ok"] = fetches <= allowed and a.get("requests", 0) > 0
                    lp = r["attack_phase"]["good"]["list_p99_ms"]
                    a["outcome"] = (f"{fetches} JWKS fetch(es) in {secs:.0f} s of outage "
                                    f"(allowed {allowed}); " + a["outcome"]
                                    + f"; good client's listing p99 {fmt(lp)} ms")
                r["server_log"] = srv.log_counts()
                srv.stop()
                servers.remove(srv)
            except Exception as e:  # noqa: BLE001
                log(f"{name}: failed: {e}")
                r["error"] = str(e)
                for s in list(servers):
                    s.stop()
                    servers.remove(s)
            finally:
                if jwks is not None:
                    jwks.srv.shutdown()
            if "error" not in r:
                r["misses"] = evaluate(r, rss_target, p99_factor)
                a = r["attack_phase"]
                log(f"{name}: peak RSS {a['peak_rss_mib']} MiB, CPU {a['server_cpu_s']} s, good "
                    f"p50/p99 {fmt(a['good']['p50_ms'])}/{fmt(a['good']['p99_ms'])} ms, "
                    f"{a['good']['errors']} errors; {a.get('attack', {}).get('outcome')}; "
                    f"{'met' if not r['misses'] else 'missed: ' + ', '.join(r['misses'])}")
            results.append(r)
            if env_str("KEEP", "0") != "1":
                shutil.rmtree(os.path.join(work, name), ignore_errors=True)
            with open(out_json, "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
    finally:
        cleanup()
    head, md = render(meta, results)
    with open(out_md, "w") as f:
        f.write(head + "\n" + md + "\n")
    print(head)
    print(md)
    print(f"\nraw results: {out_json}\ntable: {out_md}")
    if env_str("KEEP", "0") != "1":
        shutil.rmtree(work, ignore_errors=True)
    missed = [r["name"] for r in results if "error" in r or r.get("misses")]
    if missed:
        log(f"targets missed: {', '.join(missed)}")
    if env_str("STRICT", "0") == "1" and missed:
        return 1
    return 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "run":
        sys.exit(orchestrate())
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        d = load(sys.argv[2], None)
        head, md = render(d["meta"], d["results"])
        print(head + "\n" + md)
        return
    if len(sys.argv) == 4 and sys.argv[1] == "good":
        good_main(load(sys.argv[2], None), sys.argv[3])
        return
    if len(sys.argv) == 5 and sys.argv[1] == "attack":
        attack_main(sys.argv[2], load(sys.argv[3], None), sys.argv[4])
        return
    print(__doc__)
    sys.exit(2)


if __name__ == "__main__":
    main()
