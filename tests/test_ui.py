"""`promptbake ui`: its refusals (one line, exit 2, before any model loads) and the page itself in a real browser
(Debian's chromium driven by playwright): ask, move the strength slider, chat, read the report, and check that each
answer is the one `promptbake generate` / `BakedModel.chat` gives with the same seed."""
from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.error
import urllib.request

import pytest

from promptbake.cli import main

from conftest import PERSONA, TINY_BAKE_FLAGS

QUESTION = "Where do you live?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptbake: error: ") and err.count("\n") == 1, err
    return err


def test_ui_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert "not a promptbake run folder" in _one_line_error(capsys, ["ui", str(tmp_path)])
    assert "not a promptbake run folder" in _one_line_error(capsys, ["ui", str(tmp_path / "missing")])


def test_ui_refuses_an_unfinished_bake(tiny_bake, capsys):
    (tiny_bake / "adapter" / "adapter_model.safetensors").unlink()
    assert "is not a finished bake" in _one_line_error(capsys, ["ui", str(tiny_bake)])


def test_ui_refuses_a_port_in_use(tiny_bake_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _one_line_error(capsys, ["ui", str(tiny_bake_dir), "--port", str(port)])
    assert f"127.0.0.1:{port}" in err and "--port" in err
    assert "a port number" in _one_line_error(capsys, ["ui", str(tiny_bake_dir), "--port", "70000"])


def test_ui_refuses_a_remote_host_unless_allowed(tiny_bake_dir, capsys):
    err = _one_line_error(capsys, ["ui", str(tiny_bake_dir), "--host", "0.0.0.0"])
    assert "--allow-remote" in err and "0.0.0.0" in err


@pytest.fixture(scope="module")
def strong_bake(tiny_model_dir, tmp_path_factory):
    """A tiny bake trained hard enough (lr 0.05, 3 epochs) that strength visibly changes its sampled answers."""
    out = tmp_path_factory.mktemp("ui-bake") / "run"
    flags = [f for f in TINY_BAKE_FLAGS]
    flags[flags.index("--epochs") + 1] = "3"
    flags[flags.index("--max-new-tokens") + 1] = "12"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), "--compare", "0",
                 "--learning-rate", "0.05", *flags]) == 0
    return out


@pytest.fixture(scope="module")
def playground(strong_bake):
    pytest.importorskip("gradio", reason="the playground needs the extra promptbake[ui] (make install has it)")
    from promptbake.ui import serve

    port = _free_port()
    app = serve([str(strong_bake)], port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def _generate(capsys, run, *flags: str) -> str:
    assert main(["generate", str(run), "--question", QUESTION, "--seed", "0", *flags]) == 0
    return capsys.readouterr().out.strip()


def _column(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").input_value()


def _wait_for_new(page, elem_id: str, old: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = _column(page, elem_id)
        if value and value != old:
            return value
        time.sleep(0.2)
    raise AssertionError(f"#{elem_id} did not change from {old!r} within {timeout_s} s")


def test_playground_in_chromium(playground, strong_bake, tmp_path, capsys):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it for this browser test")
    from playwright.sync_api import sync_playwright

    from promptbake.baked import load_baked

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(playground, wait_until="networkidle")
        page.locator("#question textarea").fill(QUESTION)
        page.locator("#ask").click()
        answers = {e: _wait_for_new(page, e, "") for e in ("base", "base-prompt", "baked", "baked-prompt")}

        # Drag the slider to its left end: strength 0, the baked column becomes the base model's answer.
        track = page.locator("#strength input[type=range]")
        box = track.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + 1, box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
        at_zero = _wait_for_new(page, "baked", answers["baked"])
        shown_strength = float(page.locator("#strength input[type=number]").input_value())
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

        page.get_by_role("tab", name="Chat").click()
        page.locator("#message textarea").fill(QUESTION)
        page.locator("#send").click()
        bot = page.locator("#chatbot .message.bot, #chatbot [data-testid='bot']").last
        bot.wait_for(timeout=60_000)
        chat_reply = bot.inner_text().strip()

        page.get_by_role("tab", name="Metrics and plots").click()
        report = page.frame_locator("#report iframe")
        report_title = report.locator("h1").inner_text()
        report_has_curve = report.locator("img[alt='training curve']").count()
        browser.close()

    shot = os.environ.get("PROMPTBAKE_UI_SCREENSHOT")
    if shot:
        shutil.copyfile(tmp_path / "playground.png", shot)
    assert answers["base"] == _generate(capsys, strong_bake, "--base")
    assert answers["base-prompt"] == _generate(capsys, strong_bake, "--base", "--reprompt")
    assert answers["baked"] == _generate(capsys, strong_bake)
    assert answers["baked-prompt"] == _generate(capsys, strong_bake, "--reprompt")
    assert shown_strength == 0
    assert at_zero != answers["baked"]
    assert at_zero == _generate(capsys, strong_bake, "--strength", "0") == answers["base"]
    baked = load_baked(strong_bake, strength=0)
    assert chat_reply == baked.chat([{"role": "user", "content": QUESTION}], seed=0)
    assert report_title == "promptbake report" and report_has_curve == 1


def test_playground_serves_no_files(playground, strong_bake):
    """Gradio's file route must not hand out the run folder's files, nor anything else on disk."""
    for path in (strong_bake / "bake.json", strong_bake / "adapter" / "adapter_model.safetensors",
                 __file__, "/etc/passwd"):
        url = f"{playground}gradio_api/file={path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status in (403, 404), f"{url} answered {status}"
