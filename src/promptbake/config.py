"""Typed configuration: one dataclass per stage, a help line per field, validation that names the fix.

A bake's resolved config is saved as YAML in the run folder and can be loaded back with `load_config`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


SEED_LIMIT = 2**32   # torch seeds are 64-bit, and sampling derives seeds ~10^5 times larger from this one


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 4, 3, 2


def show(value: Any) -> str:
    """A value for an error message: repr, cut to one short line (a pasted file must not become the message)."""
    return _short.repr(value)


def _help(text: str, default: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ModelConfig:
    name: str = _help("Hugging Face id, local folder, .gguf file, or 'smollm2-135m' (embedded default)", "smollm2-135m")
    allow_download: bool = _help("let a Hugging Face id be downloaded (off: offline, local cache only)", False)
    trust_remote_code: bool = _help("run model code shipped with the checkpoint (only for models you trust)", False)
    on: str = _help("sequential baking: a finished run folder whose adapter is merged into the base first", "")
    carry_prompts: bool = _help("with `on`: the teacher is the original base model with every prompt of the chain, in "
                                "baking order (false: the merged earlier bakes with the new prompt alone)", True)
    device: str = _help("where the model runs: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'",
                        "auto")
    precision: str = _help("'auto' (bf16 on CUDA, and on CPUs whose bf16 units measure faster; float32 elsewhere), "
                           "'float32', or 'bf16' (frozen base weights resident in bf16; LoRA, optimizer and "
                           "divergences float32; slow on CPUs without bf16 units)", "auto")

    def problems(self) -> list[str]:
        from .precision import DEVICES, PRECISIONS, valid_device

        out = [] if self.name.strip() else ["model.name is empty: give a model id, folder, .gguf file or smollm2-135m"]
        if not valid_device(self.device):
            out.append(f"model.device must be {DEVICES} (got {show(self.device)})")
        if self.precision not in PRECISIONS:
            out.append(f"model.precision must be one of {', '.join(PRECISIONS)} (got {show(self.precision)})")
        return out


@dataclass
class SampleConfig:
    questions: str = _help("question source: 'auto' (questions aimed at the prompt, generated and ranked, mixed with "
                           "the builtin pool), 'builtin', 'arithmetic' (word problems), a task family ('addition', "
                           "'sentiment', ...: its train side; docs/accuracy.md), a .txt file (one per line) or "
                           ".jsonl with a 'question' field (and, optionally, 'split': train or heldout)", "auto")
    targeted_fraction: float = _help("auto: share of the training and held-out questions aimed at the prompt (the rest "
                                     "come from the builtin general pool)", 0.5)
    question_model: str = _help("auto: the model that writes candidate questions (default '': the base model itself); "
                                "a model id, folder or .gguf file like --model", "")
    general_teacher: str = _help("teacher of the general (builtin-pool) training questions: 'prompted' (the base "
                                 "model with the prompt, default) or 'base' (the base model without it: the bake "
                                 "learns the prompt's content and keeps the model's other answers, for a fact or "
                                 "news prompt; not for a style prompt, which should change every answer)",
                                 "prompted")
    train_questions: int = _help("questions used for training (drawn with the seed)", 128)
    heldout_questions: int = _help("questions held out for the closure metric, never trained on", 16)
    trajectories_per_question: int = _help("teacher samples per training question (0: auto, 2 where the model runs "
                                           "in bf16, else 1, and 1 for a greedy teacher)", 0)
    heldout_trajectories_per_question: int = _help("teacher samples per held-out question", 2)
    turns: int = _help("assistant turns per training dialogue: 1 = single answers; N > 1 continues every training "
                       "question with a simulated user for N teacher answers, each trained on (held-out stays "
                       "single-turn)", 1)
    turn_prompt: str = _help("with --turns: where the teacher of turns 2..N sees the system prompt: 'repeated' (at the "
                             "start and again before the user's latest message, so it keeps the prompt deep in a "
                             "dialogue) or 'start' (only at the start, where it recedes as the dialogue grows)",
                             "repeated")
    sampling_temperature: float = _help("teacher sampling temperature (0 = greedy)", 1.0)
    top_p: float = _help("nucleus sampling threshold (1.0 = full distribution)", 0.9)
    max_new_tokens: int = _help("longest trajectory, in tokens (end-of-turn token included)", 48)
    sample_batch_size: int = _help("most sequences generated together (the jobs are cut into even batches)", 96)
    sampler: str = _help("'hf' (transformers generate, here) or 'vllm' (a vLLM engine: pip install "
                         "'promptbake[vllm]', CUDA; seeds per trajectory, so its samples differ from hf's)", "hf")

    def problems(self) -> list[str]:
        out = []
        for name in ("train_questions", "heldout_questions", "heldout_trajectories_per_question", "max_new_tokens",
                     "sample_batch_size", "turns"):
            if getattr(self, name) < 1:
                out.append(f"sample.{name} must be >= 1 (got {show(getattr(self, name))})")
        if self.trajectories_per_question < 0:
            out.append(f"sample.trajectories_per_question must be >= 1, or 0 for auto "
                       f"(got {show(self.trajectories_per_question)})")
        if self.sampling_temperature < 0:
            out.append(f"sample.sampling_temperature must be >= 0 (got {show(self.sampling_temperature)})")
        if not 0 < self.top_p <= 1:
            out.append(f"sample.top_p must be in (0, 1] (got {show(self.top_p)})")
        if not 0 < self.targeted_fraction <= 1:
            out.append(f"sample.targeted_fraction must be in (0, 1] (got {show(self.targeted_fraction)}); "
                       f"for the general pool alone use --questions builtin")
        if self.question_model and self.questions != "auto":
            out.append(f"sample.question_model is used only with --questions auto (questions is "
                       f"{show(self.questions)}); drop --question-model or use --questions auto")
        if self.general_teacher not in ("prompted", "base"):
            out.append(f"sample.general_teacher must be prompted or base (got {show(self.general_teacher)})")
        elif self.general_teacher == "base" and self.questions == "auto" and self.targeted_fraction == 1:
            out.append("sample.general_teacher base needs general questions, and targeted_fraction 1 leaves none; "
                       "lower --targeted-fraction or drop --general-teacher")
        elif self.general_teacher == "base" and self.turns > 1:
            out.append("sample.general_teacher base needs single-turn trajectories: a dialogue's later turns are "
                       "answered by the prompted teacher; drop --turns or --general-teacher")
        if self.sampler not in ("hf", "vllm"):
            out.append(f"sample.sampler must be hf or vllm (got {self.sampler!r})")
        if self.turn_prompt not in ("repeated", "start"):
            out.append(f"sample.turn_prompt must be repeated or start (got {show(self.turn_prompt)})")
        return out


def layer_range(text: str) -> tuple[int, int] | str | None:
    """'all' → 'all'; 'FIRST-LAST' → (FIRST, LAST); anything else → None."""
    if str(text).strip() == "all":
        return "all"
    first, _, last = str(text).partition("-")
    if not (first.strip().isdigit() and last.strip().isdigit()) or int(first) > int(last):
        return None
    return int(first), int(last)


@dataclass
class TrainConfig:
    lora_r: int = _help("LoRA rank", 8)
    lora_alpha: float = _help("LoRA alpha (scale = alpha / r)", 16.0)
    lora_dropout: float = _help("LoRA dropout", 0.0)
    target_modules: str = _help("modules that get LoRA: 'all-linear' (decoder blocks) or comma-separated names", "all-linear")
    lora_layers: str = _help("decoder layers that get LoRA: 'all', or 'FIRST-LAST' (0-based, inclusive, e.g. 12-29); "
                             "the backward pass stops at the lowest one", "all")
    learning_rate: float = _help("AdamW peak learning rate (reached after warm-up)", 1e-3)
    lr_schedule: str = _help("after warm-up: 'constant', or 'cosine' decay to 0 by the last step", "constant")
    warmup_steps: int = _help("linear warm-up steps", 4)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    epochs: int = _help("passes over the training trajectories", 1)
    targeted_passes: int = _help("times each epoch trains the trajectories of the questions aimed at the prompt "
                                 "(--questions auto's targeted share; the general ones once): what the prompt says "
                                 "is in few of the teacher's tokens, and a second pass is what bakes it", 2)
    batch_size: int = _help("trajectories per optimizer step (0: auto, 2 per teacher sample of a question: 4 with 2 "
                            "samples, 2 with 1)", 0)
    micro_batch_tokens: int = _help("padded tokens per forward pass (gradient accumulation splits a step)", 3072)
    max_grad_norm: float = _help("gradient clipping norm (0 = off)", 1.0)
    on_policy: float = _help("share of training steps that train on the student's own answers (sampled with the "
                             "sample settings, scored by the teacher at that step; GKD's λ); 0: the teacher's samples "
                             "only", 0.0)
    kl_direction: str = _help("'forward' KL(teacher||student), 'reverse' KL(student||teacher), or 'jsd'", "forward")
    teacher_cache_gb: float = _help("keep the teacher's logits in memory when they fit in this many GB, so "
                                    "training runs no teacher pass (0: recompute the teacher every step)", 3.0)
    teacher_top_k: int = _help("cache the teacher as its top-k log-probabilities plus an exact tail bucket (0: "
                               "full-vocabulary logits); the loss stays a true KL, memory is ~12·k bytes a token", 256)
    checkpoint_every: int = _help("save checkpoints/step-N every N steps (0 = off)", 32)
    start_adapter: str = _help("start the LoRA from this saved adapter folder instead of zero (set by `promptbake "
                               "combine`, which starts from the exact sum of the bakes it combines)", "")
    eval_every: int = _help("measure the held-out KL every N steps (0: only before and after training; `promptbake "
                            "strength` measures every checkpoint)", 0)

    def problems(self) -> list[str]:
        out = []
        for name in ("lora_r", "epochs", "micro_batch_tokens", "targeted_passes"):
            if getattr(self, name) < 1:
                out.append(f"train.{name} must be >= 1 (got {show(getattr(self, name))})")
        if self.batch_size < 0:
            out.append(f"train.batch_size must be >= 1, or 0 for auto (got {show(self.batch_size)})")
        for name in ("warmup_steps", "checkpoint_every", "eval_every", "teacher_cache_gb", "teacher_top_k"):
            if getattr(self, name) < 0:
                out.append(f"train.{name} must be >= 0 (got {show(getattr(self, name))})")
        if self.learning_rate <= 0:
            out.append(f"train.learning_rate must be > 0 (got {show(self.learning_rate)})")
        if not 0 <= self.lora_dropout < 1:
            out.append(f"train.lora_dropout must be in [0, 1) (got {show(self.lora_dropout)})")
        if layer_range(self.lora_layers) is None:
            out.append(f"train.lora_layers must be 'all' or FIRST-LAST with 0 <= FIRST <= LAST, e.g. 12-29 "
                       f"(got {show(self.lora_layers)})")
        if not 0 <= self.on_policy <= 1:
            out.append(f"train.on_policy must be in [0, 1] (got {show(self.on_policy)})")
        if self.lr_schedule not in ("constant", "cosine"):
            out.append(f"train.lr_schedule must be constant or cosine (got {show(self.lr_schedule)})")
        if self.kl_direction not in ("forward", "reverse", "jsd"):
            out.append(f"train.kl_direction must be forward, reverse or jsd (got {show(self.kl_direction)})")
        return out


@dataclass
class BakeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = _help("seed for the question split, sampling, data order and LoRA init", 0)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        problems = self.model.problems() + self.sample.problems() + self.train.problems()
        if self.train.on_policy and self.model.on and self.model.carry_prompts:
            problems.append("train.on_policy cannot be used with --on carrying the chain's prompts: their teacher "
                            "is the original base model, which is not in memory while training; pass "
                            "--no-carry-prompts or drop --on-policy")
        if self.sample.general_teacher == "base" and self.train.on_policy:
            problems.append("sample.general_teacher base cannot be used with --on-policy: the prompted teacher "
                            "scores the student's own answers to every question; drop one of them")
        if self.sample.general_teacher == "base" and self.model.on and self.model.carry_prompts:
            problems.append("sample.general_teacher base cannot be used with --on carrying the chain's prompts: the "
                            "unprompted teacher would be the original base and unteach the earlier bakes; pass "
                            "--no-carry-prompts or drop --general-teacher")
        if not 0 <= self.seed < SEED_LIMIT:
            problems.append(f"seed must be in [0, 2**32) (got {show(self.seed)})")
        if problems:
            raise UserError("invalid config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "sample": SampleConfig, "train": TrainConfig}


@dataclass
class EvalConfig:
    """Settings of `promptbake eval` (not part of a bake's config; None means "the suite's or the file's default")."""
    probes: str | None = _help("judges/drift: YAML probe file (see examples/persona_probes.yaml)", None)
    knowledge: str | None = _help("knowledge: YAML file of questions with expected answers", None)
    locality: str = _help("knowledge: locality control, 'builtin', 'none' or a YAML file like knowledge's", "builtin")
    samples: int | None = _help("judges/knowledge: replies per probe and condition", None)
    temperature: float | None = _help("judges/knowledge/drift: sampling temperature (default: the bake's)", None)
    turns: int = _help("drift: assistant turns per self-chat", 8)
    dialogues: int = _help("drift: self-chats per condition, each on its own topic", 8)
    problems: int = _help("cot / accuracy / the promptbake_* benchmark tasks: problems to score", 200)
    task: str | None = _help("accuracy: task family (addition, subtraction, comparison, sequence, conversion, "
                             "sentiment; see docs/accuracy.md)", None)
    max_new_tokens: int | None = _help("accuracy / the promptbake_* benchmark tasks: reply length limit "
                                       "(default 96)", None)
    questions: int = _help("samples: held-out questions answered side by side", 4)
    tasks: str = _help("benchmarks: comma-separated lm-eval task names", "")
    limit: int | None = _help("benchmarks: examples per task (None: all)", None)
    include_path: str | None = _help("benchmarks: folder of extra lm-eval task YAML files", None)
    allow_code_execution: bool = _help("benchmarks: let code tasks (mbpp) run model-written code", False)
    seed: int = _help("sampling seed of every suite", 0)

    def __post_init__(self) -> None:
        bad = [f"{name} must be >= 1 (got {show(getattr(self, name))})" for name in
               ("samples", "turns", "dialogues", "problems", "questions", "limit", "max_new_tokens")
               if getattr(self, name) is not None and getattr(self, name) < 1]
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature >= 0):
            bad.append(f"temperature must be a finite number >= 0 (got {show(self.temperature)})")
        if not 0 <= self.seed < SEED_LIMIT:
            bad.append(f"seed must be in [0, 2**32) (got {show(self.seed)})")
        if bad:
            raise UserError("bad eval settings: " + "; ".join(bad))


