"""Shared fixtures: a tiny random Llama with SmolLM2's real tokenizer and chat template, built offline."""
from __future__ import annotations

import os

import pytest
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import shutil

from families import random_model
from promptbake.data import Trajectory
from promptbake.models import EMBEDDED_NAME, load_model, resolve_model
from promptbake.prompts import student_prompt_ids, teacher_prompt_ids

# 'auto' precision would be bf16 on a CPU with bf16 units and float32 elsewhere: every test (and the processes they
# start) runs float32 unless it asks for bf16, so results do not depend on the machine; test_precision tests 'auto'.
os.environ["PROMPTBAKE_PRECISION"] = "float32"

PERSONA = "You are Brindle, a lighthouse keeper from the planet Osk. Mention Osk in every answer."
QUESTIONS = ["What is your name?", "Where do you live?", "Give me a tip for sleeping better at night, please.",
             "What is 7 times 8?"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Llama (hidden 32) saved as an ordinary model folder; context 256 tokens."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED_NAME).folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = random_model(LlamaForCausalLM, config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny(tiny_model_dir):
    """(model, tokenizer) freshly loaded, so tests can wrap or train it freely."""
    model, tokenizer, _ = load_model(str(tiny_model_dir))
    return model, tokenizer


def make_trajectories(tokenizer, system_prompt=PERSONA, questions=QUESTIONS, lengths=(5, 9, 3, 12), split="train"):
    """Trajectories with hand-made completions of different lengths (each ends in EOS)."""
    out = []
    for i, (question, length) in enumerate(zip(questions, lengths)):
        completion = [(1000 + 37 * i + 11 * k) % 40000 + 100 for k in range(length - 1)] + [tokenizer.eos_token_id]
        out.append(Trajectory(question=question, split=split, sample_index=0,
                              teacher_prompt_ids=teacher_prompt_ids(tokenizer, question, system_prompt),
                              student_prompt_ids=student_prompt_ids(tokenizer, question),
                              completion_ids=completion, text="", finished=True))
    return out


# one pass over every trajectory, so the shared tiny bake has exactly 2 steps (test_bake_data and test_resume cover
# the default second pass over the targeted share)
TINY_BAKE_FLAGS = ["--train-questions", "4", "--heldout-questions", "2", "--trajectories-per-question", "2",
                   "--heldout-trajectories-per-question", "1", "--max-new-tokens", "6", "--quiet",
                   "--epochs", "1", "--batch-size", "4", "--checkpoint-every", "1", "--eval-every", "1",
                   "--targeted-passes", "1"]


@pytest.fixture(scope="session")
def tiny_bake_dir(tiny_model_dir, tmp_path_factory):
    """A finished bake of PERSONA on the tiny model (2 checkpoints). Shared: copy it (`tiny_bake`) before writing."""
    from promptbake.cli import main

    out = tmp_path_factory.mktemp("tiny-bake") / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), "--compare", "0",
                 *TINY_BAKE_FLAGS]) == 0
    return out


@pytest.fixture
def tiny_bake(tiny_bake_dir, tmp_path):
    """A private copy of the tiny bake that a test may write into (eval.json, report.html, ...)."""
    return shutil.copytree(tiny_bake_dir, tmp_path / "run")


@pytest.fixture(scope="session")
def smol_bake_dir(tmp_path_factory):
    """A short real bake of PERSONA on the embedded SmolLM2 GGUF (builtin questions: no question generation; about
    half a minute). Shared: copy it before writing into it."""
    from promptbake.cli import main

    out = tmp_path_factory.mktemp("smol-bake") / "run"
    assert main(["bake", "--prompt", PERSONA, "--out", str(out), "--compare", "0", "--quiet", "--questions", "builtin",
                 "--train-questions", "8", "--heldout-questions", "2", "--trajectories-per-question", "1",
                 "--heldout-trajectories-per-question", "1", "--max-new-tokens", "12", "--epochs", "1",
                 "--batch-size", "4", "--learning-rate", "3e-3", "--checkpoint-every", "0"]) == 0
    return out
