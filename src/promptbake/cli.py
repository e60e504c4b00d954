"""`promptbake <verb>`: thin wrappers over the library. Every user error is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

from .config import (SEED_LIMIT, BakeConfig, SampleConfig, TrainConfig, check_strength, load_config, not_utf8,
                     override)
from .errors import UserError

DEFAULT_OUT = "runs/bake"


class _Parser(argparse.ArgumentParser):
    """argparse prints usage and the error on two lines and exits; ours is one UserError line like the rest."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _flag_type(name: str, parse, ok, rule: str):
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


COUNT = _flag_type("count", int, lambda n: n >= 1, "a whole number >= 1")
TEMPERATURE = _flag_type("temperature", float, lambda t: math.isfinite(t) and t >= 0, "a finite number >= 0")
SEED = _flag_type("seed", int, lambda s: 0 <= s < SEED_LIMIT, "a whole number in [0, 2**32)")
CHECKPOINT = _flag_type("checkpoint", str, lambda c: re.fullmatch(r"step-\d+", c), "a checkpoint name like step-8")


def _add_section_flags(parser: argparse.ArgumentParser, section: str, cls) -> None:
    """One --flag per config field (dest 'section.field'), typed from its default, help from its metadata."""
    group = parser.add_argument_group(f"{section} settings (override --config)")
    for f in dataclasses.fields(cls):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"{section}.{f.name}", type=type(f.default),
                           default=None, metavar=type(f.default).__name__.upper(), help=f.metadata["help"])


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="model.name", default=None,
                        help="Hugging Face id, local folder, .gguf file, or smollm2-135m (default)")
    parser.add_argument("--allow-download", dest="model.allow_download", action="store_const", const=True,
                        default=None, help="allow downloading a Hugging Face model (off: offline)")
    parser.add_argument("--trust-remote-code", dest="model.trust_remote_code", action="store_const", const=True,
                        default=None, help="run model code shipped with the checkpoint")
    parser.add_argument("--on", dest="model.on", default=None, metavar="DIR",
                        help="bake on top of a finished bake (its adapter is merged into the base first)")
    parser.add_argument("--seed", dest="seed", type=int, default=None, help="seed for split, sampling, training")
    parser.add_argument("--config", type=Path, default=None, help="YAML config; flags override it")


def _resolve_config(args: argparse.Namespace, base: BakeConfig | None = None) -> BakeConfig:
    config = load_config(args.config) if getattr(args, "config", None) else (base or BakeConfig())
    given = {k: v for k, v in vars(args).items() if ("." in k or k == "seed") and v is not None}
    if given.get("model.on"):
        from .base import previous_bake

        run, previous = previous_bake(given["model.on"])
        given["model.on"] = str(run.resolve())           # recorded absolute: the bake reloads from anywhere
        given.setdefault("model.name", previous.model.name)
    return override(config, given) if given else config


MAX_PROMPT_BYTES = 1_000_000   # ~250k tokens: past any context a bake can fit, and tokenizing more takes minutes


def _read_prompt(args: argparse.Namespace) -> str:
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


def _print_side_by_side(rows: list[dict]) -> None:
    from .eval.tables import side_by_side_lines

    labels = {"base": "base, no prompt", "base_with_prompt": "base + prompt", "baked": "baked, no prompt"}
    print("\n" + "\n\n".join("\n".join(side_by_side_lines([row], labels)) for row in rows))


def _print_metrics(metrics: dict, out: Path) -> None:
    print(f"\nheld-out KL(teacher ‖ model) per token: base {metrics['heldout_kl_before']:.4f} → "
          f"baked {metrics['heldout_kl_after']:.4f};  closure {metrics['closure']:.3f}")
    print(f"sampling {metrics['sampling_seconds']:.0f} s, training+eval {metrics['train_and_eval_seconds']:.0f} s; "
          f"adapter in {out / 'adapter'}")