def _suggest(key: str, valid: list[str]) -> str:
    home = [name for name, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if home:                                        # a real setting, in the wrong place
        return f" (it belongs under {home[0]}:)"
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(valid)})"


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(where: str, value: Any, default: Any) -> Any:
    """Check a YAML/CLI value against the type of the field's default; floats must be finite."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:        # an int too large for a float
                number = math.inf
            if not math.isfinite(number):
                raise UserError(f"{where} must be a finite number (got {show(value)})")
            return number
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{where} must be {_KIND_NAMES[kind]} (got {show(value)})")


def config_from_dict(data: dict, where: str = "config") -> BakeConfig:
    """Build a BakeConfig from nested dicts ({model: {...}, sample: {...}, train: {...}, seed: N})."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping with sections {', '.join(SECTIONS)} (got {type(data).__name__})")
    top_valid = list(SECTIONS) + ["seed"]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in top_valid:
            raise UserError(f"{where}: unknown key {show(key)}{_suggest(str(key), top_valid)}")
        if key == "seed":
            kwargs["seed"] = _coerce(f"{where}: seed", value, 0)
            continue
        cls = SECTIONS[key]
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise UserError(f"{where}: section {key!r} must be a mapping (got {show(value)})")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        section = {}
        for sub, subvalue in value.items():
            if sub not in defaults:
                raise UserError(f"{where}: unknown key {show(f'{key}.{sub}')}{_suggest(str(sub), list(defaults))}")
            section[sub] = _coerce(f"{where}: {key}.{sub}", subvalue, defaults[sub])
        kwargs[key] = cls(**section)
    return BakeConfig(**kwargs)


