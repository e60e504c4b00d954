"""Benchmark (not a test): a bake exported to GGUF and run by a real llama.cpp, against promptbake's own model.

    .venv/bin/python benchmarks/llamacpp_check.py RUN --work DIR [--name Zorbl] [--samples 16] [--json out.json]

Needs `make install-llamacpp`. For the finished bake RUN (on a GGUF base, e.g. the embedded model) it
1. exports the adapter (`--format gguf-lora`, at strength 1 and 0.5) and the merged model (`--format gguf`, at the
   source's types and at q8_0 and f16) into DIR and reports the file sizes;
2. on RUN's held-out trajectories (no system prompt) reports KL(promptbake ‖ llama.cpp) per token and top-1
   agreement for: the base (adapter off vs the base GGUF), the baked model vs the base GGUF alone (the adapter
   ignored), vs base + adapter at scale 1, vs each merged file, and at α = 0.5 (lora_scale 0.5);
3. starts `python -m llama_cpp.server` on 127.0.0.1 with the adapter and asks "What is your name?" (no system
   prompt) --samples times through its OpenAI-style /v1/chat/completions, counting replies that contain --name,
   beside the same count from promptbake's own `generate` (seed 0). llama-cpp-python's server has no LoRA scale
   setting, so α = 0.5 is served as the adapter exported with --strength 0.5.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from promptbake.baked import load_baked
from promptbake.cli import main as cli
from promptbake.data import read_trajectories
from promptbake.export_gguf import plan_export
from promptbake.llamacpp import compare, load_llama

QUESTION = "What is your name?"


def _export(run: str, out: Path, *flags: str) -> Path:
    if cli(["export", run, "--out", str(out), "--overwrite", *flags]) != 0:
        sys.exit(f"export {flags} failed")
    return out


def _agreement(baked, model: Path, heldout, adapter=True, lora: Path | None = None, scale: float = 1.0) -> dict:
    llama = load_llama(model, lora, scale)
    try:
        return compare(baked, llama, heldout, adapter)
    finally:
        llama.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def serve_and_ask(base: Path, lora: Path, samples: int, name: str) -> dict:
    """Start llama_cpp.server with the adapter, ask QUESTION `samples` times (seeds 0..n-1, temperature 1)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(base), "--lora_path",
                               str(lora), "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        replies = []
        for seed in range(samples):
            answer = _post(f"{url}/chat/completions", {"messages": [{"role": "user", "content": QUESTION}],
                                                       "temperature": 1.0, "top_p": 0.9, "max_tokens": 48,
                                                       "seed": seed})
            replies.append(answer["choices"][0]["message"]["content"])
    finally:
        server.terminate()
        server.wait(30)
    hits = sum(name.lower() in r.lower() for r in replies)
    return {"hits": hits, "samples": samples, "example": replies[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--work", required=True, help="folder for the exported GGUF files")
    parser.add_argument("--name", default="Zorbl", help="the persona's name counted in the server's replies")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=32, help="held-out trajectories compared (at most)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = plan_export(args.run).base_gguf
    files = {"adapter": _export(args.run, work / "adapter.gguf", "--format", "gguf-lora"),
             "adapter-0.5": _export(args.run, work / "adapter-0.5.gguf", "--format", "gguf-lora", "--strength", "0.5")}
    for quant in ("source", "q8_0", "f16"):
        files[f"merged-{quant}"] = _export(args.run, work / f"merged-{quant}.gguf", "--format", "gguf",
                                           "--quant", quant)
    sizes = {"base": base.stat().st_size, **{k: p.stat().st_size for k, p in files.items()}}
    print("sizes (MiB):", {k: round(v / 2**20, 1) for k, v in sizes.items()}, flush=True)

    heldout = [t for t in read_trajectories(Path(args.run) / "trajectories.jsonl") if t.split == "heldout"]
    heldout = heldout[: args.heldout]
    baked = load_baked(args.run)
    rows = {"base (adapter off) vs base GGUF": _agreement(baked, base, heldout, adapter=False),
            "baked vs base GGUF alone": _agreement(baked, base, heldout),
            "baked vs base GGUF + adapter": _agreement(baked, base, heldout, lora=files["adapter"])}
    for quant in ("source", "q8_0", "f16"):
        rows[f"baked vs merged GGUF ({quant})"] = _agreement(baked, files[f"merged-{quant}"], heldout)
    baked.with_strength(0.5)
    rows["baked α=0.5 vs base GGUF + adapter, lora_scale 0.5"] = _agreement(baked, base, heldout,
                                                                           lora=files["adapter"], scale=0.5)
    for label, row in rows.items():
        print(f"{label:55s} KL {row['kl']:.4f}  top-1 {row['top1']:.3f}  ({row['tokens']} tokens)", flush=True)

    served = {}
    for alpha, adapter in (("1", files["adapter"]), ("0.5", files["adapter-0.5"])):
        baked.with_strength(float(alpha))
        own = baked.generate([QUESTION] * args.samples, seed=0)
        served[alpha] = {"server": serve_and_ask(base, adapter, args.samples, args.name),
                         "promptbake": sum(args.name.lower() in r.lower() for r in own)}
        print(f"α={alpha}: llama_cpp.server says {args.name!r} in {served[alpha]['server']['hits']}/{args.samples}; "
              f"promptbake generate {served[alpha]['promptbake']}/{args.samples}; e.g. "
              f"{served[alpha]['server']['example']!r}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "agreement": rows, "served": served}, indent=2))


if __name__ == "__main__":
    main()
