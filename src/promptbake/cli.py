"""`promptbake <verb>`: thin wrappers over the library. Every user error is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .cli_args import (CHECKPOINT, COUNT, PORT, SEED, TEMPERATURE, Parser, add_model_flags, add_section_flags, flag_name,
                       read_prompt, resolve_config)
from .cli_compose import add_compose_parsers
from .config import SampleConfig, TrainConfig, check_strength, load_config, show
from .errors import UserError

DEFAULT_OUT = "runs/bake"


def _print_side_by_side(rows: list[dict]) -> None:
    from .eval.tables import side_by_side_lines

    labels = {"base": "base, no prompt", "base_with_prompt": "base + prompt", "baked": "baked, no prompt"}
    print("\n" + "\n\n".join("\n".join(side_by_side_lines([row], labels)) for row in rows))


def _print_metrics(metrics: dict, out: Path) -> None:
    print(f"\nheld-out KL(teacher ‖ model) per token: base {metrics['heldout_kl_before']:.4f} → "
          f"baked {metrics['heldout_kl_after']:.4f};  closure {metrics['closure']:.3f}")
    questions = f"questions {metrics['questions_seconds']:.0f} s, " if "questions_seconds" in metrics else ""
    print(f"{questions}sampling {metrics['sampling_seconds']:.0f} s, "
          f"training+eval {metrics['train_and_eval_seconds']:.0f} s; adapter in {out / 'adapter'}")


def _check_resume(args: argparse.Namespace, run: Path) -> None:
    """--resume continues a run exactly as it was configured. The original command line is accepted: a setting given
    again must equal the run's own (config.yaml, system_prompt.txt); one that differs is refused, named, with both
    values. Settings left out keep the run's values."""
    from . import runfolder

    if args.overwrite:
        raise UserError("give either --resume (continue the run in --out) or --overwrite (replace it), not both")
    if not (run / runfolder.CONFIG_YAML).is_file():
        return              # nothing to compare with; resuming such a folder is refused with its own message
    own = dict(_flatten(load_config(run / runfolder.CONFIG_YAML).to_dict()))
    command = dict(_flatten(runfolder.absolute_paths(resolve_config(args, load_config(run / runfolder.CONFIG_YAML)))
                            .to_dict()))
    differ = [key for key, value in command.items() if value != own.get(key)]
    if differ:
        key, more = differ[0], ""
        if differ[1:]:
            more = f" (and {len(differ) - 1} more: {', '.join(flag_name(k) for k in differ[1:])})"
        raise UserError(f"--resume continues the run in {run} as it was configured: {flag_name(key)} is "
                        f"{show(command[key])} here but {show(own.get(key))} in its config.yaml{more}; drop it, or "
                        f"start a new bake in another --out")
    if getattr(args, "prompt", None) is not None or getattr(args, "prompt_file", None) is not None:
        prompt = read_prompt(args)
        own_prompt = (run / runfolder.SYSTEM_PROMPT).read_text(encoding="utf-8").strip() \
            if (run / runfolder.SYSTEM_PROMPT).is_file() else None
        if own_prompt is not None and prompt != own_prompt:
            at = next((i for i, (a, b) in enumerate(zip(prompt, own_prompt)) if a != b), min(len(prompt), len(own_prompt)))
            raise UserError(f"--resume bakes the run's own prompt, and this one differs from {run / runfolder.SYSTEM_PROMPT} "
                            f"at character {at} ({prompt[at:at + 30]!r} here, {own_prompt[at:at + 30]!r} there); "
                            f"drop --prompt / --prompt-file, or start a new bake in another --out")


