"""report.html: one offline file, every suite laid out, user text escaped, and it really renders in a browser."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.image import imread

from promptbake.errors import UserError
from promptbake.eval.conditions import CONDITION_NAMES
from promptbake.eval.report import SUITE_TITLES, write_report
from promptbake.eval.stats import rate, wilson_interval

SCRIPT = "<script>alert('baked')</script>"
PASSED = {"base": 1, "base+prompt": 7, "baked": 5, "baked+prompt": 8}  # out of 8


def _rates(n=8, **extra):
    return {c: {**rate(k * n // 8, n), **extra} for c, k in PASSED.items()}


def full_eval() -> dict:
    """One evaluation key with every suite, in the schema the suites write (hand-made numbers)."""
    samples = {c: {**r, "samples": [f"{c} says hi", SCRIPT]} for c, r in _rates().items()}
    kl_conditions = {c: {"kl": kl, "kl_first_tokens": 2 * kl, "kl_later_tokens": kl / 2,
                         "per_position": [kl * (1 + 1 / (i + 1)) for i in range(11)] + [None]}
                     for c, kl in (("base", 0.25), ("baked", 0.05), ("baked+prompt", 0.03))}
    kl_conditions["base+prompt"] = {"kl": 0.0, "note": "the teacher itself"}
    return {
        "kl": {"conditions": kl_conditions, "closure": 0.8, "heldout_trajectories": 4, "heldout_tokens": 40,
               "first_tokens": 8},
        "judges": {"samples_per_probe": 8, "temperature": 0.7, "probe_file": "builtin", "conditions": _rates(16),
                   "probes": [{"name": "says-osk", "question": "Where are you from?", "check": "mentions Osk",
                               "conditions": samples}]},
        "knowledge": {"conditions": _rates(), "probes": [{"question": "Which planet?", "expected": ["Osk"],
                                                          "conditions": samples}],
                      "locality": {"questions": 10, "kept": 8, "conditions": _rates(),
                                   "drop": {c: 0.125 for c in CONDITION_NAMES}}},
        "drift": {"turns": 3, "dialogues": 8, "probe": {"question": "Who are you?", "check": "says Brindle"},
                  "conditions": {c: {"per_turn": [{"turn": t, **rate(max(0, k - t), 8)} for t in (1, 2, 3)]}
                                 for c, k in PASSED.items()}},
        "cot": {"problems": 8, "conditions": _rates(mean_reply_words=42.5),
                "examples": [{"question": "What is 7 times 8?", "answer": "56", **{c: f"{c}: 56" for c in PASSED}}]},
        "accuracy": {"task": "comparison", "problems": 8, "seed": 0, "temperature": 0.0,
                     "conditions": _rates(mean_reply_words=3.0),
                     "examples": [{"question": "Which number is larger, 52 or 49?", "answer": "52",
                                   **{c: f"{c}: 52" for c in PASSED}}]},
        "benchmarks": {"tasks": ["arc_easy"], "conditions": {c: {"arc_easy": {"acc": 0.61, "acc_norm": 0.58}}
                                                             for c in CONDITION_NAMES}},
        "samples": [{"question": "Hi, who are you?", "base": "I am SmolLM.", "base+prompt": "Brindle, of Osk.",
                     "baked": SCRIPT, "baked+prompt": "Brindle here, from Osk."}],
        "mystery": {"shape": "unknown to the report"},
    }


@pytest.fixture(scope="module")
def full_report(tiny_bake_dir, tmp_path_factory):
    """The tiny bake with full_eval() and an HTML-laden prompt, reported once for the tests of this file."""
    tiny_bake = shutil.copytree(tiny_bake_dir, tmp_path_factory.mktemp("report") / "run")
    bake = json.loads((tiny_bake / "bake.json").read_text())
    bake["system_prompt"] = "Be <b>bold</b> & brief."
    (tiny_bake / "bake.json").write_text(json.dumps(bake))
    # checkpoint first in the file, a malformed suite in it: the report still orders keys and shows the raw JSON
    evaluation = {"step-1@strength=1": {"judges": {"probes": []}}, "final@strength=1": full_eval(),
                  "final@strength=0.5": {"kl": full_eval()["kl"]}}
    (tiny_bake / "eval.json").write_text(json.dumps(evaluation))
    path = write_report(tiny_bake)
    return path, path.read_text(encoding="utf-8")


def test_report_is_one_offline_file_with_every_suite(full_report):
    path, text = full_report
    assert path.name == "report.html" and path.parent.joinpath("report.html").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".report.html")]  # no temp file left behind
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", text, re.I)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    images = re.findall(r"<img\b[^>]*>", text)
    # training curve; final@1: per-position KL, judges bars, drift lines; final@0.5: per-position KL
    assert len(images) == 5
    for tag in images:
        payload = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert payload, tag[:80]
        assert base64.b64decode(payload[1]).startswith(b"\x89PNG\r\n\x1a\n")
    for title in SUITE_TITLES.values():
        assert re.search(rf"<h4 id=final-strength-1-[a-z]+>{re.escape(title)}</h4>", text), title
    assert "<h4 id=final-strength-1-mystery>mystery</h4>" in text and "unknown to the report" in text
    assert "Could not lay out these results (KeyError" in text  # the malformed checkpoint entry, shown raw
    assert "8 problems of the comparison family." in text


def test_report_escapes_user_text_and_formats_numbers(full_report):
    _, text = full_report
    assert "<script" not in text and "&lt;script&gt;alert(&#x27;baked&#x27;)&lt;/script&gt;" in text
    assert "Be &lt;b&gt;bold&lt;/b&gt; &amp; brief." in text
    low, high = wilson_interval(5, 8)
    assert f"62.5%<br><span class=ci>5/8 · CI {100 * low:.1f}–{100 * high:.1f}%</span>" in text
    assert "closure <b>0.800</b>" in text
    assert "<td class=num>0.610</td>" in text and "<td class=num>0.125</td>" in text  # benchmark, locality drop
    keys = [text.index(f">{key}</h3>") for key in ("final@strength=1", "final@strength=0.5", "step-1@strength=1")]
    assert keys == sorted(keys)


def test_report_without_evaluations_says_how_to_add_them(tiny_bake):
    text = write_report(tiny_bake).read_text(encoding="utf-8")
    assert "No evaluations yet" in text and f"promptbake eval {tiny_bake} --suite" in text
    assert "<h2 id=training>Training</h2><img" in text  # the tiny bake's metrics.jsonl still gives a curve
    assert "<h4" not in text


def test_report_survives_a_cut_metrics_line_and_names_a_broken_eval_json(tiny_bake):
    with open(tiny_bake / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 99, "lo')  # a crash in the middle of append_jsonl
    assert "<h2 id=training>Training</h2><img" in write_report(tiny_bake).read_text(encoding="utf-8")
    (tiny_bake / "eval.json").write_text("{not json")
    with pytest.raises(UserError, match="eval.json is not valid JSON"):
        write_report(tiny_bake)


def _screenshot(html_path, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it for this rendering check")
    png = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={png}",
                    "--window-size=1280,4000", html_path.as_uri()],
                   check=True, timeout=60, capture_output=True)
    return png


def test_report_renders_in_headless_chromium(full_report, tmp_path):
    png = _screenshot(full_report[0], tmp_path)
    assert png.is_file() and png.stat().st_size > 20_000
    pixels = imread(png)[..., :3]  # [H, W, 3] floats in 0..1
    assert pixels.shape[:2] == (4000, 1280)
    ink = (pixels < 0.9).any(axis=-1)
    assert 0.02 < ink.mean() < 0.6 and pixels.std() > 0.05  # text and plots, neither blank nor a solid block
    # the inline PNGs decoded: the baked condition's orange (#ff7f0e) shows in the plots, nowhere else in the page
    orange = np.abs(pixels - np.array([1.0, 0.498, 0.055])).max(axis=-1) < 0.08
    assert orange.sum() > 500
