#!/usr/bin/env python3
"""Opens Tern's dashboard in headless Chromium (Debian's `chromium`), driven
through its remote debugging protocol (a small WebSocket client from the
standard library), the way a person would: the login form, then the page,
a history search, on a phone-sized and a wide screen.

    dashboard_check.py BASE_URL TOKEN SEARCH OUT_DIR

Prints one JSON object: console errors, page text checks, overflow, and the
screenshots written to OUT_DIR (dashboard-phone.png, dashboard-wide.png).
"""
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


class CDP:
    def __init__(self, ws_url):
        host_port, path = ws_url[len("ws://"):].split("/", 1)
        host, port = host_port.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        if b" 101 " not in response.split(b"\r\n")[0]:
            raise RuntimeError("no websocket upgrade: %r" % response)
        self.next_id = 0
        self.events = []

    def _send(self, text):
        data = text.encode()
        header = bytes([0x81])
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise RuntimeError("devtools closed the connection")
            out += chunk
        return out

    def _receive(self):
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            if b0 & 0x0F == 0x9:  # ping
                continue
            message += payload
            if b0 & 0x80:
                return json.loads(message)

    def call(self, method, **params):
        self.next_id += 1
        mine = self.next_id
        self._send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            m = self._receive()
            if m.get("id") == mine:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.sock.settimeout(max(0.1, deadline - time.time()))
            try:
                self.events.append(self._receive())
            except socket.timeout:
                break
        raise RuntimeError("no " + method)

    def pump(self, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.time()))
            try:
                self.events.append(self._receive())
            except socket.timeout:
                pass


def evaluate(cdp, expression):
    r = cdp.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    return r.get("result", {}).get("value")


def main():
    base, token, search, out_dir = sys.argv[1:5]
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        print(json.dumps({"error": "chromium is not installed"}))
        sys.exit(2)
    profile = tempfile.mkdtemp(prefix="tern-chromium-")
    browser = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                                "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
                                "--user-data-dir=" + profile, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().count("\n") >= 1:
                break
            time.sleep(0.1)
        port = open(port_file).read().split("\n")[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        cdp = CDP(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.call(domain + ".enable")
        result = {"screenshots": []}

        def load(url):
            cdp.call("Page.navigate", url=url)
            cdp.wait_for("Page.loadEventFired")

        def submit_login():
            evaluate(cdp, "document.querySelector('input[name=token]').value = %s; document.querySelector('form').submit(); true" % json.dumps(token))
            cdp.wait_for("Page.loadEventFired")

        # A wrong token first: the form says so.
        load(base + "/dashboard")
        result["login_form"] = evaluate(cdp, "!!document.querySelector('input[name=token]')")
        evaluate(cdp, "document.querySelector('input[name=token]').value = 'tern_wrong'; document.querySelector('form').submit(); true")
        cdp.wait_for("Page.loadEventFired")
        result["wrong_token_refused"] = evaluate(cdp, "document.body.innerText.includes('not valid')")
        submit_login()
        result["logged_in"] = evaluate(cdp, "!!document.getElementById('queue')")
        text = evaluate(cdp, "document.body.innerText")
        result["sections"] = [s for s in ("Queue", "Delivery rate", "Top destinations", "Last failures", "History") if s in text]
        # Two ticks of the live rate.
        cdp.pump(11)
        result["rate_text"] = evaluate(cdp, "document.getElementById('rate').textContent")
        result["spark_bars"] = evaluate(cdp, "document.querySelectorAll('#spark rect').length")
        # A search, through the form.
        evaluate(cdp, "document.querySelector('input[name=q]').value = %s; document.querySelector('form.search').submit(); true" % json.dumps(search))
        cdp.wait_for("Page.loadEventFired")
        result["search_text"] = evaluate(cdp, "document.getElementById('search').innerText")
        for name, width, height, mobile in (("phone", 390, 844, True), ("wide", 1600, 1000, False)):
            cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)
            cdp.pump(0.5)
            result["overflow_" + name] = evaluate(cdp, "document.documentElement.scrollWidth > window.innerWidth")
            shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            path = os.path.join(out_dir, f"dashboard-{name}.png")
            with open(path, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            result["screenshots"].append(path)
        cdp.pump(0.5)
        errors = []
        for e in cdp.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                errors.append(d.get("text", "exception") + " " + d.get("exception", {}).get("description", ""))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                entry = p["entry"]
                # The deliberately wrong token's 401 is expected; anything else is not.
                if not (entry.get("source") == "network" and "/dashboard/login" in entry.get("url", "")):
                    errors.append(entry.get("text", "") + " " + entry.get("url", ""))
        result["console_errors"] = errors
        print(json.dumps(result))
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
