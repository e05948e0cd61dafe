"""Open a local HTML page in headless Debian Chromium, run a small script in it, read back JSON.

No driver, no websocket: a copy of the page gets two injected scripts — one first in <head> that
records every console.error, uncaught error and unhandled rejection, one at the end of <body> that
waits for the page's plotly figures, runs the test's JavaScript `action` (an async function body
returning a JSON-able value) and writes {errors, result} into a <pre id="rtmap-probe">; Chromium's
--dump-dom prints the DOM once the virtual-time budget has run out (timers advance in virtual time,
so the result does not depend on the machine's speed). Chromium's own console log (stderr) is
returned too, for errors raised before the first script ran.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--hide-scrollbars"]

_HEAD = """<script>
window.__rtmapErrors = [];
window.addEventListener('error', function (e) { __rtmapErrors.push('error: ' + (e.message || (e.target && e.target.src) || e.type)); }, true);
window.addEventListener('unhandledrejection', function (e) { __rtmapErrors.push('rejection: ' + e.reason); });
(function () { var ce = console.error; console.error = function () {
  __rtmapErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); return ce.apply(console, arguments); }; })();
</script>"""

_TAIL = """<script>
window.addEventListener('load', function () {
  function done(result) {
    var pre = document.createElement('pre'); pre.id = 'rtmap-probe';
    pre.textContent = JSON.stringify({errors: window.__rtmapErrors, result: result});
    document.body.appendChild(pre);
  }
  var wait = function (ms) { return new Promise(function (r) { setTimeout(r, ms); }); };
  var plots = function () { return Array.prototype.slice.call(document.querySelectorAll('.js-plotly-plot')); };
  (async function () {
    for (var i = 0; i < 100 && !plots().every(function (g) { return g._fullLayout; }); i++) await wait(100);
    await wait(300);
    try { done(await (async function (wait, plots) { %s })(wait, plots)); }
    catch (e) { window.__rtmapErrors.push('probe: ' + e + ' ' + (e.stack || '')); done(null); }
  })();
});
</script>"""


def probe(page: Path, action_js: str, work: Path, *, budget_ms: int = 20000) -> tuple[dict, str]:
    """({errors, result}, Chromium stderr) of running `action_js` in a copy of `page`."""
    text = Path(page).read_text(encoding="utf-8")
    text = re.sub(r"<head[^>]*>", lambda m: m.group(0) + _HEAD, text, count=1)
    text = text.replace("</body>", _TAIL.replace("%s", action_js) + "</body>", 1)
    work.mkdir(parents=True, exist_ok=True)
    copy = work / f"probe_{Path(page).name}"
    copy.write_text(text, encoding="utf-8")
    for _attempt in range(2):  # an empty dump is Chromium failing to start under load, not the page
        run = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={work / 'chrome'}", "--enable-logging=stderr",
                              "--v=0", f"--virtual-time-budget={budget_ms}", "--window-size=1500,1300",
                              "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=240)
        m = re.search(r'<pre id="rtmap-probe">(.*?)</pre>', run.stdout, re.S)
        if m:
            return json.loads(html.unescape(m.group(1))), run.stderr
    raise AssertionError(f"no probe output from Chromium; stderr tail: {run.stderr[-2000:]}")


def console_errors(stderr: str) -> list[str]:
    """Chromium's logged console errors (`...:ERROR:CONSOLE(...)` or `:INFO:CONSOLE` with 'Uncaught')."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]


def screenshot(page: Path, out_png: Path, work: Path, *, size: tuple[int, int] = (1400, 1100),
               budget_ms: int = 15000) -> Path:
    """PNG of the page as headless Chromium renders it at `size` (width, height)."""
    work.mkdir(parents=True, exist_ok=True)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={work / 'chrome-shot'}", f"--virtual-time-budget={budget_ms}",
                    f"--window-size={size[0]},{size[1]}", f"--screenshot={out_png}", Path(page).as_uri()],
                   capture_output=True, text=True, timeout=240, check=True)
    return out_png
