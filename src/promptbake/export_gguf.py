"""`promptbake export`: a bake in GGUF for llama.cpp and the runtimes built on it (llama-cpp-python, ollama, LM Studio).

Two formats:
- `gguf-lora`: the bake's LoRA adapter as a llama.cpp adapter file (general.type "adapter", adapter.type "lora",
  adapter.lora.alpha; tensors `blk.N.attn_q.weight.lora_a` [r, in] and `.lora_b` [out, r] in numpy order), to load
  over the base GGUF with `--lora` / `--lora-scaled FILE A`. llama.cpp scales each pair by
  `user_scale · alpha / rank`; the written alpha and B are chosen so that user scale 1 is exactly the bake.
- `gguf`: the whole merged model as one GGUF, for a GGUF base: the source file's metadata (architecture, tokenizer,
  chat template) is copied, and every tensor the adapter touches is dequantised, merged and re-quantised.

llama.cpp stores the query and key projections of llama models with their rows reordered for its rotary
embedding (the Hugging Face layout rotates halves, llama.cpp adjacent pairs). transformers undoes that order when
it loads a GGUF, so promptbake's adapter is in the Hugging Face order, and lora_b of q_proj / k_proj (the rows) is
reordered here the same way llama.cpp's converter reorders the base weights.

A `--on` chain is one adapter here: the links' pairs are stacked along the rank (Σ Bᵢ Aᵢ = [B₁ B₂][A₁; A₂]), each
with its own scale folded in, so the file reproduces base + every link. A combined bake already is one adapter.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runfolder
from .config import BakeConfig, check_strength, config_from_dict
from .errors import UserError

FORMATS = ("gguf-lora", "gguf")
ADAPTER_QUANTS = ("f32", "f16")
MODEL_QUANTS = ("source", "f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}   # Hugging Face model_type -> GGUF architecture handled here
ROPE_REORDERED = {"llama"}   # GGUF architectures whose q/k rows llama.cpp's converter reorders
EXPORT_RECORD_KEY = "promptbake.export"   # a GGUF metadata key: what was exported, from which run


@dataclass
class LoraPair:
    """One target module's update, delta W = b @ a (scale folded into b). a: [r, in], b: [out, r], float32."""
    a: np.ndarray
    b: np.ndarray