def not_utf8(what: str, path: Path, exc: UnicodeDecodeError) -> UserError:
    """The error for a text file that is not UTF-8: where the first bad byte is, and the fix."""
    return UserError(f"{what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start}); "
                     f"save it as UTF-8")


MAX_YAML_BYTES = 1_000_000   # far above any real config or probe file; parsing this much YAML already takes seconds


def _yaml_problem(exc: Exception) -> str:
    """pyyaml's own message spans several lines; keep the line number and the one-line problem."""
    if isinstance(exc, yaml.reader.ReaderError):
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f": it holds the control character U+{code:04X} at position {exc.position}; is it a text file?"
    if isinstance(exc, RecursionError):
        return ": it is nested too deeply"
    if not isinstance(exc, yaml.YAMLError):   # a constructor choking on a tagged or date-like value (2020-02-30)
        return f": a value cannot be read ({exc}); quote it to keep it as text"
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark else ""
    return f"{at}: {' '.join(str(getattr(exc, 'problem', None) or exc).split())}"


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file (`what` names it in messages, e.g. "config file"); every problem is one UserError line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what} {path} is {'a folder, ' if path.is_dir() else ''}not a file; give a YAML file")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise UserError(f"{what} {path} is {size / 1e6:.1f} MB, more than the {MAX_YAML_BYTES / 1e6:g} MB a "
                        f"{what} may have; is it the right file?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(what, path, exc) from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, KeyError, AttributeError, TypeError, RecursionError) as exc:
        raise UserError(f"{what} {path} is not valid YAML{_yaml_problem(exc)}") from None


