#!/usr/bin/env python3
"""Submission interop: Python's smtplib and ssl (code nobody on the Tern team
wrote) against Tern's submission (587, STARTTLS) and submissions (465,
implicit TLS) listeners. Prints one JSON object.

usage: submission_client.py SUBMISSION_PORT SUBMISSIONS_PORT CAFILE USER PASSWORD
"""
import base64
import json
import smtplib
import ssl
import sys

import smtpraw

sub_port, subs_port, cafile, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False  # the certificate names mx.sub.test; we connect by address
out = {}


def b64(s):
    return base64.b64encode(s.encode()).decode()


# 587: nothing before TLS.
s = smtplib.SMTP("127.0.0.1", sub_port, local_hostname="py.test", timeout=20)
s.ehlo()
out["auth_offered_before_tls"] = s.has_extn("auth")
out["auth_before_tls"] = s.docmd("AUTH", "PLAIN " + b64("\0%s\0%s" % (user, password)))[0]
out["mail_before_auth"] = s.docmd("MAIL", "FROM:<%s>" % user)[0]
out["starttls"] = s.starttls(context=ctx)[0]
s.ehlo()
out["auth_mechanisms"] = s.esmtp_features.get("auth", "").strip()
try:
    s.login(user, "not the password")
    out["bad_login"] = 235
except smtplib.SMTPAuthenticationError as e:
    out["bad_login"] = e.smtp_code
out["malformed"] = s.docmd("AUTH", "PLAIN !!!!")[0]
out["cancel_step"] = s.docmd("AUTH", "LOGIN")[0]
out["cancel"] = s.docmd("*")[0]
# LOGIN, with the user name as initial response (smtplib's way).
s.user, s.password = user, password
out["login"] = s.auth("LOGIN", s.auth_login)[0]
try:
    s.sendmail("someone.else@example.test", ["rcpt@far.test"], b"Subject: spoof\r\n\r\nx\r\n")
    out["foreign_sender"] = 250
except smtplib.SMTPSenderRefused as e:
    out["foreign_sender"] = e.smtp_code
s.rset()
refused = s.sendmail(user, ["rcpt@far.test"], b"Subject: submitted\r\nMessage-ID: <sub587@py.test>\r\n\r\nover 587\r\n")
out["sent_587"] = len(refused) == 0
s.quit()

# 465: TLS from the first byte; PLAIN through smtplib.login.
t = smtplib.SMTP_SSL("127.0.0.1", subs_port, local_hostname="py.test", context=ctx, timeout=20)
t.ehlo()
out["tls_version_465"] = t.sock.version()
out["starttls_offered_465"] = t.has_extn("starttls")
out["login_465"] = t.login(user, password)[0]
refused = t.sendmail(user, ["rcpt@far.test"], b"Subject: submitted\r\n\r\nover 465, no Message-ID or Date\r\n")
out["sent_465"] = len(refused) == 0
t.quit()

# Injection on 587: AUTH sent in the clear with STARTTLS must not count.
smuggled = ("AUTH PLAIN %s\r\n" % b64("\0%s\0%s" % (user, password))).encode()
out["injection_starttls"], tls, tf = smtpraw.starttls_with_smuggled(sub_port, ctx, "mx.sub.test", smuggled)
tls.sendall(b"EHLO inject.test\r\n")
out["injection_ehlo"] = smtpraw.reply(tf)[0]
tls.sendall(("MAIL FROM:<%s>\r\n" % user).encode())
out["injection_mail"] = smtpraw.reply(tf)[-1]   # 530: the smuggled AUTH never ran
tls.sendall(b"QUIT\r\n")
smtpraw.reply(tf)
print(json.dumps(out))
