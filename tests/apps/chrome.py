"""A minimal headless-Chromium driver over the DevTools protocol, standard library only.

Chromium's ``--remote-debugging-pipe`` speaks CDP as NUL-separated JSON on file descriptors 3
(commands in) and 4 (responses and events out), so no WebSocket client is needed. The network
is cut three ways: a CSP in the pages, a proxy pointing nowhere, and CDP's offline emulation;
every request the page makes is recorded so tests can assert it stayed on ``file://``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--window-size=1200,900"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Chrome:
    """One browser; `page(url)` opens a tab and returns a `Page`."""

    def __init__(self, user_dir: str, timeout: float = 20.0) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium not found")
        log = open(os.path.join(user_dir, "chrome.log"), "wb")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def fds() -> None:  # runs in the child: CDP expects the pipe ends on fds 3 and 4
            a, b = os.dup(cmd_r), os.dup(out_w)  # either end may itself sit on fd 3 or 4
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={user_dir}", "--remote-debugging-pipe",
                                      "about:blank"], preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=log)
        os.close(cmd_r)
        os.close(out_w)
        log.close()
        self.timeout, self._next, self._lock = timeout, 0, threading.Lock()
        self._replies: dict[int, queue.Queue] = {}
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._out_r, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    self._replies.setdefault(msg["id"], queue.Queue()).put(msg)
                else:
                    self.events.append(msg)
                    if msg.get("method") == "Page.javascriptDialogOpening":  # never block on a dialog
                        self.send_async("Page.handleJavaScriptDialog", {"accept": False}, msg.get("sessionId"))

    def send_async(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        with self._lock:
            self._next += 1
            msg = {"id": self._next, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            self._replies.setdefault(self._next, queue.Queue())
            os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
            return self._next

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        i = self.send_async(method, params, session)
        try:
            msg = self._replies[i].get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no reply to {method} within {self.timeout}s") from None
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    def page(self, url: str) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Page", "Network"):
            page.send(f"{domain}.enable")
        page.send("Network.emulateNetworkConditions",
                  {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        page.send("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        try:
            self.send_async("Browser.close")
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - a hung browser is killed below
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass


class Page:
    def __init__(self, browser: Chrome, session: str) -> None:
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def eval(self, expr: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expr!r} raised: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 15.0) -> Any:
        end, last = time.monotonic() + timeout, None
        while time.monotonic() < end:
            try:  # the page may still be loading (or navigating): an exception means "not yet"
                value = self.eval(expr)
            except RuntimeError as exc:
                value, last = None, exc
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"{expr!r} still false after {timeout}s (last error: {last}); "
                           f"page errors: {self.errors()}")

    def click(self, x: float, y: float) -> None:
        base = {"x": x, "y": y, "button": "left", "clickCount": 1}
        self.send("Input.dispatchMouseEvent", {**base, "type": "mouseMoved", "button": "none"})
        time.sleep(0.1)  # plotly finds the hovered point on mousemove, before the click
        self.send("Input.dispatchMouseEvent", {**base, "type": "mousePressed"})
        self.send("Input.dispatchMouseEvent", {**base, "type": "mouseReleased"})

    def _mine(self) -> list[dict]:
        return [e for e in self.browser.events if e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        out = []
        for e in self._mine():
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self._mine() if e.get("method") == "Network.requestWillBeSent"]

    def dialogs(self) -> list[str]:
        return [e["params"].get("message", "") for e in self._mine() if e.get("method") == "Page.javascriptDialogOpening"]
