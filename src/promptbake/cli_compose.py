"""`promptbake strength | pursue | combine`: the verbs about prompt strength and composition."""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli_args import COUNT, SEED, TEMPERATURE, read_prompt, resolve_config
from .errors import UserError

def cmd_pursue(args: argparse.Namespace) -> int:
    from .eval.probes import builtin_locality, load_facts, load_probes
    from .pursuit import check_rounds, pursue

    check_rounds(args.rounds)
    prompt = read_prompt(args)
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

    record = pursue(prompt, Path(args.out), resolve_config(args), args.rounds, probes, locality, args.samples,
                    patience=args.patience, overwrite=args.overwrite, progress=not args.quiet, on_round=show)
    print(f"stopped early: {record['stopped']}" if record["stopped"] else f"ran all {args.rounds} rounds")
    print(f"every round's run folder is in {args.out}/round-N; the record is {Path(args.out) / 'pursuit.json'}")
    return 0


def cmd_strength(args: argparse.Namespace) -> int:
    from . import runfolder, strength
    from .eval.plots import strength_png
    from .eval.probes import load_probes

    strengths = strength.parse_strengths(args.strengths)        # bad input fails before the model loads
    probes = load_probes(args.probes) if args.probes else None
    if args.task:
        from .eval.task_families import family

        family(args.task)
    runfolder.read_bake_json(args.dir)

    def show(point: dict, sweep: dict) -> None:
        if len(sweep["points"]) == 1:
            print("\n".join(strength.sweep_header(sweep)), flush=True)
        print(strength.sweep_row(point, sweep["reprompt"], bool(sweep["probe_file"])), flush=True)

    sweep = strength.strength_sweep(args.dir, strengths, probes, checkpoints=not args.no_checkpoints,
                                    reprompt=not args.no_reprompt, samples=args.samples,
                                    temperature=args.temperature, seed=args.seed, task=args.task,
                                    problems=args.problems, on_point=show)
    print("\n".join(strength.sweep_footer(sweep)))
    runfolder.atomic_write_bytes(Path(args.dir) / strength.STRENGTH_PNG, strength_png(sweep))
    print(f"\nwritten: {Path(args.dir) / strength.STRENGTH_JSON}, {Path(args.dir) / strength.STRENGTH_PNG}")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from .combine import combine_runs, parse_weights

    out = combine_runs(args.dirs, args.out, parse_weights(args.weights, len(args.dirs)), args.overwrite,
                       exact=args.exact, progress=not args.quiet, from_sum=args.from_sum)
    how = ("the exact sum" if args.exact else "the sum, distilled toward the base model with every prompt"
           if args.from_sum else "the first bake and a new adapter baked on it toward the base model with every prompt")
    print(f"combined adapter ({how}) written to {out / 'adapter'}; try `promptbake generate {out} --question ...` or "
          f"`promptbake eval {out} --suite judges --probes ...`")
    return 0


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
    sub.add_argument("--task", default=None,
                     help="also score a task family's problems at every point (as --suite accuracy; docs/accuracy.md)")
    sub.add_argument("--problems", type=COUNT, default=200, help="with --task: problems per point (default 200)")
    sub.set_defaults(func=cmd_strength)


def add_compose_parsers(verbs, prompt_verb) -> None:
    """Register strength, pursue and combine; `prompt_verb` makes a parser with the prompt, model and config flags."""
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

    _add_strength_parser(verbs)
    combine_p = verbs.add_parser("combine", help="one adapter from several bakes of the same base, carrying every "
                                                 "prompt", description=(
        "Combine several finished bakes of one base model into a new run folder that carries every prompt. By "
        "default the first bake is kept and a new adapter is baked on top of it, whose teacher is the base model "
        "with all the prompts in the order given, on the runs' own questions (as `bake --on FIRST` does); both "
        "are saved as one adapter of the base; give first the bake whose prompt is hardest to keep (a persona before "
        "a fact). --from-sum starts that bake at the exact sum ΔW = Σ wᵢ·ΔWᵢ of the "
        "adapters (peft 'cat') instead; --exact writes the sum alone."))
    combine_p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders of finished bakes (two or more)")
    combine_p.add_argument("--weights", default=None, metavar="W1,W2,...",
                           help="one weight per run in the sum (default 1 each); with --exact or --from-sum")
    combine_p.add_argument("--out", required=True, help="run folder for the combined adapter")
    combine_p.add_argument("--overwrite", action="store_true", help="replace a previous bake in --out")
    combine_p.add_argument("--exact", action="store_true",
                           help="write the exact weighted sum of the adapters only (seconds: no sampling, no "
                                "training)")
    combine_p.add_argument("--from-sum", action="store_true",
                           help="start the bake at the sum of the adapters and train all of it, instead of keeping "
                                "the first bake and training a new adapter on it (kept the first prompt less: "
                                "docs/prompt-content.md)")
    combine_p.add_argument("--quiet", action="store_true", help="no progress bars")
    combine_p.set_defaults(func=cmd_combine)
