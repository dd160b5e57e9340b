import socket, sys, time
from urllib.parse import urlsplit
url = sys.argv[1]; hdr = sys.argv[2] if len(sys.argv) > 2 else None
u = urlsplit(url)
path = (u.path or "/") + (f"?{u.query}" if u.query else "")
hdrs = f"{hdr}\r\n" if hdr else ""
req = (f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\n{hdrs}Connection: close\r\n\r\n").encode()
buf = bytearray(1 << 20)
t0 = time.monotonic()
with socket.create_connection((u.hostname, u.port or 80)) as s:
    s.sendall(req)
    head = b""
    while b"\r\n\r\n" not in head:
        k = s.recv_into(buf); head += bytes(buf[:k])
    head, body = head.split(b"\r\n\r\n", 1)
    n = len(body)
    while True:
        k = s.recv_into(buf)
        if not k: break
        n += k
t = time.monotonic() - t0
print(n, t)
