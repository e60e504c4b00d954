"""Exports loaded by a real llama.cpp (llama-cpp-python, `make test-llamacpp`; `make test` leaves these out).

A short bake on the embedded SmolLM2 GGUF, exported at strength 4 so the adapter moves the distribution far more
than llama.cpp's quantised kernels do: llama.cpp with the adapter GGUF (and the merged GGUF) must agree with
promptbake's baked model about as well as the two runtimes agree on the base model, and far better than llama.cpp
without the adapter. Every comparison evaluates whole sequences in one prompt batch (n_batch 512), the path that
crashed in a native build on a CPU with AMX.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from promptbake.cli import main

pytestmark = pytest.mark.llamacpp
STRENGTH = 4.0


@pytest.fixture(scope="module")
def exported(smol_bake_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    files = {"adapter": folder / "adapter.gguf", "merged": folder / "merged.gguf"}
    assert main(["export", str(smol_bake_dir), "--format", "gguf-lora", "--out", str(files["adapter"]),
                 "--strength", str(STRENGTH)]) == 0
    assert main(["export", str(smol_bake_dir), "--format", "gguf", "--out", str(files["merged"]), "--quant", "f16",
                 "--strength", str(STRENGTH)]) == 0
    return files


@pytest.fixture(scope="module")
def heldout_and_baked(smol_bake_dir):
    from promptbake.baked import load_baked
    from promptbake.data import read_trajectories

    trajectories = read_trajectories(smol_bake_dir / "trajectories.jsonl")
    # Train and held-out alike: what is compared is two runtimes on the same sequences, not generalisation.
    return trajectories[:6], load_baked(smol_bake_dir, strength=STRENGTH)


def _compare(baked, model, trajectories, adapter=True, lora=None, scale=1.0) -> dict:
    from promptbake.llamacpp import compare, load_llama

    llama = load_llama(model, lora, scale)
    try:
        return compare(baked, llama, trajectories, adapter)
    finally:
        llama.close()


def test_llama_cpp_applies_the_exported_adapter_and_merge(exported, heldout_and_baked):
    from promptbake.models import embedded_gguf_path

    trajectories, baked = heldout_and_baked
    base = embedded_gguf_path()
    baked.with_strength(STRENGTH)
    runtimes = _compare(baked, base, trajectories, adapter=False)        # same weights, two runtimes
    ignored = _compare(baked, base, trajectories)                         # the adapter left out
    with_adapter = _compare(baked, base, trajectories, lora=exported["adapter"])
    merged = _compare(baked, exported["merged"], trajectories)
    assert runtimes["tokens"] > 20 and runtimes["kl"] < 0.05, runtimes
    assert ignored["kl"] > 20 * runtimes["kl"], (ignored, runtimes)
    for result in (with_adapter, merged):
        assert result["kl"] < 3 * runtimes["kl"] + 0.01, (result, runtimes, ignored)
        assert result["top1"] > 0.9, result
    # llama.cpp's own scale (lora_scale, --lora-scaled) is promptbake's strength: half of 4 is strength 2.
    baked.with_strength(STRENGTH / 2)
    half = _compare(baked, base, trajectories, lora=exported["adapter"], scale=0.5)
    assert half["kl"] < 3 * runtimes["kl"] + 0.01, half


def test_llama_cpp_server_serves_the_adapter(exported):
    """llama_cpp.server with the adapter answers an OpenAI-style chat request as llama-cpp-python does in-process
    with the same adapter (greedy), and differently from the base without it.

    Only the opening words are compared: the server's context runs other batch shapes, and after a near-tie two
    greedy decodings of the same model may part (seen here after eight words).
    """
    from promptbake.llamacpp import load_llama
    from promptbake.models import embedded_gguf_path

    base = embedded_gguf_path()
    messages = [{"role": "user", "content": "What is your name?"}]
    expected = {}
    for label, lora in (("adapter", exported["adapter"]), ("base", None)):
        llama = load_llama(base, lora)
        try:
            reply = llama.create_chat_completion(messages=messages, temperature=0, max_tokens=24)
            expected[label] = reply["choices"][0]["message"]["content"]
        finally:
            llama.close()
    opening = {label: reply.split()[:5] for label, reply in expected.items()}
    assert opening["adapter"] != opening["base"], expected
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(base), "--lora_path",
                               str(exported["adapter"]), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "llama_cpp.server did not start"
                time.sleep(0.5)
        body = json.dumps({"messages": messages, "temperature": 0, "max_tokens": 24}).encode()
        request = urllib.request.Request(f"{url}/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        server.terminate()
        server.wait(30)
    served = answer["choices"][0]["message"]["content"]
    assert served.split()[:5] == opening["adapter"], (served, expected)


def test_llama_cpp_applies_a_qwen2_adapter(tmp_path):
    """A second GGUF architecture (qwen2: no q/k row reordering): a tiny Qwen2 written as GGUF, baked, its adapter
    exported and loaded by llama.cpp agrees with promptbake as the two runtimes agree on the base."""
    from families import build_family, write_qwen2_gguf

    from conftest import PERSONA, TINY_BAKE_FLAGS
    from promptbake.baked import load_baked
    from promptbake.data import read_trajectories

    base = write_qwen2_gguf(build_family("qwen2", tmp_path / "qwen2"), tmp_path / "tiny-qwen2.gguf")
    run = tmp_path / "run"
    flags = list(TINY_BAKE_FLAGS)
    flags[flags.index("--epochs") + 1] = "3"
    assert main(["bake", "--prompt", PERSONA, "--model", str(base), "--out", str(run), "--compare", "0",
                 "--questions", "builtin", "--learning-rate", "0.02", *flags]) == 0
    adapter = tmp_path / "adapter.gguf"
    assert main(["export", str(run), "--format", "gguf-lora", "--out", str(adapter), "--strength", "4"]) == 0
    baked = load_baked(run, strength=4)
    trajectories = read_trajectories(run / "trajectories.jsonl")[:4]
    runtimes = _compare(baked, base, trajectories, adapter=False)
    ignored = _compare(baked, base, trajectories)
    with_adapter = _compare(baked, base, trajectories, lora=adapter)
    assert ignored["kl"] > 10 * max(runtimes["kl"], 1e-4), (ignored, runtimes)
    assert with_adapter["kl"] < 3 * runtimes["kl"] + 0.01, (with_adapter, runtimes, ignored)
