"""Signs messages with python3-dkim (dkimpy), for Tern's verifier to check:
with its `dkimsign` command, and through dkim.sign() for l= (which the
command does not offer).

    /usr/bin/python3 dkim_sign.py DIR DOMAIN

DIR holds rsa.pem (an RSA private key, PEM) and ed25519.key (the base64 of
an Ed25519 private seed) and the messages *.eml; for each message and each
algorithm, canonicalisation pair and l= choice, writes
NAME.ALG.HEADER-BODY[.l].signed.
"""
import glob
import os
import subprocess
import sys

import dkim

d, domain = sys.argv[1], sys.argv[2].encode()
files = {b"rsa-sha256": os.path.join(d, "rsa.pem"), b"ed25519-sha256": os.path.join(d, "ed25519.key")}
keys = {
    b"rsa-sha256": (b"rsa", open(files[b"rsa-sha256"], "rb").read()),
    b"ed25519-sha256": (b"ed", open(files[b"ed25519-sha256"], "rb").read().strip()),
}
for path in sorted(glob.glob(os.path.join(d, "*.eml"))):
    msg = open(path, "rb").read()
    for alg, (selector, key) in keys.items():
        for hc in (b"simple", b"relaxed"):
            for bc in (b"simple", b"relaxed"):
                for length in (False, True):
                    name = "%s.%s.%s-%s%s.signed" % (path[:-4], alg.decode(), hc.decode(), bc.decode(), ".l" if length else "")
                    if length:
                        sig = dkim.sign(msg, selector, domain, key, canonicalize=(hc, bc), signature_algorithm=alg,
                                        length=True, include_headers=[b"from", b"to", b"subject", b"date"])
                        open(name, "wb").write(sig + msg)
                    else:
                        out = subprocess.run(["/usr/bin/dkimsign", selector, domain, files[alg], "--hcanon", hc, "--bcanon", bc,
                                              "--signalg", alg], input=msg, capture_output=True, check=True).stdout
                        open(name, "wb").write(out)
print("ok")
