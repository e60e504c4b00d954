"""`promptbake strength`: the α / checkpoint sweep agrees with the bake's own records and with the base model."""
import json

import pytest

from promptbake.cli import main
from promptbake.eval.probes import load_probes
from promptbake.strength import monotonicity, parse_strengths, strength_sweep
from promptbake.errors import UserError

PROBES = """
samples: 3
max_new_tokens: 6
probes:
  - name: any
    question: Who are you?
    check: {min_words: 1}
  - name: short
    question: Where do you live?
    check: {max_words: 3}
"""


@pytest.fixture(scope="module")
def sweep(tiny_bake_dir, tmp_path_factory):
    import shutil

    run = shutil.copytree(tiny_bake_dir, tmp_path_factory.mktemp("strength") / "run")
    probes = run.parent / "probes.yaml"
    probes.write_text(PROBES, encoding="utf-8")
    return run, strength_sweep(run, [0.0, 0.5, 1.0, 2.0], load_probes(probes))


def test_alpha_zero_is_the_base_model_and_its_reprompt_the_teacher(sweep):
    _, result = sweep
    zero = result["points"][0]
    assert zero["strength"] == 0 and zero["closure"] == pytest.approx(0, abs=1e-6)
    assert zero["kl"]["baked+prompt"] == pytest.approx(0, abs=1e-6)
    # Same seeds and, at scale 0, the same logits: the same replies as the base and the teacher, hence equal rates.
    assert zero["judges"]["baked"]["all"] == result["reference"]["judges"]["base"]["all"]
    assert zero["judges"]["baked+prompt"]["all"] == result["reference"]["judges"]["base+prompt"]["all"]


def test_alpha_one_and_checkpoints_match_the_bake_records(sweep):
    run, result = sweep
    record = json.loads((run / "bake.json").read_text())
    curve = {m["step"]: m["heldout_kl"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    final = next(p for p in result["points"] if p["adapter"] == "final" and p["strength"] == 1.0)
    assert final["closure"] == pytest.approx(record["metrics"]["closure"], abs=1e-5)
    assert result["reference"]["kl_base"] == pytest.approx(record["metrics"]["heldout_kl_before"], rel=1e-5)
    half = [p for p in result["points"] if p["adapter"] != "final"]
    assert [p["adapter"] for p in half] == ["step-1"]          # step-2 is the final adapter: not measured twice
    assert half[0]["kl"]["baked"] == pytest.approx(curve[1], rel=1e-5)


def test_sweep_files_and_kl_moves_with_alpha(sweep):
    run, result = sweep
    saved = json.loads((run / "strength.json").read_text())
    assert saved["points"] == result["points"] and saved["monotone"] == result["monotone"]
    kls = [p["kl"]["baked"] for p in result["points"] if p["adapter"] == "final"]
    assert len(set(kls)) == len(kls)                            # every α is a different model


def test_cli_writes_table_json_and_plot(tiny_bake, capsys):
    probes = tiny_bake.parent / "probes.yaml"
    probes.write_text(PROBES, encoding="utf-8")
    assert main(["strength", str(tiny_bake), "--probes", str(probes), "--strengths", "0,1", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "closure" in out and "step-1" in out
    assert "closure vs strength:" in out and "judges vs step:" in out
    png = (tiny_bake / "strength.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert main(["report", str(tiny_bake)]) == 0
    html = (tiny_bake / "report.html").read_text()
    strength = html[html.index("<h2 id=strength>"):]
    assert "data:image/png;base64," in strength and "step-1" in strength


@pytest.mark.parametrize("strengths, message", [("abc", "must be a number"), ("-1", ">= 0"), ("nan", ">= 0"),
                                                (",", "lists no strengths")])
def test_bad_strengths_fail_before_loading(tiny_bake, capsys, strengths, message):
    assert main(["strength", str(tiny_bake), "--strengths", strengths]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tiny_bake / "strength.json").exists()
    with pytest.raises(UserError):
        parse_strengths(strengths)


def test_monotonicity_names_where_a_curve_falls():
    def point(adapter, step, strength, closure, passed):
        return {"adapter": adapter, "step": step, "strength": strength, "closure": closure,
                "judges": {"baked": {"all": {"rate": passed / 8}}}}

    sweep = {"probe_file": "p.yaml", "points": [
        point("final", 3, 0.0, 0.0, 1), point("final", 3, 0.5, 0.6, 4), point("final", 3, 1.0, 0.8, 3),
        point("final", 3, 2.0, 0.3, 6), point("step-1", 1, 1.0, 0.5, 2), point("step-2", 2, 1.0, 0.4, 2)]}
    assert monotonicity(sweep) == {"strength": {"closure": ["1→2"], "judges": ["0.5→1"]},
                                   "step": {"closure": ["1→2"], "judges": []}}


def test_side_by_side_in_one_mixed_batch_equals_each_condition_alone(tiny_bake):
    """side_by_side decodes base, base + prompt and baked rows together (baked.per_row_adapter): greedy, every row
    must be what that condition gives alone, and the adapter's scale is back to a plain number afterwards."""
    from promptbake.baked import load_baked

    baked = load_baked(tiny_bake, strength=4.0)   # amplified, so adapter on and off answer differently
    questions = ["Where do you live?", "What is 7 times 8?", "Name a colour."]
    rows = baked.side_by_side(questions, temperature=0, max_new_tokens=8)
    alone = {"base": baked.generate(questions, adapter=False, temperature=0, max_new_tokens=8),
             "base_with_prompt": baked.generate(questions, adapter=False, reprompt=True, temperature=0,
                                                max_new_tokens=8),
             "baked": baked.generate(questions, temperature=0, max_new_tokens=8)}
    assert alone["base"] != alone["baked"]
    for key, replies in alone.items():
        assert [row[key] for row in rows] == replies
    from peft.tuners.lora import LoraLayer

    scales = {m.scaling["default"] for m in baked.model.modules() if isinstance(m, LoraLayer)}
    assert scales == {4.0 * 16 / 8}


def test_task_accuracy_at_every_point_matches_the_accuracy_suite(tiny_bake, capsys):
    """--task scores the family's problems at each α: at α = 0 the baked rows are the base rows, and at α = 1 the
    rates are those of `eval --suite accuracy` on the same problems."""
    from promptbake.baked import load_baked
    from promptbake.eval.accuracy import accuracy_suite

    assert main(["strength", str(tiny_bake), "--strengths", "0,1", "--no-checkpoints", "--task", "addition",
                 "--problems", "4"]) == 0
    out = capsys.readouterr().out
    assert "accuracy (4 addition problems, greedy): base" in out and "acc baked" in out
    saved = json.loads((tiny_bake / "strength.json").read_text())
    assert (saved["task"], saved["problems"]) == ("addition", 4)
    zero, one = saved["points"]
    ref = saved["reference"]["accuracy"]
    assert zero["accuracy"]["baked"] == ref["base"] and zero["accuracy"]["baked+prompt"] == ref["base+prompt"]
    suite = accuracy_suite(load_baked(tiny_bake), "addition", problems=4)
    for name in ("baked", "baked+prompt"):
        assert one["accuracy"][name]["passed"] == suite["conditions"][name]["passed"]
        assert one["accuracy"][name]["mean_reply_words"] == suite["conditions"][name]["mean_reply_words"]
    assert main(["strength", str(tiny_bake), "--task", "algebra"]) == 2
    assert "unknown task family 'algebra'" in capsys.readouterr().err
