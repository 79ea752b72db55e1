#!/usr/bin/python3
# Serves the zone data of the RFC 7208 SPF test suite (pyspf's
# test/rfc7208-tests.yml) on loopback, one port per scenario, UDP and TCP,
# so that Tern's own c-ares resolver asks real DNS questions. Zone data is
# read the way pyspf's test driver reads it: an SPF record is also served as
# TXT unless the name has TXT records of its own; "TIMEOUT" (for the name, or
# for one type) and names under "error." not in the zone answer SERVFAIL (a
# temporary error, as a timeout is, without the wait); a CNAME is followed one
# level. Prints one JSON line (the scenarios: port, tests) and serves until
# stdin closes. Needs Debian's python3-yaml and python3-dnslib.

import json
import selectors
import socket
import struct
import sys

import yaml
from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSRecord


def records(zonedata):
    """name -> list of (type, value) or "TIMEOUT", as pyspf's getrdata() builds them."""
    zone = {}
    for name, entries in zonedata.items():
        out, generated, has_txt = [], [], False
        for entry in entries:
            if not isinstance(entry, dict):
                out.append(str(entry))
                continue
            for t, v in entry.items():
                if t in ("TXT", "SPF") and isinstance(v, str):
                    v = [v]
                if t == "TXT":
                    has_txt = True
                elif t == "SPF":
                    generated.append(("TXT", v))
                if v != ["NONE"]:
                    out.append((t, v))
        if not has_txt:
            out += generated
        zone[name.lower().rstrip(".")] = out
    return zone


def q_label(name):
    from dnslib import DNSLabel
    return DNSLabel([part.encode("utf-8") for part in name.rstrip(".").split(".")])


def rdata(t, v):
    if t == "A":
        return A(v)
    if t == "AAAA":
        return AAAA(v)
    if t == "MX":
        return MX(v[1] or ".", v[0])
    if t == "PTR":
        return PTR(v)
    if t == "CNAME":
        return CNAME(v)
    if t == "TXT":
        return TXT([s.encode("utf-8") for s in v])
    return None


def answer(zone, qname, qtype, level=0):
    """(rcode, [RR])"""
    name = qname.lower().rstrip(".")
    if name not in zone:
        return (RCODE.SERVFAIL if name.startswith("error.") else RCODE.NXDOMAIN), []
    rrs, seen_type = [], False
    for entry in zone[name]:
        if entry == "TIMEOUT":
            if not seen_type:
                return RCODE.SERVFAIL, []
            continue
        t, v = entry
        if t == qtype:
            seen_type = True
        if v == "TIMEOUT":
            if t == qtype:
                return RCODE.SERVFAIL, []
            continue
        if t == qtype or (t == "CNAME" and level == 0):
            data = rdata(t, v)
            if data is None:
                continue
            rrs.append(RR(q_label(qname), getattr(QTYPE, t), rdata=data, ttl=300))
            if t == "CNAME" and qtype != "CNAME":
                code, more = answer(zone, v, qtype, 1)
                rrs += more
    return RCODE.NOERROR, rrs


def reply(zone, data):
    request = DNSRecord.parse(data)
    response = request.reply()
    q = request.q
    # The name as its octets: str() would escape the spaces and "%" some test names hold.
    qname = b".".join(q.qname.label).decode("utf-8", "replace")
    code, rrs = answer(zone, qname, QTYPE[q.qtype])
    response.header.rcode = code
    for rr in rrs:
        response.add_answer(rr)
    return response


def main():
    docs = list(yaml.safe_load_all(open(sys.argv[1], "rb")))
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, ("stdin", None))
    scenarios = []
    for doc in docs:
        zone = records(doc.get("zonedata") or {})
        while True:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", port))
                break
            except OSError:
                udp.close()
                tcp.close()
        tcp.listen(16)
        sel.register(udp, selectors.EVENT_READ, ("udp", zone))
        sel.register(tcp, selectors.EVENT_READ, ("tcp", zone))
        for t in doc["tests"].values():
            spec = t.get("spec")
            t["spec"] = ", ".join(map(str, spec)) if isinstance(spec, list) else str(spec)
        scenarios.append({"description": doc.get("description", ""), "port": port, "tests": doc["tests"]})
    print(json.dumps(scenarios), flush=True)
    while True:
        for key, _ in sel.select():
            kind, zone = key.data
            if kind == "stdin":
                if not sys.stdin.readline():
                    return
            elif kind == "udp":
                data, peer = key.fileobj.recvfrom(4096)
                out = reply(zone, data).pack()
                if len(out) > 512:
                    r = DNSRecord.parse(data).reply()
                    r.header.tc = 1
                    out = r.pack()
                key.fileobj.sendto(out, peer)
            else:
                conn, _ = key.fileobj.accept()
                conn.settimeout(2)
                try:
                    head = conn.recv(2)
                    (length,) = struct.unpack("!H", head)
                    data = b""
                    while len(data) < length:
                        chunk = conn.recv(length - len(data))
                        if not chunk:
                            break
                        data += chunk
                    out = reply(zone, data).pack()
                    conn.sendall(struct.pack("!H", len(out)) + out)
                except (OSError, struct.error):
                    pass
                finally:
                    conn.close()


if __name__ == "__main__":
    main()
