"""The vLLM sampling backend without vLLM: its pure conversions, fed objects shaped like vLLM's outputs.

vLLM cannot run here (no GPU, not installed), so the fakes below copy the structure of vLLM 0.10.1 – 0.11 (V1):
`RequestOutput.outputs[0]` is a `CompletionOutput(token_ids, finish_reason, stop_reason, logprobs, ...)`, and
`logprobs[i]` is a dict {token id: Logprob(logprob, rank, decoded_token)} built as vLLM's
`LogprobsProcessor._make_logprob_dict` builds it: the sampled token first (with its own rank), then the top k by rank.
"""
import json
import os
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from promptbake import vllm_sampler
from promptbake.bake import build_jobs
from promptbake.config import SampleConfig
from promptbake.data import Trajectory, read_trajectories, write_trajectories
from promptbake.errors import UserError
from promptbake.sampling import sample_trajectories
from promptbake.vllm_sampler import (completion_from_output, request_seed, sample_with_vllm, sampling_params_kwargs,
                                     top_k_tensors, trajectory_from_output)

from conftest import PERSONA, QUESTIONS

SRC = Path(__file__).resolve().parent.parent / "src"


def logprob_dict(row: torch.Tensor, sampled: int, k: int) -> dict:
    """One position's logprobs as vLLM returns them, from a full log-distribution row [V]."""
    order = row.argsort(descending=True)
    rank_of_sampled = int((order == sampled).nonzero()) + 1
    entries = {sampled: SimpleNamespace(logprob=float(row[sampled]), rank=rank_of_sampled, decoded_token=None)}
    for rank, token in enumerate(order[:k].tolist(), 1):
        entries[token] = SimpleNamespace(logprob=float(row[token]), rank=rank, decoded_token=None)
    return entries


def vllm_output(token_ids, finish_reason: str, logprobs=None, stop_reason=None, prompt_token_ids=()):
    completion = SimpleNamespace(index=0, text="", token_ids=token_ids, cumulative_logprob=None, logprobs=logprobs,
                                 finish_reason=finish_reason, stop_reason=stop_reason)
    return SimpleNamespace(request_id="0", prompt=None, prompt_token_ids=list(prompt_token_ids), prompt_logprobs=None,
                           outputs=[completion], finished=True)


class FakeLLM:
    """Stands in for vllm.LLM: each request's tokens come from its own seed, as vLLM's per-request seeds make them."""

    def __init__(self, eos: int, vocab: int = 2000):
        self.eos, self.vocab, self.calls = eos, vocab, []

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params))
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            generator = torch.Generator().manual_seed(params.seed)
            length = int(torch.randint(1, params.max_tokens + 3, (1,), generator=generator))
            body = torch.randint(100, self.vocab, (min(length, params.max_tokens),), generator=generator).tolist()
            stopped = length <= params.max_tokens
            ids = body[:-1] + [self.eos] if stopped else body
            logprobs = None
            if params.logprobs:
                rows = torch.log_softmax(torch.randn(len(ids), self.vocab, generator=generator), -1)
                logprobs = [logprob_dict(row, token, params.logprobs) for row, token in zip(rows, ids)]
            outputs.append(vllm_output(tuple(ids), "stop" if stopped else "length", logprobs,
                                       prompt_token_ids=prompt["prompt_token_ids"]))
        return outputs


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def fake_vllm(monkeypatch):
    """vllm.SamplingParams as a plain record of its keyword arguments (the real one needs vLLM installed)."""
    monkeypatch.setattr(vllm_sampler, "_import_vllm", lambda: SimpleNamespace(SamplingParams=SimpleNamespace))


def jobs_for(tokenizer, per_question=2):
    return build_jobs(tokenizer, PERSONA, QUESTIONS[:3], "train", per_question)


# --- sampling settings ---------------------------------------------------------------------------------------------

def test_sampled_settings_are_passed_explicitly():
    cfg = SampleConfig(sampling_temperature=1.3, top_p=0.8, max_new_tokens=21)
    kwargs = sampling_params_kwargs(cfg, [2, 7], seed=5, index=3)
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["max_tokens"]) == (1.3, 0.8, 21)
    assert kwargs["top_k"] == 0 and kwargs["min_p"] == 0.0    # the full vocabulary: top_p alone truncates
    assert kwargs["stop_token_ids"] == [2, 7]
    assert kwargs["seed"] == request_seed(5, 3)
    assert kwargs["logprobs"] is None                           # none asked for, none computed
    assert kwargs["n"] == 1 and kwargs["detokenize"] is False


def test_temperature_zero_is_greedy_and_ignores_top_p():
    kwargs = sampling_params_kwargs(SampleConfig(sampling_temperature=0.0, top_p=0.5), [2], seed=0, index=0)
    assert kwargs["temperature"] == 0.0 and kwargs["top_p"] == 1.0


