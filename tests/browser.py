"""A real headless Chromium (Debian's ``chromium``), driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` makes Chromium read JSON commands from fd 3 and write replies to fd 4, each
message ending in a NUL byte: no websocket library and no open debugging port are needed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

# Draws the page's <img> into a small canvas every 100 ms and counts distinct pictures: more than one means
# frames kept arriving and the browser decoded them.
COUNT_FRAMES_JS = """
(async () => {
  const img = document.getElementById(%(id)r);
  const canvas = document.createElement('canvas'); canvas.width = 64; canvas.height = 48;
  const ctx = canvas.getContext('2d');
  const seen = new Set();
  for (let i = 0; i < %(polls)d; i++) {
    if (img && img.naturalWidth > 0) {
      ctx.drawImage(img, 0, 0, 64, 48);
      seen.add(Array.from(ctx.getImageData(0, 0, 64, 48).data).join(','));
    }
    await new Promise(r => setTimeout(r, 100));
  }
  return {width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0, distinct: seen.size,
          text: document.body.innerText};
})()
"""


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    def __init__(self, url: str):
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed (tools/system-packages.sh installs Debian's chromium)")
        self.profile = tempfile.mkdtemp(prefix="edgekit-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds():  # in the child; via fresh copies, in case the pipe ends are fds 3/4 themselves
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"],
            # fds 3 and 4 listed so that the close-other-fds step, which runs after preexec_fn, keeps them
            pass_fds=(3, 4, to_chrome_r, from_chrome_w), preexec_fn=wire_fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.session = None
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Page.navigate", url=url)

    def image_width(self, image_id: str, timeout: float = 20.0) -> int:
        """naturalWidth of an <img> once it has decoded a picture (0 if it never does within ``timeout``)."""
        return self.wait_for(f"(document.getElementById({image_id!r}) || {{}}).naturalWidth || 0", timeout)

    def send(self, method: str, timeout: float = 30.0, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raise TimeoutError(f"no reply to {method} within {timeout} s")

    def evaluate(self, expression: str, timeout: float = 30.0):
        result = self.send("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def wait_for(self, expression: str, timeout: float = 20.0):
        """Poll a JS expression until it is truthy; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.2)

    def login(self, token: str) -> None:
        """Fill in and send the page's login form (the token goes in a POST body, never in the URL)."""
        self.wait_for("document.getElementById('token')")
        self.evaluate(f"document.getElementById('token').value = {json.dumps(token)}; "
                      "document.forms[0].submit(); true")
        self.wait_for("location.pathname === '/' && document.getElementById('live') !== null")

    def count_frames(self, image_id: str, polls: int = 20) -> dict:
        return self.evaluate(COUNT_FRAMES_JS % {"id": image_id, "polls": polls})

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
