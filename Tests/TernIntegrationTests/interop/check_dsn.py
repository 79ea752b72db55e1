#!/usr/bin/env python3
"""Parses a DSN with Python's email package (RFC 3464 structure) and prints
what it found as JSON, for the Swift test to check.

usage: check_dsn.py FILE
"""
import email
import email.policy
import json
import sys

with open(sys.argv[1], "rb") as f:
    msg = email.message_from_binary_file(f, policy=email.policy.default)

out = {
    "content_type": msg.get_content_type(),
    "report_type": msg.get_param("report-type"),
    "from": str(msg["From"]),
    "to": str(msg["To"]),
    "subject": str(msg["Subject"]),
    "auto_submitted": str(msg["Auto-Submitted"]),
    "parts": [p.get_content_type() for p in msg.iter_parts()],
    "defects": [type(d).__name__ for d in msg.defects],
}
parts = list(msg.iter_parts())
status = parts[1]
# message/delivery-status: a list of header blocks, per-message first.
blocks = status.get_payload()
out["per_message"] = {k: str(v) for k, v in blocks[0].items()}
out["per_recipient"] = [{k: str(v) for k, v in b.items()} for b in blocks[1:]]
out["human"] = parts[0].get_content()
third = parts[2]
if third.get_content_type() == "message/rfc822":
    inner = third.get_payload()[0]
    out["returned_subject"] = str(inner["Subject"])
    out["returned_body"] = inner.get_payload()
else:
    out["returned_headers"] = third.get_content()
print(json.dumps(out))
