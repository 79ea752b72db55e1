#!/usr/bin/python3
"""Interop receiving MTA: aiosmtpd (code nobody on the Tern team wrote).

usage: aiosmtpd_sink.py OUTDIR
Listens on 127.0.0.1 (a free port), prints "PORT <n>" when ready, and writes
each message it accepts to OUTDIR/<n>.json (envelope, options, content).
RCPT local parts starting with "perm" get 550 5.1.1, "temp" 451 4.2.1.
Runs until killed.
"""
import json
import os
import socket
import sys
import time

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, outdir):
        self.outdir = outdir
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local.startswith("perm"):
            return "550 5.1.1 No such user (aiosmtpd)"
        if local.startswith("temp"):
            return "451 4.2.1 Try again later (aiosmtpd)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        record = {
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "rcpt_options": envelope.rcpt_options,
            "content": envelope.original_content.decode("utf-8", "replace"),
            "peer": session.peer[0] if session.peer else "",
            "helo": session.host_name or "",
        }
        tmp = os.path.join(self.outdir, f".{self.count}.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.outdir, f"{self.count}.json"))
        return "250 2.0.0 Message accepted for delivery"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


outdir = sys.argv[1]
port = free_port()
# enable_SMTPUTF8 advertises SMTPUTF8; decode_data=False keeps bytes (8BITMIME).
controller = Controller(Handler(outdir), hostname="127.0.0.1", port=port, enable_SMTPUTF8=True, decode_data=False)
controller.start()
print(f"PORT {port}", flush=True)
while True:
    time.sleep(3600)
