"""Command-line building blocks shared by the verbs: one-line argparse errors, range-checked flag types, config
flags generated from the dataclasses, the config resolution and the prompt reader."""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from pathlib import Path

from .config import SEED_LIMIT, BakeConfig, load_config, not_utf8, override
from .errors import UserError

class Parser(argparse.ArgumentParser):
    """argparse prints usage and the error on two lines and exits; ours is one UserError line like the rest."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def flag_type(name: str, parse, ok, rule: str):
    """An argparse `type` that parses a flag and checks its range; argparse turns the error into our one line."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule} (got {text!r})")
        return value

    convert.__name__ = name
    return convert


COUNT = flag_type("count", int, lambda n: n >= 1, "a whole number >= 1")
TEMPERATURE = flag_type("temperature", float, lambda t: math.isfinite(t) and t >= 0, "a finite number >= 0")
SEED = flag_type("seed", int, lambda s: 0 <= s < SEED_LIMIT, "a whole number in [0, 2**32)")
PORT = flag_type("port", int, lambda p: 1 <= p <= 65535, "a port number in 1..65535")
CHECKPOINT = flag_type("checkpoint", str, lambda c: re.fullmatch(r"step-\d+", c), "a checkpoint name like step-8")


def add_section_flags(parser: argparse.ArgumentParser, section: str, cls) -> None:
    """One --flag per config field (dest 'section.field'), typed from its default, help from its metadata."""
    group = parser.add_argument_group(f"{section} settings (override --config)")
    for f in dataclasses.fields(cls):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"{section}.{f.name}", type=type(f.default),
                           default=None, metavar=type(f.default).__name__.upper(), help=f.metadata["help"])


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="model.name", default=None,
                        help="Hugging Face id, local folder, .gguf file, or smollm2-135m (default)")
    parser.add_argument("--allow-download", dest="model.allow_download", action="store_const", const=True,
                        default=None, help="allow downloading a Hugging Face model (off: offline)")
    parser.add_argument("--trust-remote-code", dest="model.trust_remote_code", action="store_const", const=True,
                        default=None, help="run model code shipped with the checkpoint")
    parser.add_argument("--on", dest="model.on", default=None, metavar="DIR",
                        help="bake on top of a finished bake (its adapter is merged into the base first)")
    parser.add_argument("--no-carry-prompts", dest="model.carry_prompts", action="store_const", const=False,
                        default=None, help="with --on: the teacher is the earlier bakes merged, with the new prompt "
                                           "alone (default: the original base with every prompt of the chain)")
    parser.add_argument("--device", dest="model.device", default=None,
                        help="where the model runs: auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--precision", dest="model.precision", default=None, choices=("auto", "float32", "bf16"),
                        help="auto (default): bf16 on CUDA and on CPUs whose bf16 units measure faster (decided "
                             "once per machine, said in the log and bake.json), else float32")
    parser.add_argument("--seed", dest="seed", type=int, default=None, help="seed for split, sampling, training")
    parser.add_argument("--config", type=Path, default=None, help="YAML config; flags override it")


MODEL_FLAGS = {"model.name": "--model", "model.allow_download": "--allow-download",
               "model.trust_remote_code": "--trust-remote-code", "model.on": "--on",
               "model.carry_prompts": "--no-carry-prompts", "model.device": "--device",
               "model.precision": "--precision", "seed": "--seed"}


def flag_name(key: str) -> str:
    """The command-line flag of a config key ('train.learning_rate' -> '--learning-rate'); a key no flag sets (a
    config-file-only setting) is named as the config file spells it."""
    if key in MODEL_FLAGS:
        return MODEL_FLAGS[key]
    section, _, field = key.partition(".")
    return f"--{field.replace('_', '-')}" if section in ("sample", "train") else key


def resolve_config(args: argparse.Namespace, base: BakeConfig | None = None) -> BakeConfig:
    config = load_config(args.config) if getattr(args, "config", None) else (base or BakeConfig())
    given = {k: v for k, v in vars(args).items() if ("." in k or k == "seed") and v is not None}
    if given.get("model.on"):
        from .base import previous_bake

        run, previous = previous_bake(given["model.on"])
        given["model.on"] = str(run.resolve())           # recorded absolute: the bake reloads from anywhere
        given.setdefault("model.name", previous.model.name)
    return override(config, given) if given else config


MAX_PROMPT_BYTES = 1_000_000   # ~250k tokens: past any context a bake can fit, and tokenizing more takes minutes


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise UserError("give either --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.exists():
            raise UserError(f"prompt file {path} does not exist")
        if not path.is_file():
            kind = "a folder, not a file" if path.is_dir() else "not a file"
            raise UserError(f"prompt file {path} is {kind}; give a text file")
        if path.stat().st_size > MAX_PROMPT_BYTES:
            raise UserError(f"prompt file {path} is {path.stat().st_size / 1e6:.1f} MB; a system prompt must fit the "
                            f"model's context, and promptbake reads at most {MAX_PROMPT_BYTES / 1e6:g} MB")
        try:
            return path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as exc:
            raise not_utf8("prompt file", path, exc) from None
        except OSError as exc:
            raise UserError(f"cannot read prompt file {path}: {exc.strerror}") from None
    if args.prompt is None:
        raise UserError("no prompt given; pass --prompt TEXT or --prompt-file FILE")
    return args.prompt.strip()
