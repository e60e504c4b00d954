"""Prompt Pursuit on the tiny model: each round bakes on the previous one, every round is kept, bad input fails."""
import json

import pytest
import torch

from conftest import PERSONA, TINY_BAKE_FLAGS, make_trajectories
from promptbake.baked import load_baked
from promptbake.cli import main
from promptbake.data import collate
from promptbake.logits import adapter_disabled, completion_logits

ALWAYS = """
samples: 2
max_new_tokens: 4
probes:
  - name: anything
    question: Who are you?
    check: {min_words: 0}
"""


def _probes(folder, text=ALWAYS):
    path = folder / "probes.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _pursue(model_dir, out, probes, *extra):
    return main(["pursue", "--prompt", PERSONA, "--model", str(model_dir), "--out", str(out), "--probes", probes,
                 "--locality", "none", *TINY_BAKE_FLAGS, *extra])


def test_two_rounds_chain_on_each_other(tiny_model_dir, tmp_path):
    out = tmp_path / "pursuit"
    assert _pursue(tiny_model_dir, out, _probes(tmp_path), "--rounds", "2", "--patience", "2") == 0
    record = json.loads((out / "pursuit.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2] and record["stopped"] is None
    first, second = (json.loads((out / f"round-{n}" / "bake.json").read_text()) for n in (1, 2))
    assert not first["config"]["model"]["on"]
    assert second["config"]["model"]["on"] == str((out / "round-1").resolve())
    # Round 1 is a plain bake: its KL from the original teacher is its own held-out KL after training.
    assert record["rounds"][0]["kl_from_original_teacher"]["baked"] == pytest.approx(
        first["metrics"]["heldout_kl_after"], rel=1e-5)
    assert record["rounds"][0]["closure"] == pytest.approx(first["metrics"]["closure"])
    # Round 2's base (adapter off) is θ₁: the original weights with round 1's adapter merged.
    one, two = load_baked(out / "round-1"), load_baked(out / "round-2")
    batch = collate(make_trajectories(one.tokenizer), one.tokenizer.pad_token_id)
    with torch.no_grad(), adapter_disabled(two.model):
        theta_1 = completion_logits(two.model, batch, "student")
    with torch.no_grad():
        assert (theta_1 - completion_logits(one.model, batch, "student")).abs().max() < 1e-4
        assert (completion_logits(two.model, batch, "student") - theta_1).abs().max() > 1e-4   # round 2 trained


def test_pursuit_stops_when_the_judge_rate_cannot_rise(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "pursuit"
    assert _pursue(tiny_model_dir, out, _probes(tmp_path), "--rounds", "3") == 0    # the base already passes 100 %
    record = json.loads((out / "pursuit.json").read_text())
    assert len(record["rounds"]) == 1 and "did not beat the best judge rate" in record["stopped"]
    assert not (out / "round-2").exists()
    assert "stopped early" in capsys.readouterr().out
    assert _pursue(tiny_model_dir, out, _probes(tmp_path), "--rounds", "1") == 2      # never silently replaced
    assert "already holds a Prompt Pursuit" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [(["--rounds", "0"], "at least 1"), (["--rounds", "-2"], "at least 1"),
                                            (["--patience", "0"], "--patience must be")])
def test_bad_rounds_are_one_line_exit_2(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "pursuit"
    assert _pursue(tiny_model_dir, out, _probes(tmp_path), *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_pursuit_needs_probes(tiny_model_dir, tmp_path, capsys):
    assert main(["pursue", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(tmp_path / "p")]) == 2
    assert "pursue needs --probes" in capsys.readouterr().err
