#!/usr/bin/env python3
"""Where the time of one upload goes: samples, every 50 ms while curl uploads
a file, the server's CPU time (utime+stime from /proc/PID/stat), the bytes it
has written (/proc/PID/io write_bytes is counted at writeback; wchar at
write()), and the machine's Dirty + Writeback page cache (/proc/meminfo).
A server that receives the whole body into the page cache and then fsyncs
shows wchar reaching the file size well before the answer, followed by a
phase of little CPU in which Dirty drains.

usage: upload_timeline.py --pid PID --url URL --token T --file PATH [--field file]
"""
import argparse
import os
import subprocess
import threading
import time


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("Dirty", "Writeback"):
                out[k] = int(v.split()[0]) / 1024
    return out


def proc(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    io = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, v = line.split(":")
            io[k] = int(v)
    return cpu, io["wchar"] / 2**20, io["write_bytes"] / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--field", default="file")
    a = ap.parse_args()
    samples, stop = [], threading.Event()
    t0 = time.monotonic()
    cpu0, w0, b0 = proc(a.pid)

    def poll():
        while not stop.is_set():
            cpu, wchar, wb = proc(a.pid)
            m = meminfo()
            samples.append((time.monotonic() - t0, cpu - cpu0, wchar - w0, wb - b0, m["Dirty"], m["Writeback"]))
            stop.wait(0.05)

    th = threading.Thread(target=poll, daemon=True)
    subprocess.run(["sync"])
    th.start()
    p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                        "-H", f"Authorization: Bearer {a.token}", "-H", "Expect:",
                        "-F", f"{a.field}=@{a.file};type=application/octet-stream", a.url],
                       capture_output=True, text=True)
    t_end = time.monotonic() - t0
    time.sleep(0.1)
    stop.set()
    th.join()
    print(f"curl: {p.stdout} (answer at {t_end:.2f} s)")
    print("   t_s  srv_cpu_s  wchar_MiB  disk_MiB  dirty_MiB  writeback_MiB")
    last = -1
    for s in samples:
        if s[0] - last >= 0.25 or s is samples[-1]:
            print(f"{s[0]:6.2f} {s[1]:10.2f} {s[2]:10.0f} {s[3]:9.0f} {s[4]:10.0f} {s[5]:14.0f}")
            last = s[0]


if __name__ == "__main__":
    main()
