"""Verifies DKIM signatures with python3-dkim (dkimpy), the key records
looked up over DNS from a server on loopback (never the system resolver).

    /usr/bin/python3 dkim_verify.py PORT FILE...

Prints one line per file: "ok FILE" or "fail FILE REASON". Exits 0.
"""
import sys

import dkim
import dns.resolver

port = int(sys.argv[1])
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = port
resolver.timeout = resolver.lifetime = 3


def txt(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = resolver.resolve(name.rstrip("."), "TXT")
    except Exception:
        return None
    return b"".join(b"".join(r.strings) for r in answer)


for path in sys.argv[2:]:
    data = open(path, "rb").read()
    try:
        d = dkim.DKIM(data)
        sigs = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
        results = [d.verify(idx=i, dnsfunc=txt) for i in range(len(sigs))]
        if sigs and all(results):
            print("ok", path, len(sigs))
        else:
            print("fail", path, "signatures=%d results=%s" % (len(sigs), results))
    except Exception as e:
        print("fail", path, repr(e))
