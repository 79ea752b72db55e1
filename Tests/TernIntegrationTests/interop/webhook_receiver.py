#!/usr/bin/env python3
"""A webhook endpoint for Tern's tests (Python's http.server).

    webhook_receiver.py PORT SECRET OUT_FILE [ok|hang]

ok: checks each POST's X-Tern-Signature (t=SECONDS,v1=HMAC-SHA256(secret, "SECONDS." + body)),
appends every event to OUT_FILE as one JSON line with "signature_ok", and answers 204
(a bad signature gets 401 and is recorded with signature_ok false).
hang: accepts connections and never answers. Prints "listening PORT" once bound (PORT 0: any).
"""
import hashlib
import hmac
import http.server
import json
import socket
import sys
import threading
import time

port, secret, out = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
mode = sys.argv[4] if len(sys.argv) > 4 else "ok"
lock = threading.Lock()


def verify(header, body):
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        expected = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300
    except Exception:
        return False


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = verify(self.headers.get("X-Tern-Signature", ""), body)
        with lock, open(out, "a") as f:
            for e in json.loads(body)["events"]:
                e["signature_ok"] = ok
                f.write(json.dumps(e) + "\n")
        self.send_response(204 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if mode == "hang":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    print("listening", s.getsockname()[1], flush=True)
    held = []
    while True:
        c, _ = s.accept()
        held.append(c)  # never answered, never closed
else:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("listening", server.server_address[1], flush=True)
    server.serve_forever()
