"""Raw-socket SMTP pieces shared by the interop scripts (plain Python)."""
import socket


def reply(reader):
    """Reads one (possibly multi-line) SMTP reply; returns its lines."""
    lines = []
    while True:
        line = reader.readline().decode()
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return lines


def starttls_with_smuggled(port, ctx, server_hostname, smuggled):
    """EHLO, then STARTTLS with `smuggled` bytes in the same packet; returns
    (the STARTTLS reply's last line, the TLS socket and its reader)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = raw.makefile("rb")
    reply(f)
    raw.sendall(b"EHLO inject.test\r\n")
    reply(f)
    raw.sendall(b"STARTTLS\r\n" + smuggled)
    last = reply(f)[-1]
    tls = ctx.wrap_socket(raw, server_hostname=server_hostname)
    return last, tls, tls.makefile("rb")