def _check_resume(args: argparse.Namespace) -> None:
    """--resume continues a run exactly as it was configured: settings that would change it are refused."""
    given = sorted(k.split(".", 1)[-1].replace("_", "-") for k, v in vars(args).items()
                   if ("." in k or k in ("seed", "config")) and v is not None)
    if given:
        raise UserError(f"--resume continues the run with its own config.yaml; drop --{', --'.join(given)} "
                        f"(or start a new bake in another --out)")
    if args.overwrite:
        raise UserError("give either --resume (continue the run in --out) or --overwrite (replace it), not both")


def cmd_bake(args: argparse.Namespace) -> int:
    from .bake import bake, resume_bake
    from .distributed import is_main

    if args.resume:
        _check_resume(args)
        if args.prompt is not None or args.prompt_file is not None:
            raise UserError("--resume bakes the run's own system_prompt.txt; drop --prompt / --prompt-file")
        result = resume_bake(args.out, progress=not args.quiet)
    else:
        result = bake(_read_prompt(args), args.out, _resolve_config(args), overwrite=args.overwrite,
                      progress=not args.quiet)
    if not is_main():      # another process of `accelerate launch`: the main one reports
        return 0
    _print_metrics(result.metrics, result.out)
    if args.compare:
        _compare(result.out, args.compare)
    return 0


IDENTITY_PROBE = "What is your name?"


def _compare(out: Path, count: int) -> None:
    from .baked import load_baked

    baked = load_baked(out)
    questions = baked.record["questions"]["heldout"][:count]
    trained = IDENTITY_PROBE in baked.record["questions"]["train"]
    print(f"\nSide by side, sampled at temperature {baked.config.sample.sampling_temperature}, top_p "
          f"{baked.config.sample.top_p}: {len(questions)} held-out questions (never trained on), then "
          f"{IDENTITY_PROBE!r} ({'one of the training questions' if trained else 'not trained on'}).")
    _print_side_by_side(baked.side_by_side(questions + [IDENTITY_PROBE], seed=baked.config.seed))