def test_logprobs_are_requested_only_when_asked_for():
    cfg = SampleConfig()
    assert sampling_params_kwargs(cfg, [2], 0, 0, top_k_logprobs=8)["logprobs"] == 8
    assert sampling_params_kwargs(cfg, [2], 0, 0, top_k_logprobs=0)["logprobs"] is None


def test_request_seeds_are_distinct_per_job_and_repeat_per_run():
    seeds = [request_seed(7, i) for i in range(5000)]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [request_seed(7, i) for i in range(5000)]
    assert seeds != [request_seed(8, i) for i in range(5000)]
    assert all(0 <= s < 2**63 for s in seeds + [request_seed(-3, 0), request_seed(2**62, 10)])


def test_sample_with_vllm_sends_token_id_prompts_and_per_job_params(tokenizer, tiny_model_dir, fake_vllm):
    jobs = jobs_for(tokenizer)
    llm = FakeLLM(tokenizer.eos_token_id)
    cfg = SampleConfig(max_new_tokens=6, sampling_temperature=0.7, top_p=0.9)
    sample_with_vllm(str(tiny_model_dir), tokenizer, jobs, cfg, seed=3, top_k_logprobs=4, llm=llm)
    (prompts, params), = llm.calls
    # the chat template is promptbake's: vLLM gets the teacher prompt's token ids, nothing to render
    assert prompts == [{"prompt_token_ids": job["teacher_prompt_ids"]} for job in jobs]
    assert [p.seed for p in params] == [request_seed(3, i) for i in range(len(jobs))]
    assert {(p.temperature, p.top_p, p.max_tokens, p.logprobs) for p in params} == {(0.7, 0.9, 6, 4)}
    assert all(p.stop_token_ids == [tokenizer.eos_token_id] for p in params)


