#!/usr/bin/env python3
"""Uploads one file to a tus server with tuspy; prints one JSON line:
   {"ok":bool,"url":..,"file_id":..,"bytes":..,"resumed_offsets":[..],
    "errors":[..],"error":..}

   upload.py --endpoint URL [--url UPLOAD_URL] [--header 'K: V']...
             [--chunk-size BYTES] [--metadata key=value]... [--checksum]
             [--stop-after BYTES] [--attempts N] FILE

--url resumes an upload created earlier. --checksum sends Upload-Checksum
(sha1) with every PATCH. --stop-after stops once that offset is reached (a
pause; the script prints the URL so a second run can resume). When a request
fails (connection cut, server restarting), the script waits and resumes from
the server's offset, up to --attempts times; "errors" lists every failure
met on the way (with its HTTP status, when there was one).
"""
import argparse
import json
import os
import sys
import time

from tusclient import client as tus_client
from tusclient.uploader import Uploader


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--url")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--chunk-size", type=int, default=8 << 20)
    p.add_argument("--metadata", action="append", default=[])
    p.add_argument("--checksum", action="store_true")
    p.add_argument("--stop-after", type=int, default=0)
    p.add_argument("--attempts", type=int, default=20)
    p.add_argument("file")
    a = p.parse_args()

    headers = {}
    for h in a.header:
        k, v = h.split(":", 1)
        headers[k.strip()] = v.strip()
    metadata = dict(m.split("=", 1) for m in a.metadata)
    size = os.path.getsize(a.file)
    out = {"ok": False, "url": a.url, "file_id": None, "bytes": size,
           "resumed_offsets": [], "errors": [], "error": None}
    client = tus_client.TusClient(a.endpoint, headers=headers)
    url = a.url
    for attempt in range(a.attempts):
        try:
            up = Uploader(file_path=a.file, client=client, url=url,
                          chunk_size=a.chunk_size, metadata=metadata,
                          upload_checksum=a.checksum)
            if url is not None:
                out["resumed_offsets"].append(up.offset)
            if up.url is None:
                up.set_url(up.create_url())
                up.offset = 0
            url = out["url"] = up.url
            stop = a.stop_after or size
            while up.offset < min(stop, size):
                up.upload_chunk()
                fid = getattr(up, "request", None) and up.request.response_headers.get("stowage-file-id")
                if fid:
                    out["file_id"] = fid
            out["ok"] = up.offset >= size
            break
        except Exception as e:  # noqa: BLE001 - any failure: resume after a pause
            out["error"] = f"{type(e).__name__}: {e}"
            out["errors"].append({"error": out["error"],
                                  "status": getattr(e, "status_code", None)})
            time.sleep(min(0.2 * (attempt + 1), 1.5))
    else:
        print(json.dumps(out))
        return 1
    if out["ok"] or a.stop_after:
        out["error"] = None
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
