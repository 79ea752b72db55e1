#!/usr/bin/env python3
"""Interop client: drives a Tern listener with Python's smtplib (code nobody
on the Tern team wrote) and prints one JSON object with what each scenario
got back. The Swift test that runs it checks the replies and the rows.

usage: smtplib_client.py PORT   (server: max size 100000, max recipients 100)
"""
import json
import smtplib
import sys

port = int(sys.argv[1])
out = {}


def msg(mid, extra=""):
    return (f"From: a@x.test\r\nTo: b@local.test\r\nSubject: {mid}\r\nMessage-ID: <{mid}@py.test>\r\n\r\n"
            f"hello from smtplib\r\n.a line that starts with a dot\r\n{extra}").encode()


def connect():
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=20)
    s.ehlo()
    return s


s = connect()
out["esmtp_features"] = sorted(s.esmtp_features.keys())
out["size_advertised"] = s.esmtp_features.get("size")

# Basic transaction through the low-level API, to see the DATA reply.
s.mail("a@x.test")
s.rcpt("b@local.test")
code, text = s.data(msg("basic"))
out["basic"] = [code, text.decode()]

# Pipelined transactions: two whole transactions written before reading (RFC 2920).
s.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<p1@local.test>\r\nRCPT TO:<p2@local.test>\r\nDATA\r\n")
out["pipelined_group"] = [s.getreply()[0] for _ in range(4)]
s.send(msg("pipe1").decode().replace("\r\n.a", "\r\n..a") + "\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<p3@local.test>\r\nDATA\r\n")
out["pipelined_next"] = [s.getreply()[0] for _ in range(4)]
s.send(msg("pipe2").decode().replace("\r\n.a", "\r\n..a") + "\r\n.\r\n")
out["pipelined_end"] = s.getreply()[0]

# RSET drops the transaction.
s.mail("a@x.test")
s.rcpt("r@local.test")
out["rset"] = s.rset()[0]
out["rcpt_after_rset"] = s.rcpt("r@local.test")[0]

# SIZE: smtplib declares SIZE= because the server advertised it.
try:
    s.sendmail("a@x.test", ["b@local.test"], msg("toobig", "x" * 200_000))
    out["size_declared"] = "accepted"
except smtplib.SMTPSenderRefused as e:
    out["size_declared"] = [e.smtp_code, e.smtp_error.decode()]
s.rset()
# The same without SIZE=: refused at the end of data.
s.docmd("MAIL FROM:<a@x.test>")
s.docmd("RCPT TO:<b@local.test>")
code, text = s.data(msg("toobig2", "y" * 200_000))
out["size_undeclared"] = [code, text.decode()]

# DSN parameters (RFC 3461).
refused = s.sendmail("a@x.test", ["dsn@local.test"], msg("dsn"),
                     mail_options=["RET=HDRS", "ENVID=py+2Benv"],
                     rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig+40x.test"])
out["dsn"] = refused
try:
    s.sendmail("a@x.test", ["dsn@local.test"], msg("dsnbad"), rcpt_options=["NOTIFY=SOMETIMES"])
    out["dsn_bad"] = "accepted"
except smtplib.SMTPRecipientsRefused as e:
    out["dsn_bad"] = [v[0] for v in e.recipients.values()]

# SMTPUTF8 address (RFC 6531); without the parameter it is refused. smtplib
# itself will not encode it without SMTPUTF8, so send the bytes by hand.
s.mail("a@x.test")
s.send("RCPT TO:<jörg@bücher.test>\r\n".encode("utf-8"))
out["utf8_without"] = [s.getreply()[0]]
s.rset()
refused = s.sendmail("jörg@x.test", ["用户@例子.test", "jörg@bücher.test"], msg("utf8"), mail_options=["SMTPUTF8"])
out["utf8"] = refused

# Many recipients: 150 against a limit of 100 (RFC 5321 §4.5.3.1.10: 452 for the rest).
rcpts = [f"m{i}@local.test" for i in range(150)]
refused = s.sendmail("a@x.test", rcpts, msg("many"))
out["many_refused"] = len(refused)
out["many_refused_codes"] = sorted({v[0] for v in refused.values()})

out["quit"] = s.quit()[0]
print(json.dumps(out))