def test_stop_ids_include_the_checkpoints_generation_config(tokenizer, tmp_path, fake_vllm):
    """The HF path stops at model.generation_config's eos ids too; the vLLM path reads them from the folder."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [tokenizer.eos_token_id, 7]}))
    llm = FakeLLM(tokenizer.eos_token_id)
    sample_with_vllm(str(tmp_path), tokenizer, jobs_for(tokenizer, 1), SampleConfig(max_new_tokens=4), 0, llm=llm)
    assert all(p.stop_token_ids == sorted({tokenizer.eos_token_id, 7}) for p in llm.calls[0][1])


# --- output conversion ---------------------------------------------------------------------------------------------

def test_stop_token_is_kept_and_text_drops_it(tokenizer):
    words = tokenizer.encode("Osk is far away.", add_special_tokens=False)
    eos = tokenizer.eos_token_id
    job = jobs_for(tokenizer, 1)[0]
    trajectory, top_k = trajectory_from_output(job, vllm_output(words + [eos], "stop"), tokenizer, [eos])
    assert trajectory.completion_ids == words + [eos] and trajectory.finished
    assert trajectory.text == "Osk is far away."
    assert top_k is None
    assert {k: getattr(trajectory, k) for k in job} == job


def test_cut_by_max_tokens_is_unfinished():
    ids, finished, _ = completion_from_output(vllm_output([5, 6, 7], "length"), [2])
    assert ids == [5, 6, 7] and not finished


def test_stop_token_sampled_as_the_last_allowed_token_counts_as_finished():
    """However vLLM orders its length and EOS checks, `finished` means what cut_at_stop says: ends with a stop."""
    ids, finished, _ = completion_from_output(vllm_output([5, 6, 2], "length"), [2])
    assert ids == [5, 6, 2] and finished


def test_stopped_output_without_its_stop_token_is_refused():
    with pytest.raises(ValueError, match="stop token"):
        completion_from_output(vllm_output([5, 6], "stop"), [2])
    with pytest.raises(ValueError, match="abort"):
        completion_from_output(vllm_output([5, 6], "abort"), [2])


def test_top_k_is_the_best_k_in_order_whatever_the_sampled_token():
    torch.manual_seed(0)
    rows = torch.log_softmax(torch.randn(4, 50) * 3, -1)   # [n, V], the model's raw log-distribution
    k = 5
    best = rows.topk(k, dim=-1)
    sampled = [int(best.indices[0, 0]), int(best.indices[1, 3]), int(rows[2].argmin()), int(best.indices[3, 4])]
    positions = [logprob_dict(row, token, k) for row, token in zip(rows, sampled)]
    assert len(positions[2]) == k + 1                       # the sampled token ranks below the top k: one extra entry
    ids, logprobs = top_k_tensors(positions, k)
    assert ids.shape == logprobs.shape == (4, k)
    assert ids.dtype == torch.long and logprobs.dtype == torch.float32
    assert torch.equal(ids, best.indices)
    assert torch.allclose(logprobs, best.values)
    assert (logprobs[:, :-1] >= logprobs[:, 1:]).all()


def test_top_k_covers_exactly_the_kept_tokens():
    rows = torch.log_softmax(torch.randn(3, 30), -1)
    positions = [logprob_dict(row, token, 4) for row, token in zip(rows, [11, 2, 9])]
    ids, finished, (top_ids, top_logprobs) = completion_from_output(
        vllm_output([11, 2, 9], "stop", positions), [2], top_k_logprobs=4)
    assert ids == [11, 2] and finished
    assert top_ids.shape == top_logprobs.shape == (2, 4)
    assert torch.equal(top_ids, rows[:2].topk(4, dim=-1).indices)


def test_top_k_of_an_empty_completion_has_shape_zero_by_k():
    ids, logprobs = top_k_tensors([], 6)
    assert ids.shape == logprobs.shape == (0, 6)


def test_fewer_logprobs_than_asked_is_an_error():
    rows = torch.log_softmax(torch.randn(1, 30), -1)
    with pytest.raises(ValueError, match="fewer"):
        top_k_tensors([logprob_dict(rows[0], 3, 2)], 8)


def test_sample_with_vllm_returns_records_in_job_order_and_repeats(tokenizer, tiny_model_dir, fake_vllm):
    jobs = jobs_for(tokenizer)
    cfg = SampleConfig(max_new_tokens=5)
    first, top_k = sample_with_vllm(str(tiny_model_dir), tokenizer, jobs, cfg, 1, top_k_logprobs=3,
                                    llm=FakeLLM(tokenizer.eos_token_id))
    again, _ = sample_with_vllm(str(tiny_model_dir), tokenizer, jobs, cfg, 1, llm=FakeLLM(tokenizer.eos_token_id))
    other, none = sample_with_vllm(str(tiny_model_dir), tokenizer, jobs, cfg, 2, llm=FakeLLM(tokenizer.eos_token_id))
    assert [(t.question, t.sample_index) for t in first] == [(j["question"], j["sample_index"]) for j in jobs]
    assert first == again and first != other
    assert none is None and len(top_k) == len(jobs)
    for trajectory, (ids, logprobs) in zip(first, top_k):
        assert ids.shape == logprobs.shape == (len(trajectory.completion_ids), 3)
        assert trajectory.finished == (trajectory.completion_ids[-1] == tokenizer.eos_token_id)
        assert len(trajectory.completion_ids) <= cfg.max_new_tokens
    assert {t.finished for t in first} == {True, False}   # the fake produced both kinds; both were converted


def test_vllm_trajectories_round_trip_like_hf_ones(tiny, tiny_model_dir, tmp_path, fake_vllm):
    model, tokenizer = tiny
    jobs = jobs_for(tokenizer, 1)
    cfg = SampleConfig(max_new_tokens=4, sample_batch_size=2)
    hf, _ = sample_trajectories(model, tokenizer, jobs, cfg, 0, progress=False)
    vllm, _ = sample_with_vllm(str(tiny_model_dir), tokenizer, jobs, cfg, 0, llm=FakeLLM(tokenizer.eos_token_id))
    for name, trajectories in (("hf", hf), ("vllm", vllm)):
        path = tmp_path / f"{name}.jsonl"
        write_trajectories(path, trajectories)
        assert read_trajectories(path) == trajectories
    keys = {name: {frozenset(json.loads(line)) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()}
            for name in ("hf", "vllm")}
    assert keys["hf"] == keys["vllm"] == {frozenset(f.name for f in fields(Trajectory))}
    for a, b in zip(hf, vllm):   # same jobs, same types; only the sampled tokens differ
        assert {k: type(v) for k, v in asdict(a).items()} == {k: type(v) for k, v in asdict(b).items()}
        assert all(type(i) is int for i in b.completion_ids)


# --- vLLM stays optional -------------------------------------------------------------------------------------------

def test_promptbake_and_its_cli_do_not_import_vllm(tmp_path):
    """With an importable (fake) vllm on the path, importing promptbake, its CLI and this module leaves it unloaded."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("FAKE = True\n")
    code = ("import sys, promptbake, promptbake.cli, promptbake.vllm_sampler\n"
            "assert 'vllm' not in sys.modules, 'vllm was imported'\n"
            "import vllm\n"
            "assert vllm.FAKE\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_missing_vllm_is_a_one_line_user_error(tokenizer, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)   # `import vllm` raises ImportError, installed or not
    for call in (lambda: sample_with_vllm(str(tiny_model_dir), tokenizer, jobs_for(tokenizer, 1), SampleConfig(), 0),
                 lambda: vllm_sampler.build_engine(str(tiny_model_dir))):
        with pytest.raises(UserError) as error:
            call()
        message = str(error.value)
        assert "pip install 'promptbake[vllm]'" in message and "CUDA" in message
        assert "\n" not in message


def test_bake_with_the_vllm_sampler_fails_in_one_line_before_loading_when_vllm_is_missing(tiny_model_dir, tmp_path,
                                                                                       capsys):
    from conftest import PERSONA, TINY_BAKE_FLAGS
    from promptbake.cli import main

    out = tmp_path / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), "--sampler", "vllm",
                 *TINY_BAKE_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "pip install 'promptbake[vllm]'" in err and err.count("\n") == 1
    assert not out.exists()
