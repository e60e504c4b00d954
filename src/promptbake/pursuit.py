"""Prompt Pursuit: re-prompt the baked model and bake again, round after round, to amplify a prompt.

Round 1 is an ordinary bake: teacher base + u, student base + LoRA. Round r bakes `--on` round r−1: its base is the
original weights with every earlier adapter merged (θ_{r−1}), its teacher θ_{r−1} + u, its student θ_{r−1} + a fresh
LoRA without u. Every round is a complete run folder (DIR/round-r), so each round's adapter is kept and loadable.

Per round we record how well the round matched its own teacher (closure), how far θ_r has moved from the original
teacher base + u (KL on round 1's held-out trajectories), the judge rates of θ_r and θ_r + u, and the locality
control (unrelated questions the base answers right) as the guard against collapse. Pursuit stops early after
`patience` rounds in a row whose judge rate of θ_r (no prompt) does not beat the best so far (θ_0: the base).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import runfolder
from .bake import bake
from .baked import load_baked
from .config import BakeConfig, override
from .errors import UserError
from .eval.conditions import CONDITIONS
from .eval.kl import HeldoutKL
from .eval.probes import ProbeFile
from .eval.stats import rate

PURSUIT_JSON = "pursuit.json"
BASE, TEACHER, BAKED, REPROMPTED = CONDITIONS


def check_rounds(rounds) -> int:
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise UserError(f"Prompt Pursuit needs --rounds of at least 1 (got {rounds!r}); round 1 is a plain bake")
    return rounds


def prepare_pursuit_dir(out: Path, overwrite: bool) -> None:
    """Create `out`; a previous pursuit there is replaced only with `overwrite`; any other content is refused."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / PURSUIT_JSON).is_file():
            raise UserError(f"--out {out} is a non-empty folder that is not a Prompt Pursuit; choose a new folder")
        if not overwrite:
            raise UserError(f"--out {out} already holds a Prompt Pursuit; choose another --out or pass --overwrite")
        for old in out.glob("round-*"):
            shutil.rmtree(old)
        (out / PURSUIT_JSON).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _judges(baked, probes: ProbeFile, conditions, samples: int, temperature: float, max_new_tokens: int,
            seed: int) -> dict:
    from .eval.judges import run_probes

    overall, _ = run_probes(baked, probes.probes, samples, temperature, max_new_tokens, seed, conditions)
    return overall


class _Reference:
    """What every round is compared with, measured once on round 1's model with its adapter off (the base)."""

    def __init__(self, baked, probes: ProbeFile, locality: ProbeFile | None, judging: tuple):
        from .data import read_trajectories

        heldout = [t for t in read_trajectories(baked.run_dir / runfolder.TRAJECTORIES) if t.split == "heldout"]
        self.kl = HeldoutKL(baked.model, heldout, baked.tokenizer.pad_token_id, baked.config.train.micro_batch_tokens)
        self.kl_base = self.kl.measure(baked.model, adapter=False)
        self.judges = _judges(baked, probes, (BASE, TEACHER), *judging)
        self.locality, self.kept = locality, []
        if locality:
            from .eval.knowledge import locality_answers

            answered = locality_answers(baked, locality, BASE, judging[3])
            self.kept = [p for p, (ok, _) in zip(locality.probes, answered) if ok]

    def summary(self) -> dict:
        return {"kl_base_from_teacher": self.kl_base, "judges": self.judges,
                "locality_questions": len(self.locality.probes) if self.locality else 0,
                "locality_kept": len(self.kept)}


def _measure_round(baked, reference: _Reference, probes: ProbeFile, judging: tuple) -> dict:
    judges = _judges(baked, probes, (BAKED, REPROMPTED), *judging)
    found = {"kl_from_original_teacher": {BAKED.name: reference.kl.measure(baked.model, True, "student"),
                                          REPROMPTED.name: reference.kl.measure(baked.model, True, "teacher")},
             "judges": judges}
    if reference.kept:
        from .eval.knowledge import locality_answers

        kept = ProbeFile(reference.kept, reference.locality.source)
        answered = locality_answers(baked, kept, BAKED, judging[3])
        found["locality"] = rate(sum(ok for ok, _ in answered), len(answered))
        found["locality_lost"] = [{"question": p.question, "reply": reply}
                                  for p, (ok, reply) in zip(reference.kept, answered) if not ok][:5]
    return found


def pursue(system_prompt: str, out: str | Path, config: BakeConfig, rounds: int, probes: ProbeFile,
           locality: ProbeFile | None = None, samples: int | None = None, temperature: float | None = None,
           patience: int = 1, overwrite: bool = False, progress: bool = True, on_round=None) -> dict:
    """Run up to `rounds` rounds of Prompt Pursuit into `out` (DIR/round-r run folders + DIR/pursuit.json).

    Args:
        probes: judges whose pass rate (θ_r, no prompt) must rise for pursuit to go on.
        patience: rounds in a row without a new best judge rate before stopping (≥ rounds: never stop early).
        locality: unrelated questions with expected answers (builtin_locality()); None skips the control.
        on_round: called with each round's record as it finishes.
    Returns:
        the pursuit.json record: {"reference", "rounds": [...], "stopped"}.
    """
    from .eval.judges import DEFAULT_MAX_NEW_TOKENS, DEFAULT_SAMPLES, settings

    rounds = check_rounds(rounds)
    if not isinstance(patience, int) or patience < 1:
        raise UserError(f"--patience must be a whole number of rounds, at least 1 (got {patience!r})")
    out = Path(out)
    prepare_pursuit_dir(out, overwrite)
    record = {"system_prompt": system_prompt, "rounds_requested": rounds, "patience": patience,
              "probe_file": probes.source, "config": config.to_dict(), "reference": None, "rounds": [], "stopped": None}
    reference, best, stale, previous = None, None, 0, None
    for number in range(1, rounds + 1):
        start = time.perf_counter()
        round_config = (override(config, {"model.on": str(previous.resolve()), "model.carry_prompts": False})
                        if previous else config)   # the teacher is the previous round with the prompt
        result = bake(system_prompt, out / f"round-{number}", round_config, progress=progress)
        baked_seconds = time.perf_counter() - start
        baked = load_baked(out / f"round-{number}")
        # (samples, temperature, max_new_tokens, seed), resolved as for `promptbake eval --suite judges`
        judging = settings(baked, probes, samples, temperature, DEFAULT_SAMPLES,
                           DEFAULT_MAX_NEW_TOKENS) + (config.seed,)
        if reference is None:
            reference = _Reference(baked, probes, locality, judging)
            record["reference"] = reference.summary()
            best = reference.judges[BASE.name]["rate"]
        found = _measure_round(baked, reference, probes, judging)
        found.update({"round": number, "dir": str(out / f"round-{number}"),
                      "teacher": "base + prompt" if number == 1 else f"round {number - 1} + prompt",
                      "closure": result.closure, "bake_seconds": round(baked_seconds, 1),
                      "seconds": round(time.perf_counter() - start, 1)})
        record["rounds"].append(found)
        current = found["judges"][BAKED.name]["rate"]
        best, stale = (current, 0) if current > best else (best, stale + 1)
        if stale >= patience and number < rounds:
            record["stopped"] = (f"{stale} round(s) in a row did not beat the best judge rate without the prompt "
                                 f"({best:.0%}); round {number} had {current:.0%}")
        runfolder.atomic_write_json(out / PURSUIT_JSON, record)
        if on_round:
            on_round(found, record)
        if record["stopped"]:
            break
        previous = out / f"round-{number}"
        del baked
    return record
