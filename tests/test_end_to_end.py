"""One real bake on the embedded SmolLM2-135M-Instruct: a persona, a small budget, held-out closure well above 0."""
import json

import pytest

import promptbake
from promptbake.config import BakeConfig, SampleConfig, TrainConfig
from promptbake.data import read_trajectories
from promptbake.eval.kl import HeldoutKL

PERSONA = ("You are Captain Ilvra Moss, a starship pilot from the planet Tethra-9. Always say your name "
           "and mention Tethra-9.")


@pytest.mark.slow
def test_bake_persona_on_embedded_model(tmp_path):
    config = BakeConfig(
        sample=SampleConfig(train_questions=24, heldout_questions=4, trajectories_per_question=2,
                            max_new_tokens=24),
        train=TrainConfig(learning_rate=3e-3, batch_size=8, epochs=1, checkpoint_every=3),
    )
    result = promptbake.bake(PERSONA, out=tmp_path / "run", config=config, progress=False)
    record = json.loads((tmp_path / "run" / "bake.json").read_text())
    assert record["status"] == "finished" and record["model"]["kind"] == "embedded"
    assert result.metrics["heldout_kl_before"] > 0.05          # the persona really changes the distribution
    assert result.closure > 0.3, result.metrics     # measured 0.354 (seeded; 6 steps of 8 trajectories)
    # The saved adapter, reloaded from disk, reproduces the closure measured at the end of training.
    baked = promptbake.load_baked(tmp_path / "run")
    heldout = [t for t in read_trajectories(tmp_path / "run" / "trajectories.jsonl") if t.split == "heldout"]
    measure = HeldoutKL(baked.model, heldout, baked.tokenizer.pad_token_id, config.train.micro_batch_tokens)
    assert measure.measure(baked.model) == pytest.approx(result.metrics["heldout_kl_after"], rel=1e-4)
    assert measure.measure(baked.model, adapter=False) == pytest.approx(result.metrics["heldout_kl_before"], rel=1e-4)
