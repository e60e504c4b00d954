"""Screenshot of `promptbake ui` on a run folder, for docs/playground.png.

    .venv/bin/python scripts/playground_screenshot.py runs/demo "What is your name?" 0.5 docs/playground.png

Serves the run on a free local port, opens it in Debian's chromium (playwright, no browser download), sets the
strength, asks the question, waits for the four answers and saves a full-page PNG.
"""
from __future__ import annotations

import shutil
import socket
import sys
import time


def main(run: str, question: str, strength: str, png: str) -> None:
    from playwright.sync_api import sync_playwright

    from promptbake.ui import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = serve([run], port=port, block=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            box = page.locator("#strength input[type=number]")
            box.fill(strength)
            box.press("Enter")
            page.locator("#question textarea").fill(question)
            started = time.monotonic()
            page.locator("#ask").click()
            for elem in ("base", "base-prompt", "baked", "baked-prompt"):
                page.wait_for_function(f"document.querySelector('#{elem} textarea').value.length > 0",
                                       timeout=300_000)
            print(f"four answers in {time.monotonic() - started:.1f} s")
            page.screenshot(path=png, full_page=True)
            browser.close()
    finally:
        app.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
