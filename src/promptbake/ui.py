"""`promptbake ui DIR …`: a local web playground over finished run folders (Gradio, the optional extra
promptbake[ui]).

One question goes to the four conditions side by side (base, base + prompt, baked, baked + prompt); a strength
slider and a checkpoint picker change the baked columns; a chat tab talks to the baked model over several turns; a
third tab shows the run's report (metrics and plots). Each answer is exactly what `promptbake generate` prints for
the same question, seed, strength and checkpoint: one `BakedModel.generate` call per condition.

Safety: it binds 127.0.0.1 unless told otherwise (another address needs --allow-remote), and it never hands Gradio
a file: answers are text, the report is inline HTML with its plots as data URIs, so Gradio's file route serves
nothing from disk (no allowed_paths, no static paths).
"""
from __future__ import annotations

import html
import ipaddress
import os
import socket
import threading
from pathlib import Path

from . import runfolder
from .config import check_strength
from .errors import UserError

FINAL = "final adapter"
CONDITIONS = (("base", False, False), ("base + prompt", False, True), ("baked", True, False),
              ("baked + prompt", True, True))   # (label, adapter on, system prompt given)
MAX_STRENGTH = 2.0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ui_args(run_dirs: list[str], host: str, port: int, allow_remote: bool) -> list[Path]:
    """Everything `promptbake ui` can refuse before it loads a model or imports Gradio; returns the run folders.

    Raises:
        UserError: a folder that is not a finished bake, a non-loopback --host without --allow-remote, a port that
        is taken, or Gradio not installed.
    """
    runs = [Path(d).resolve() for d in run_dirs]
    for run in runs:
        runfolder.read_finished_bake(run)
    if len(set(runs)) != len(runs):
        raise UserError("the same run folder is given twice; give each run folder once")
    if not _is_loopback(host) and not allow_remote:
        raise UserError(f"--host {host} would serve the playground (and the models' answers) to every machine that "
                        f"can reach this one; add --allow-remote if that is meant, or keep the default 127.0.0.1")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); the port is in use or not "
                            f"allowed, pick another with --port") from None
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the playground needs Gradio: pip install 'promptbake[ui]' (or `pip install -e '.[ui]'` in "
                        "a checkout)") from None
    return runs


class Playground:
    """The models behind the page: one BakedModel per run folder, loaded on first use, one request at a time."""

    def __init__(self, runs: list[Path]):
        self.runs = {str(run): run for run in runs}
        self._loaded = {}
        self._lock = threading.Lock()
        self._base_answers = {}   # the adapter-off columns do not depend on strength or checkpoint

    def model(self, run: str):
        from .baked import BakedModel

        if run not in self.runs:
            raise UserError(f"{run!r} is not one of the run folders this playground serves")
        if run not in self._loaded:
            self._loaded[run] = BakedModel(self.runs[run])
        return self._loaded[run]

    def checkpoints(self, run: str) -> list[str]:
        return [FINAL, *runfolder.checkpoint_names(self.runs[run])]

    def _use(self, run: str, checkpoint: str, strength: float):
        baked = self.model(run)
        baked.use_checkpoint(None if checkpoint in (None, FINAL) else checkpoint)
        return baked.with_strength(check_strength(strength))

    def compare(self, run: str, checkpoint: str, strength: float, question: str, seed: int, temperature: float,
                max_new_tokens: int) -> list[str]:
        """The four answers to `question`, in CONDITIONS order."""
        if not question.strip():
            raise UserError("type a question first")
        options = dict(temperature=temperature, max_new_tokens=int(max_new_tokens), seed=int(seed))
        with self._lock:
            baked = self._use(run, checkpoint, strength)
            answers = []
            for _, adapter, prompted in CONDITIONS:
                key = (run, question, prompted, tuple(sorted(options.items())))
                if not adapter and key in self._base_answers:
                    answers.append(self._base_answers[key])
                    continue
                answer = baked.generate(question, reprompt=prompted, adapter=adapter, **options)
                if not adapter:
                    self._base_answers[key] = answer
                answers.append(answer)
        return answers

    def chat(self, run: str, checkpoint: str, strength: float, reprompt: bool, messages: list[dict], seed: int,
             temperature: float, max_new_tokens: int) -> str:
        """The baked model's next reply to a conversation of user/assistant messages."""
        with self._lock:
            baked = self._use(run, checkpoint, strength)
            turn = sum(m["role"] == "assistant" for m in messages)
            return baked.chat(messages, reprompt=reprompt, temperature=temperature,
                              max_new_tokens=int(max_new_tokens), seed=int(seed) + turn)   # as `promptbake chat`

    def sampling(self, run: str) -> tuple[float, int]:
        """The bake's own sampling temperature and reply length: what `promptbake generate` uses by default."""
        sample = runfolder.read_bake_json(self.runs[run])["config"]["sample"]
        return sample["sampling_temperature"], sample["max_new_tokens"]

    def summary(self, run: str) -> str:
        record = runfolder.read_bake_json(self.runs[run])
        metrics = record.get("metrics", {})
        model = record.get("model", {}).get("name", "?")
        facts = [f"model **{model}**"] + [f"{label} **{metrics[key]:.3g}**" for label, key in
                                          (("closure", "closure"), ("held-out KL before", "heldout_kl_before"),
                                           ("after", "heldout_kl_after")) if isinstance(metrics.get(key), float)]
        prompt = " ".join(record["system_prompt"].split())
        return (" · ".join(facts) + "\n\n**Baked prompt:** "
                + html.escape(prompt[:600] + ("…" if len(prompt) > 600 else "")))

    def report(self, run: str) -> str:
        """The run's report (bake.json, metrics.jsonl, eval.json, strength.json) in a sandboxed frame."""
        from .eval.report import render_report

        page = render_report(self.runs[run])
        return (f'<iframe title="run report" sandbox srcdoc="{html.escape(page, quote=True)}" '
                f'style="width:100%;height:1100px;border:1px solid #ddd;border-radius:6px"></iframe>')


