#!/usr/bin/env python3
"""STARTTLS interop: Python's smtplib and ssl (code nobody on the Tern team
wrote) against a Tern listener. Prints one JSON object.

usage: starttls_client.py PORT CAFILE
"""
import json
import smtplib
import ssl
import sys

import smtpraw

port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False  # the certificate names mx.tls.test; we connect by address
out = {}

s = smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=20)
s.ehlo()
out["offered"] = s.has_extn("starttls")
out["starttls"] = s.starttls(context=ctx)[0]
out["tls_version"] = s.sock.version()
s.ehlo()
out["offered_after"] = s.has_extn("starttls")
s.mail("a@x.test")
s.rcpt("b@local.test")
code, text = s.data(b"Subject: over TLS\r\nMessage-ID: <tls@py.test>\r\n\r\nsecret\r\n")
out["data"] = [code, text.decode()]
s.quit()

# Injection (CVE-2011-0411 class): a command sent in the clear in the same
# packet as STARTTLS must not be executed after the handshake.
out["injection_starttls"], tls, tf = smtpraw.starttls_with_smuggled(port, ctx, "mx.tls.test", b"RSET\r\nMAIL FROM:<evil@x.test>\r\n")
tls.sendall(b"MAIL FROM:<a@x.test>\r\n")
out["injection_first_reply"] = smtpraw.reply(tf)[-1]   # 503: no EHLO yet, and no stale reply to RSET/MAIL
tls.sendall(b"EHLO inject.test\r\n")
out["injection_ehlo"] = smtpraw.reply(tf)[0]
tls.sendall(b"QUIT\r\n")
out["injection_quit"] = smtpraw.reply(tf)[-1]
print(json.dumps(out))