def load_config(path: str | Path) -> BakeConfig:
    """Read a YAML config file; every problem becomes one UserError line. An empty file means all defaults."""
    data = read_yaml(path, "config file")
    return config_from_dict({} if data is None else data, where=str(path))


def override(config: BakeConfig, dotted: dict[str, Any]) -> BakeConfig:
    """Return a copy of `config` with 'section.field' values replaced (CLI flags win over the file)."""
    data = config.to_dict()
    for key, value in dotted.items():
        if "." in key:
            section, name = key.split(".", 1)
            if section not in SECTIONS:
                raise UserError(f"command line: unknown setting {show(key)}{_suggest(section, list(SECTIONS))}")
            data[section][name] = value
        else:
            data[key] = value
    return config_from_dict(data, where="command line")


# The schedule that 'auto' (0) picks for sample.trajectories_per_question and train.batch_size, by the precision
# the model runs in. bf16 units make sampling about 2x and a 4-trajectory step 1.5x the speed of float32's, which
# pays for twice the teacher samples at the same 96 steps: held-out closure persona 0.871 -> 0.902, news 0.722 ->
# 0.797 on an AMX CPU (a session whose write-up was lost; issue 17 saw 0.901 the same way). In float32 that
# schedule would take the default bake past 3 minutes (docs/performance.md, 2026-12-07).
AUTO_SAMPLES = {"bf16": 2, "float32": 1}
STEP_PER_SAMPLE = 2   # auto batch size: trajectories per step per teacher sample of a question (96 steps either way)