def build_app(playground: Playground):
    """The Gradio Blocks page over `playground` (not launched)."""
    import gradio as gr

    runs = list(playground.runs)
    first = runs[0]
    with gr.Blocks(title="promptbake playground", analytics_enabled=False) as app:
        gr.Markdown("## promptbake playground")
        with gr.Row():
            run = gr.Dropdown(runs, value=first, label="run folder", scale=3, elem_id="run")
            checkpoint = gr.Dropdown(playground.checkpoints(first), value=FINAL, label="checkpoint", scale=1,
                                     elem_id="checkpoint")
        summary = gr.Markdown(playground.summary(first), elem_id="summary")
        with gr.Row():
            strength = gr.Slider(0, MAX_STRENGTH, value=1.0, step=0.05, label="strength (0 = base, 1 = the bake)",
                                 elem_id="strength", scale=3)
            seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="seed", scale=1)
            first_temperature, first_length = playground.sampling(first)
            temperature = gr.Number(first_temperature, minimum=0, label="temperature", elem_id="temperature", scale=1)
            max_new_tokens = gr.Number(first_length, precision=0, minimum=1, label="max new tokens",
                                       elem_id="max-new-tokens", scale=1)
        with gr.Tab("Compare"):
            with gr.Row():
                question = gr.Textbox(label="question", placeholder="Ask something…", scale=5, elem_id="question")
                ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
            with gr.Row():
                columns = [gr.Textbox(label=label, lines=8, interactive=False, elem_id=label.replace(" + ", "-"))
                           for label, _, _ in CONDITIONS]
        with gr.Tab("Chat"):
            reprompt = gr.Checkbox(False, label="add the prompt back (baked + prompt)", elem_id="reprompt")
            chatbot = gr.Chatbot(label="baked model", elem_id="chatbot", height=420)
            with gr.Row():
                message = gr.Textbox(label="message", scale=5, elem_id="message")
                send = gr.Button("Send", scale=1, elem_id="send")
                reset = gr.Button("Reset", scale=1, elem_id="reset")
        with gr.Tab("Metrics and plots"):
            report = gr.HTML(playground.report(first), elem_id="report")

        def answer(run, checkpoint, strength, question, seed, temperature, max_new_tokens):
            try:
                return playground.compare(run, checkpoint, strength, question, seed or 0, temperature,
                                          max_new_tokens)
            except UserError as exc:
                raise gr.Error(str(exc)) from None

        def reanswer(run, checkpoint, strength, question, seed, temperature, max_new_tokens):
            if not question.strip():     # nothing asked yet: the slider or picker only sets what the next ask uses
                return [gr.skip()] * len(CONDITIONS)
            return answer(run, checkpoint, strength, question, seed, temperature, max_new_tokens)

        def reply(run, checkpoint, strength, reprompt, history, text, seed, temperature, max_new_tokens):
            if not text.strip():
                return history, ""
            messages = [{"role": m["role"], "content": _text(m["content"])} for m in history or []]
            messages.append({"role": "user", "content": text})
            try:
                out = playground.chat(run, checkpoint, strength, reprompt, messages, seed or 0, temperature,
                                      max_new_tokens)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
            return messages + [{"role": "assistant", "content": out}], ""

        def switch_run(run):
            return (gr.Dropdown(choices=playground.checkpoints(run), value=FINAL), *playground.sampling(run),
                    playground.summary(run), playground.report(run))

        compare_inputs = [run, checkpoint, strength, question, seed, temperature, max_new_tokens]
        ask.click(answer, compare_inputs, columns)
        question.submit(answer, compare_inputs, columns)
        # Moving the slider or picking a checkpoint re-answers the question that is there (if any).
        strength.release(reanswer, compare_inputs, columns)
        checkpoint.input(reanswer, compare_inputs, columns)
        chat_inputs = [run, checkpoint, strength, reprompt, chatbot, message, seed, temperature, max_new_tokens]
        send.click(reply, chat_inputs, [chatbot, message])
        message.submit(reply, chat_inputs, [chatbot, message])
        reset.click(lambda: [], None, chatbot)
        run.change(switch_run, run, [checkpoint, temperature, max_new_tokens, summary, report])
    return app


def _text(content) -> str:
    """A Chatbot message's content as plain text (Gradio may hand back a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def serve(run_dirs: list[str], host: str = "127.0.0.1", port: int = 7860, allow_remote: bool = False,
          block: bool = True):
    """Check the arguments, build the page and serve it; returns the Gradio app (running) when `block` is False."""
    runs = check_ui_args(run_dirs, host, port, allow_remote)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # offline machines; no usage pings
    app = build_app(Playground(runs))
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, inbrowser=False, quiet=not block,
               show_error=True, share=False)
    return app