def _qtype(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


def _scale(config: dict, module: str, rank: int) -> float:
    """peft's per-module scale: lora_alpha / r (or / sqrt(r) with rsLoRA); per-module patterns are refused."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError("this adapter sets per-module ranks or alphas (rank_pattern / alpha_pattern); export "
                        "supports one lora_alpha for every module")
    alpha = float(config["lora_alpha"])
    return alpha / (rank ** 0.5 if config.get("use_rslora") else rank)


def read_adapter(adapter_dir: Path, strength: float = 1.0) -> tuple[dict[str, LoraPair], dict]:
    """The adapter in `adapter_dir` as {Hugging Face module name: LoraPair}, scaled by strength, and its config."""
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora") or config.get("fan_in_fan_out"):
        raise UserError(f"{adapter_dir} is not a plain LoRA adapter (DoRA or fan_in_fan_out); llama.cpp adapters "
                        f"are plain LoRA")
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = tensors[key.replace(".lora_A.weight", ".lora_B.weight")]
        scale = _scale(config, module, a.shape[0]) * strength
        pairs[module] = LoraPair(a.astype(np.float32), (b.astype(np.float32) * scale))
    if not pairs:
        raise UserError(f"{adapter_dir} holds no LoRA weights; bake it again")
    return pairs, config


def stack(links: list[dict[str, LoraPair]]) -> dict[str, LoraPair]:
    """The sum of several adapters as one, exactly: pairs of the same module stacked along the rank."""
    out = {}
    for module in dict.fromkeys(m for link in links for m in link):
        pairs = [link[module] for link in links if module in link]
        out[module] = LoraPair(np.concatenate([p.a for p in pairs], 0), np.concatenate([p.b for p in pairs], 1))
    return out


def rope_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection from the Hugging Face rotary layout to llama.cpp's.

    Within each head the Hugging Face order is [first halves of the pairs…, second halves…]; llama.cpp interleaves
    them (pair i at rows 2i, 2i+1). rows: [heads · head_dim, …].
    """
    half = rows.shape[0] // heads // 2
    return rows.reshape(heads, 2, half, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


@dataclass
class ExportPlan:
    """What one export writes: the run's meaning as one adapter over the original base, and where the base is."""
    run: Path
    record: dict
    config: BakeConfig
    pairs: dict[str, LoraPair]
    model_config: dict          # the base's config.json
    architecture: str           # GGUF architecture name
    base_gguf: Path | None      # the source GGUF file, when the base came as one
    links: list[str]            # run folders whose adapters are in `pairs`, first baked first


def plan_export(run_dir: str | Path, checkpoint: str | None = None, strength: float = 1.0) -> ExportPlan:
    """Read a finished run (and the `--on` chain below it) into an ExportPlan; refuses what llama.cpp cannot load."""
    from .base import chain_runs
    from .models import embedded_gguf_path, resolve_model

    run = Path(run_dir)
    record = runfolder.read_finished_bake(run)
    strength = check_strength(strength)
    config = config_from_dict(record["config"], where=str(run / runfolder.BAKE_JSON))
    chain = chain_runs(config)
    adapter = run / (f"{runfolder.CHECKPOINTS}/{checkpoint}" if checkpoint else runfolder.ADAPTER)
    if not (adapter / "adapter_model.safetensors").is_file():
        raise UserError(f"{run} has no checkpoint {checkpoint!r}; pick one in {run / runfolder.CHECKPOINTS}")
    links = [read_adapter(link / runfolder.ADAPTER)[0] for link, _ in chain] + [read_adapter(adapter, strength)[0]]
    source = resolve_model(config.model.name)
    model_config = json.loads((Path(source.folder) / "config.json").read_text(encoding="utf-8"))
    model_type = model_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UserError(f"this bake's base is a {model_type!r} model; GGUF export knows the tensor layout of "
                        f"{', '.join(ARCHITECTURES)} models only (merge it with `promptbake merge` instead)")
    base_gguf = embedded_gguf_path() if source.kind == "embedded" else (
        Path(config.model.name).expanduser().resolve() if source.kind == "gguf" else None)
    return ExportPlan(run, record, config, stack(links), model_config, ARCHITECTURES[model_type], base_gguf,
                      [str(link.resolve()) for link, _ in chain] + [str(run.resolve())])


def gguf_name(tensor_map, module: str) -> str:
    name = tensor_map.get_name(module)
    if name is None:
        raise UserError(f"no GGUF tensor name for module {module!r}; this adapter targets a layer llama.cpp does not "
                        f"map")
    return name + ".weight"


def _heads(plan: ExportPlan, module: str) -> int | None:
    """Heads whose rotary rows to reorder for this module's output (q: attention heads, k: key/value heads)."""
    if plan.architecture not in ROPE_REORDERED:
        return None
    heads = plan.model_config["num_attention_heads"]
    if module.endswith("self_attn.q_proj"):
        return heads
    if module.endswith("self_attn.k_proj"):
        return plan.model_config.get("num_key_value_heads") or heads
    return None


def gguf_delta(plan: ExportPlan, module: str) -> LoraPair:
    """The module's pair with b's rows in llama.cpp's order."""
    pair = plan.pairs[module]
    heads = _heads(plan, module)
    return LoraPair(pair.a, rope_rows(pair.b, heads) if heads else pair.b)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix != ".gguf":
        raise UserError(f"--out {out} must be a file name ending in .gguf")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name ending in .gguf")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out} exists; choose another file or pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out {out} does not exist; create it first")


def _write_atomic(out: Path, fill) -> None:
    """`fill(writer_path)` writes a GGUF to a temporary file beside `out`, which is then renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fill(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _record(plan: ExportPlan, fmt: str, checkpoint: str | None, strength: float, quant: str) -> str:
    return json.dumps({"format": fmt, "run": str(plan.run.resolve()), "checkpoint": checkpoint or "final",
                       "strength": strength, "quant": quant, "links": plan.links,
                       "system_prompt": plan.record["system_prompt"]}, ensure_ascii=False)


def export_lora(plan: ExportPlan, out: Path, quant: str, record: str) -> None:
    """Write plan.pairs as a llama.cpp LoRA adapter GGUF."""
    import gguf

    ranks = {p.a.shape[0] for p in plan.pairs.values()}
    # llama.cpp applies alpha / rank; with one rank everywhere alpha = rank makes that 1 (the scale is in b already).
    alpha = float(next(iter(ranks))) if len(ranks) == 1 else 0.0   # alpha 0: llama.cpp applies the user scale only
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[plan.architecture.upper()],
                                          plan.model_config["num_hidden_layers"])
    dtype = np.float16 if quant == "f16" else np.float32

    def fill(path: str) -> None:
        writer = gguf.GGUFWriter(path, plan.architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_string(EXPORT_RECORD_KEY, record)
        for module in sorted(plan.pairs):
            name = gguf_name(tensor_map, module)
            pair = gguf_delta(plan, module)
            writer.add_tensor(name + ".lora_a", np.ascontiguousarray(pair.a.astype(dtype)))
            writer.add_tensor(name + ".lora_b", np.ascontiguousarray(pair.b.astype(dtype)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _write_atomic(out, fill)


SKIPPED_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", "general.file_type")


def _copy_metadata(reader, writer, record: str) -> None:
    import gguf

    for key, field in reader.fields.items():
        if key in SKIPPED_KEYS or key == EXPORT_RECORD_KEY:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_string(EXPORT_RECORD_KEY, record)


def export_merged(plan: ExportPlan, out: Path, quant: str, record: str) -> float:
    """Write base + adapter as one GGUF with the source file's metadata.

    Returns:
        The share of the adapter's weight change that survives the written tensor type: Σ⟨W_out − W_src, ΔW⟩ / Σ‖ΔW‖²
        over the merged tensors (1 = all of it; a 4-bit type rounds most of a small bake's change away).
    """
    import gguf
    from gguf.quants import dequantize, quantize

    if plan.base_gguf is None:
        raise UserError("--format gguf needs a bake on a GGUF base (the embedded model or --model FILE.gguf); this "
                        "one is a Hugging Face model, and no maintained Hugging Face → GGUF converter is on PyPI: "
                        "use --format gguf-lora with a GGUF of the base, or `promptbake merge` and llama.cpp's "
                        "convert_hf_to_gguf.py")
    reader = gguf.GGUFReader(plan.base_gguf)
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[plan.architecture.upper()],
                                          plan.model_config["num_hidden_layers"])
    targets = {gguf_name(tensor_map, module): module for module in plan.pairs}
    missing = sorted(set(targets) - {t.name for t in reader.tensors})
    if missing:
        raise UserError(f"{plan.base_gguf} has no tensor {missing[0]} that the adapter changes; export the adapter "
                        f"(--format gguf-lora) for the base it was baked on")
    source_type = next(t.tensor_type for t in reader.tensors if t.name in targets)   # the type of the merged weights
    kept = [0.0, 0.0]   # Σ⟨written − source, delta⟩, Σ‖delta‖²

    def convert(tensor):
        """(array, raw dtype) to write for one source tensor."""
        kind = tensor.tensor_type
        merge = tensor.name in targets
        # Vectors (norms) stay float32; every other tensor gets --quant, or keeps its own type with "source".
        want = kind if quant == "source" or kind == gguf.GGMLQuantizationType.F32 else _qtype(quant)
        if not merge and want == kind:
            return tensor.data, kind
        source = dequantize(tensor.data, kind).astype(np.float32)   # [out, in]
        delta = 0
        if merge:
            pair = gguf_delta(plan, targets[tensor.name])
            delta = pair.b @ pair.a
        if want in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = (source + delta).astype(np.float32 if want == gguf.GGMLQuantizationType.F32 else np.float16)
            written = data.astype(np.float32)
        else:
            data = quantize(source + delta, want)
            written = dequantize(data, want)
        if merge:
            kept[0] += float(((written - source) * delta).sum())
            kept[1] += float((delta * delta).sum())
        return data, want

    def fill(path: str) -> None:
        writer = gguf.GGUFWriter(path, plan.architecture)
        _copy_metadata(reader, writer, record)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
                     "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
                     "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}.get(quant if quant != "source" else
                                                                  source_type.name.lower())
        if file_type is not None:
            writer.add_file_type(file_type)
        for tensor in reader.tensors:
            data, kind = convert(tensor)
            if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) and data.dtype != np.uint8:
                writer.add_tensor(tensor.name, np.ascontiguousarray(data))
            else:
                writer.add_tensor(tensor.name, np.ascontiguousarray(data), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _write_atomic(out, fill)
    return kept[0] / kept[1] if kept[1] else 1.0


def export_run(run_dir: str | Path, fmt: str, out: str | Path, checkpoint: str | None = None, strength: float = 1.0,
               quant: str | None = None, overwrite: bool = False) -> tuple[Path, float | None]:
    """Export a finished bake as GGUF (see the module docstring).

    Args:
        fmt: "gguf-lora" (an adapter for the base GGUF) or "gguf" (the merged model, GGUF bases only).
        strength: the adapter scale baked into the file (the last link of a chain only; earlier links stay at 1).
        quant: gguf-lora: f32 (default) or f16; gguf: source (default: the source file's own types), f32, f16,
            q8_0, q5_1, q5_0, q4_1, q4_0.
    Returns:
        The written file, and for `gguf` the share of the weight change its tensor type kept (export_merged).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    allowed = ADAPTER_QUANTS if fmt == "gguf-lora" else MODEL_QUANTS
    quant = (quant or allowed[0]).lower()
    if quant not in allowed:
        raise UserError(f"--quant {quant!r} does not fit --format {fmt}; choose one of {', '.join(allowed)}")
    out = Path(out)
    _check_out(out, overwrite)
    plan = plan_export(run_dir, checkpoint, strength)
    record = _record(plan, fmt, checkpoint, check_strength(strength), quant)
    if fmt == "gguf-lora":
        export_lora(plan, out, quant, record)
        return out, None
    return out, export_merged(plan, out, quant, record)