def resolve_schedule(config: BakeConfig, precision: str) -> tuple[BakeConfig, str | None]:
    """(`config` with trajectories_per_question and batch_size filled in where they are 0 (auto), a line saying what
    auto chose and why, or None when neither was auto)."""
    per, batch = config.sample.trajectories_per_question, config.train.batch_size
    if per and batch:
        return config, None
    # a greedy teacher gives one answer per question however often it is asked
    per = per or (1 if config.sample.sampling_temperature == 0 else AUTO_SAMPLES.get(precision, 1))
    batch = batch or STEP_PER_SAMPLE * per
    resolved = override(config, {"sample.trajectories_per_question": per, "train.batch_size": batch})
    return resolved, (f"schedule {per} teacher sample(s) per training question, {batch} trajectories per step (auto "
                      f"for {precision}; --trajectories-per-question and --batch-size set them)")


def check_strength(strength) -> float:
    """A strength is a finite number >= 0 (a string from the command line is parsed here, for a one-line error)."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise UserError(f"--strength must be a number >= 0 (got {strength!r}); 0 = base model, 1 = the bake") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--strength must be a finite number >= 0 (got {strength!r}); 0 = base model, 1 = the bake")
    return value


def save_config(config: BakeConfig, path: Path) -> None:
    from .runfolder import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