def cmd_pursue(args: argparse.Namespace) -> int:
    from .eval.probes import builtin_locality, load_facts, load_probes
    from .pursuit import check_rounds, pursue

    check_rounds(args.rounds)
    prompt = _read_prompt(args)
    if not args.probes:
        raise UserError("pursue needs --probes FILE: a round goes on only while its judge rate rises")
    probes = load_probes(args.probes)
    locality = {"builtin": builtin_locality, "none": lambda: None}.get(args.locality,
                                                                      lambda: load_facts(args.locality))()

    def show(found: dict, record: dict) -> None:
        ref = record["reference"]
        if found["round"] == 1:
            judged = ref["judges"]
            local = (f"{ref['locality_kept']} of {ref['locality_questions']} questions the base gets right"
                     if ref["locality_questions"] else "off")
            print(f"\nPrompt Pursuit, judged by {record['probe_file']}: base {judged['base']['rate']:.0%}, "
                  f"base+prompt {judged['base+prompt']['rate']:.0%}; KL(base+prompt ‖ base) "
                  f"{ref['kl_base_from_teacher']:.4f}; locality control: {local}")
            print(f"  {'round':<6}{'closure':>8}{'KL from base+prompt':>21}{'judged':>8}{'+prompt':>9}"
                  f"{'locality':>10}{'seconds':>9}")
        kl, judges = found["kl_from_original_teacher"]["baked"], found["judges"]
        local = f"{found['locality']['rate']:.0%}" if "locality" in found else "-"
        print(f"  {found['round']:<6}{found['closure']:>8.3f}{kl:>21.4f}{judges['baked']['rate']:>8.0%}"
              f"{judges['baked+prompt']['rate']:>9.0%}{local:>10}{found['seconds']:>9.0f}", flush=True)

    record = pursue(prompt, Path(args.out), _resolve_config(args), args.rounds, probes, locality, args.samples,
                    patience=args.patience, overwrite=args.overwrite, progress=not args.quiet, on_round=show)
    print(f"stopped early: {record['stopped']}" if record["stopped"] else f"ran all {args.rounds} rounds")
    print(f"every round's run folder is in {args.out}/round-N; the record is {Path(args.out) / 'pursuit.json'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .bake import sample_run

    sample_run(_read_prompt(args), Path(args.out), _resolve_config(args), args.overwrite, progress=not args.quiet)
    print(f"trajectories written to {Path(args.out) / 'trajectories.jsonl'}; train with `promptbake train {args.out}`")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from . import runfolder
    from .bake import train_run
    from .distributed import is_main

    runfolder.read_bake_json(args.dir)  # a clear error when DIR is not a run folder
    base = load_config(Path(args.dir) / runfolder.CONFIG_YAML)
    if args.resume:
        _check_resume(args)
    result = train_run(Path(args.dir), _resolve_config(args, base), args.overwrite, progress=not args.quiet,
                       resume=args.resume)
    if is_main():
        _print_metrics(result.metrics, result.out)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .baked import load_baked

    baked = load_baked(args.dir, args.checkpoint, check_strength(args.strength))
    replies = baked.generate([args.question] * args.samples, reprompt=args.reprompt, adapter=not args.base,
                             temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    if args.json:
        print(json.dumps({"question": args.question, "replies": replies}, ensure_ascii=False))
    else:
        for reply in replies:
            print(reply if args.samples == 1 else f"- {reply}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .baked import load_baked

    baked = load_baked(args.dir, args.checkpoint, check_strength(args.strength))
    print("promptbake chat: type a message; /reset starts over, /quit (or Ctrl-D) leaves.", flush=True)
    messages: list[dict] = []
    turn = 0
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/reset":
            messages = []
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = baked.chat(messages, reprompt=args.reprompt, temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens, seed=args.seed + turn)
        turn += 1
        messages.append({"role": "assistant", "content": reply})
        print(f"model> {reply}", flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import EvalConfig
    from .eval.evaluate import evaluate, parse_suites
    from .eval.tables import TABLES

    suites = parse_suites(args.suite)
    options = EvalConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)})

    def show(name: str, result) -> None:
        print("\n" + "\n".join(TABLES[name](result)), flush=True)

    evaluate(args.dir, suites, check_strength(args.strength), args.checkpoint, options, on_suite=show)
    print(f"\nresults merged into {Path(args.dir) / 'eval.json'}; `promptbake report {args.dir}` makes report.html")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .eval.report import write_report

    print(f"report written to {write_report(args.dir)}")   # a UserError when DIR is not a run folder
    return 0


def cmd_strength(args: argparse.Namespace) -> int:
    from . import runfolder, strength
    from .eval.plots import strength_png
    from .eval.probes import load_probes

    strengths = strength.parse_strengths(args.strengths)        # bad input fails before the model loads
    probes = load_probes(args.probes) if args.probes else None
    runfolder.read_bake_json(args.dir)

    def show(point: dict, sweep: dict) -> None:
        if len(sweep["points"]) == 1:
            print("\n".join(strength.sweep_header(sweep)), flush=True)
        print(strength.sweep_row(point, sweep["reprompt"], bool(sweep["probe_file"])), flush=True)

    sweep = strength.strength_sweep(args.dir, strengths, probes, checkpoints=not args.no_checkpoints,
                                    reprompt=not args.no_reprompt, samples=args.samples,
                                    temperature=args.temperature, seed=args.seed, on_point=show)
    print("\n".join(strength.sweep_footer(sweep)))
    runfolder.atomic_write_bytes(Path(args.dir) / strength.STRENGTH_PNG, strength_png(sweep))
    print(f"\nwritten: {Path(args.dir) / strength.STRENGTH_JSON}, {Path(args.dir) / strength.STRENGTH_PNG}")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from .combine import combine_runs, parse_weights

    out = combine_runs(args.dirs, args.out, parse_weights(args.weights, len(args.dirs)), args.overwrite)
    print(f"combined adapter written to {out / 'adapter'}; try `promptbake generate {out} --question ...` or "
          f"`promptbake eval {out} --suite judges --probes ...`")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_run

    out = merge_run(args.dir, args.out, args.checkpoint, check_strength(args.strength), args.overwrite)
    print(f"merged model written to {out}; load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def _add_eval_parser(verbs) -> None:
    from .config import EvalConfig
    from .eval.evaluate import DEFAULT_SUITES, SUITES

    eval_p = verbs.add_parser("eval", help="evaluate a bake under four conditions; results go to DIR/eval.json",
                              description="Compare base, base+prompt, baked and baked+prompt. Suites: "
                                          + ", ".join(SUITES) + ".")
    eval_p.add_argument("dir", help="run folder of a finished bake")
    eval_p.add_argument("--suite", default=DEFAULT_SUITES,
                        help=f"comma-separated suites (default {DEFAULT_SUITES}; available: {', '.join(SUITES)})")
    eval_p.add_argument("--checkpoint", type=CHECKPOINT, default=None,
                        help="evaluate checkpoints/step-N instead of the final adapter")
    eval_p.add_argument("--strength", default="1", metavar="A", help="adapter scale (default 1)")
    for f in dataclasses.fields(EvalConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type in (bool, "bool"):
            eval_p.add_argument(flag, action="store_true", help=f.metadata["help"])
            continue
        kind = {"int": int, "int | None": int, "float | None": float}.get(str(f.type), str)
        eval_p.add_argument(flag, type=kind, default=f.default, metavar=kind.__name__.upper(), help=f.metadata["help"])
    eval_p.set_defaults(func=cmd_eval)


def _add_strength_parser(verbs) -> None:
    from .strength import DEFAULT_STRENGTHS

    sub = verbs.add_parser("strength", help="sweep prompt strength: adapter scale α and checkpoints (half-baking)",
                           description="Measure held-out KL and judge rates of a bake at several adapter scales α "
                                       "(0 = base, 1 = the bake, > 1 extrapolates) and at every saved checkpoint. "
                                       "Writes DIR/strength.json and DIR/strength.png.")
    sub.add_argument("dir", help="run folder of a finished bake")
    sub.add_argument("--probes", default=None, help="judge probes (YAML, as for eval); without them only KL")
    sub.add_argument("--strengths", default=DEFAULT_STRENGTHS, metavar="A,B,...",
                     help=f"adapter scales to measure (default {DEFAULT_STRENGTHS})")
    sub.add_argument("--no-checkpoints", action="store_true", help="skip the checkpoints (half-baked models)")
    sub.add_argument("--no-reprompt", action="store_true", help="skip baked + prompt (re-prompting) at each point")
    sub.add_argument("--samples", type=COUNT, default=None, help="samples per probe (default: probe file's, else 8)")
    sub.add_argument("--temperature", type=TEMPERATURE, default=None,
                     help="judge sampling temperature (default: bake's)")
    sub.add_argument("--seed", type=SEED, default=0, help="sampling seed, the same at every point")
    sub.set_defaults(func=cmd_strength)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="promptbake", description="Bake prompts into LoRA weights.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def prompt_verb(name: str, help_text: str, with_train: bool, out: str = DEFAULT_OUT) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--prompt", default=None, help="the system prompt to bake")
        sub.add_argument("--prompt-file", default=None, help="read the system prompt from a UTF-8 file")
        sub.add_argument("--out", default=out, help=f"run folder (default {out})")
        sub.add_argument("--overwrite", action="store_true", help="replace a previous bake in --out")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        _add_model_flags(sub)
        _add_section_flags(sub, "sample", SampleConfig)
        if with_train:
            _add_section_flags(sub, "train", TrainConfig)
        return sub

    bake_p = prompt_verb("bake", "sample from the prompted model, train the adapter, save the run folder", True)
    bake_p.add_argument("--resume", action="store_true",
                        help="continue a killed bake in --out: keep its sampled batches, train on from its last "
                             "checkpoint (the run's own prompt and config)")
    bake_p.add_argument("--compare", type=int, default=3, metavar="N",
                        help="print base / prompted / baked answers for N held-out questions (0: skip)")
    bake_p.set_defaults(func=cmd_bake)
    prompt_verb("sample", "only sample teacher trajectories into the run folder", False).set_defaults(func=cmd_sample)
    pursue_p = prompt_verb("pursue", "Prompt Pursuit: bake, re-prompt the baked model, bake it again, round after "
                                     "round (each round in DIR/round-N)", True, out="runs/pursuit")
    pursue_p.add_argument("--rounds", type=int, default=3, help="most rounds to run (default 3); stops early when "
                                                                 "a round's judge rate does not rise")
    pursue_p.add_argument("--probes", default=None, help="judge probes (YAML, as for eval): the pursued behaviour")
    pursue_p.add_argument("--patience", type=int, default=1, help="stop after this many rounds in a row without a "
                                                                   "new best judge rate (default 1)")
    pursue_p.add_argument("--samples", type=COUNT, default=None,
                          help="samples per probe (default: probe file's, else 8)")
    pursue_p.add_argument("--locality", default="builtin", help="collapse guard: builtin, none, or a facts YAML")
    pursue_p.set_defaults(func=cmd_pursue)

    train_p = verbs.add_parser("train", help="train an adapter from a run folder's trajectories.jsonl")
    train_p.add_argument("dir", help="run folder written by `promptbake sample`")
    train_p.add_argument("--overwrite", action="store_true", help="retrain a folder that holds a finished bake")
    train_p.add_argument("--quiet", action="store_true", help="no progress bars")
    train_p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of a killed run")
    _add_model_flags(train_p)
    _add_section_flags(train_p, "train", TrainConfig)
    train_p.set_defaults(func=cmd_train)

    for name, help_text, func in (("generate", "answer a question with a baked model", cmd_generate),
                                  ("chat", "talk to a baked model, multi-turn", cmd_chat)):
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("dir", help="run folder of a finished bake")
        if name == "generate":
            sub.add_argument("--question", required=True, help="the user message")
            sub.add_argument("--samples", type=COUNT, default=1, help="how many answers to sample")
            sub.add_argument("--base", action="store_true", help="answer with the base model (adapter off)")
            sub.add_argument("--json", action="store_true", help="print JSON")
        sub.add_argument("--reprompt", action="store_true", help="add the baked system prompt back (baked + u)")
        sub.add_argument("--checkpoint", type=CHECKPOINT, default=None,
                         help="use checkpoints/step-N instead of the final adapter")
        sub.add_argument("--strength", default="1", metavar="A",
                         help="adapter scale: 0 = base model, 1 = the bake (default), > 1 extrapolates")
        sub.add_argument("--temperature", type=TEMPERATURE, default=None, help="sampling temperature (default: bake's)")
        sub.add_argument("--max-new-tokens", type=COUNT, default=None, help="reply length limit (default: bake's)")
        sub.add_argument("--seed", type=SEED, default=0, help="sampling seed")
        sub.set_defaults(func=func)

    _add_eval_parser(verbs)
    report_p = verbs.add_parser("report", help="write DIR/report.html: training curve, eval tables, plots")
    report_p.add_argument("dir", help="run folder of a bake")
    report_p.set_defaults(func=cmd_report)

    _add_strength_parser(verbs)
    combine_p = verbs.add_parser("combine", help="one adapter from several bakes of the same base (weighted sum)",
                                 description="Combine the adapters of several finished bakes of one base model "
                                             "into a new run folder: ΔW = Σ wᵢ·ΔWᵢ, exact (peft 'cat').")
    combine_p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders of finished bakes (two or more)")
    combine_p.add_argument("--weights", default=None, metavar="W1,W2,...", help="one weight per run (default 1 each)")
    combine_p.add_argument("--out", required=True, help="run folder for the combined adapter")
    combine_p.add_argument("--overwrite", action="store_true", help="replace a previous bake in --out")
    combine_p.set_defaults(func=cmd_combine)
    merge_p = verbs.add_parser("merge", help="merge the adapter into the weights: a plain transformers model folder")
    merge_p.add_argument("dir", help="run folder of a finished bake")
    merge_p.add_argument("--out", required=True, help="folder for the merged model (safetensors + tokenizer)")
    merge_p.add_argument("--checkpoint", type=CHECKPOINT, default=None,
                         help="merge checkpoints/step-N instead of the final adapter")
    merge_p.add_argument("--strength", default="1", metavar="A", help="adapter scale to merge (default 1)")
    merge_p.add_argument("--overwrite", action="store_true", help="replace a merged model previously written to --out")
    merge_p.set_defaults(func=cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"promptbake: error: {' '.join(str(exc).split())}", file=sys.stderr)   # always one line
        return 2
    except KeyboardInterrupt:
        print("promptbake: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