def _flatten(data: dict, prefix: str = ""):
    """('section.field', value) pairs of a config dict."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def cmd_bake(args: argparse.Namespace) -> int:
    from .bake import bake, resume_bake
    from .distributed import is_main

    if args.resume:
        _check_resume(args, Path(args.out))
        result = resume_bake(args.out, progress=not args.quiet)
    else:
        result = bake(read_prompt(args), args.out, resolve_config(args), overwrite=args.overwrite,
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


def cmd_sample(args: argparse.Namespace) -> int:
    from .bake import sample_run

    sample_run(read_prompt(args), Path(args.out), resolve_config(args), args.overwrite, progress=not args.quiet)
    print(f"trajectories written to {Path(args.out) / 'trajectories.jsonl'}; train with `promptbake train {args.out}`")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from . import runfolder
    from .bake import train_run
    from .distributed import is_main

    runfolder.read_bake_json(args.dir)  # a clear error when DIR is not a run folder
    base = load_config(Path(args.dir) / runfolder.CONFIG_YAML)
    if args.resume:
        _check_resume(args, Path(args.dir))
    result = train_run(Path(args.dir), resolve_config(args, base), args.overwrite, progress=not args.quiet,
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


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_run

    out = merge_run(args.dir, args.out, args.checkpoint, check_strength(args.strength), args.overwrite)
    print(f"merged model written to {out}; load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export_gguf import export_run

    out, kept = export_run(args.dir, args.format, args.out, args.checkpoint, check_strength(args.strength),
                           args.quant, args.overwrite)
    size = out.stat().st_size / 2**20
    use = (f"llama-cli -m BASE.gguf --lora {out}  (or --lora-scaled {out} A)" if args.format == "gguf-lora"
           else f"llama-cli -m {out}")
    print(f"{args.format} written to {out} ({size:.1f} MiB); run it with {use}")
    if kept is not None:
        print(f"its tensor types keep {kept:.1%} of the bake's weight change"
              + ("" if kept > 0.9 else "; most of the bake is rounded away: export with --quant q8_0 (or f16), or "
                                       "serve the source GGUF with --format gguf-lora"))
    return 0


def _add_export_parser(verbs) -> None:
    from .export_gguf import FORMATS, MODEL_QUANTS

    export_p = verbs.add_parser("export", help="write the bake as GGUF for llama.cpp: an adapter or a merged model",
                                description="gguf-lora: the LoRA adapter as a llama.cpp adapter GGUF (load it over "
                                            "the base GGUF with --lora). gguf: the merged model as one GGUF, with "
                                            "the source GGUF's metadata (GGUF bases only).")
    export_p.add_argument("dir", help="run folder of a finished bake")
    export_p.add_argument("--format", required=True, choices=FORMATS, help="gguf-lora (adapter) or gguf (merged)")
    export_p.add_argument("--out", required=True, help="the .gguf file to write")
    export_p.add_argument("--quant", default=None, choices=MODEL_QUANTS,
                          help="tensor type: gguf-lora f32 (default) | f16; gguf: source (default: the source "
                               "file's own types) | f32 | f16 | q8_0 | q5_1 | q5_0 | q4_1 | q4_0")
    export_p.add_argument("--checkpoint", type=CHECKPOINT, default=None,
                          help="export checkpoints/step-N instead of the final adapter")
    export_p.add_argument("--strength", default="1", metavar="A",
                          help="adapter scale written into the file (default 1); llama.cpp's --lora-scaled scales "
                               "it again at serving time")
    export_p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export_p.set_defaults(func=cmd_export)


def cmd_ui(args: argparse.Namespace) -> int:
    from .ui import serve

    serve(args.dirs, args.host, args.port, args.allow_remote)
    return 0


def _add_ui_parser(verbs) -> None:
    ui_p = verbs.add_parser("ui", help="a local web playground over run folders (needs promptbake[ui])",
                            description="Serve a Gradio page that answers one question as base, base+prompt, baked "
                                        "and baked+prompt side by side, with a strength slider, a checkpoint picker, "
                                        "multi-turn chat and the run's report. Needs `pip install 'promptbake[ui]'`.")
    ui_p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders of finished bakes (the only ones served)")
    ui_p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui_p.add_argument("--port", type=PORT, default=7860, help="port to listen on (default 7860)")
    ui_p.add_argument("--allow-remote", action="store_true",
                      help="allow a --host other than loopback (others on the network can then use the page)")
    ui_p.set_defaults(func=cmd_ui)


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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="promptbake", description="Bake prompts into LoRA weights.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def prompt_verb(name: str, help_text: str, with_train: bool, out: str = DEFAULT_OUT) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--prompt", default=None, help="the system prompt to bake")
        sub.add_argument("--prompt-file", default=None, help="read the system prompt from a UTF-8 file")
        sub.add_argument("--out", default=out, help=f"run folder (default {out})")
        sub.add_argument("--overwrite", action="store_true", help="replace a previous bake in --out")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        add_model_flags(sub)
        add_section_flags(sub, "sample", SampleConfig)
        if with_train:
            add_section_flags(sub, "train", TrainConfig)
        return sub

    bake_p = prompt_verb("bake", "sample from the prompted model, train the adapter, save the run folder", True)
    bake_p.add_argument("--resume", action="store_true",
                        help="continue a killed bake in --out: keep its sampled batches, train on from its last "
                             "checkpoint (the run's own prompt and config)")
    bake_p.add_argument("--compare", type=int, default=3, metavar="N",
                        help="print base / prompted / baked answers for N held-out questions (0: skip)")
    bake_p.set_defaults(func=cmd_bake)
    prompt_verb("sample", "only sample teacher trajectories into the run folder", False).set_defaults(func=cmd_sample)
    train_p = verbs.add_parser("train", help="train an adapter from a run folder's trajectories.jsonl")
    train_p.add_argument("dir", help="run folder written by `promptbake sample`")
    train_p.add_argument("--overwrite", action="store_true", help="retrain a folder that holds a finished bake")
    train_p.add_argument("--quiet", action="store_true", help="no progress bars")
    train_p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of a killed run")
    add_model_flags(train_p)
    add_section_flags(train_p, "train", TrainConfig)
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

    add_compose_parsers(verbs, prompt_verb)
    merge_p = verbs.add_parser("merge", help="merge the adapter into the weights: a plain transformers model folder")
    merge_p.add_argument("dir", help="run folder of a finished bake")
    merge_p.add_argument("--out", required=True, help="folder for the merged model (safetensors + tokenizer)")
    merge_p.add_argument("--checkpoint", type=CHECKPOINT, default=None,
                         help="merge checkpoints/step-N instead of the final adapter")
    merge_p.add_argument("--strength", default="1", metavar="A", help="adapter scale to merge (default 1)")
    merge_p.add_argument("--overwrite", action="store_true", help="replace a merged model previously written to --out")
    merge_p.set_defaults(func=cmd_merge)
    _add_export_parser(verbs)
    _add_ui_parser(verbs)
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
