#!/usr/bin/env python3
"""Drives Tern's HTTP API with Python's urllib (a client nobody at Tern wrote).

    api_client.py BASE_URL TOKEN METHOD PATH [JSON_BODY|@FILE] [--content-type TYPE]

Prints one JSON line: {"status": 200, "headers": {...}, "body": <parsed JSON or text>}.
"""
import json
import sys
import urllib.error
import urllib.request


def main():
    base, token, method, path = sys.argv[1:5]
    body = None
    content_type = "application/json"
    rest = sys.argv[5:]
    if "--content-type" in rest:
        i = rest.index("--content-type")
        content_type = rest[i + 1]
        del rest[i:i + 2]
    if rest:
        body = open(rest[0][1:], "rb").read() if rest[0].startswith("@") else rest[0].encode()
    request = urllib.request.Request(base + path, data=body, method=method)
    if token != "-":
        request.add_header("Authorization", "Bearer " + token)
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, headers, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
    text = raw.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    print(json.dumps({"status": status, "headers": {k.lower(): v for k, v in headers.items()}, "body": parsed}))


if __name__ == "__main__":
    main()
