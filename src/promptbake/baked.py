"""Load a finished bake and use it: generate, chat, re-prompt, compare against the base model."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from . import runfolder
from .config import SampleConfig, check_strength, config_from_dict
from .errors import UserError
from .logits import adapter_disabled
from .lora_fused import fuse_lora
from .base import load_base
from .precision import device_of
from .prompts import prompt_ids, stop_token_ids
from .sampling import batches_of, generate_batch, generation_config, stream_seed


@contextlib.contextmanager
def per_row_adapter(model, on: list[bool]):
    """Within this context, forward passes over exactly len(`on`) rows apply the active adapter to the rows where
    `on` is True and leave the others as the base model.

    Each LoRA layer adds lora_B(lora_A(x)) · scaling to its base output; scaling becomes a [B, 1, 1] tensor (the
    adapter's own scale, or 0), so one batched pass serves both kinds of rows. peft's own per-row `adapter_names`
    does the same by splitting every layer's input by adapter, which cost about twice the decoding step here.
    Plain LoRA only: an adapter with a peft variant (DoRA, ...) is refused.
    """
    from peft.tuners.lora import LoraLayer

    name = model.active_adapter
    weights = torch.tensor(on, dtype=torch.float32, device=device_of(model))[:, None, None]
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and name in m.scaling]
    if any(name in m.lora_variant for m in layers):
        raise UserError(f"adapter {name!r} is not plain LoRA (it uses a peft variant such as DoRA); compare its "
                        f"conditions one at a time")
    saved = [(m, m.scaling[name]) for m in layers]
    try:
        for m, scale in saved:
            m.scaling[name] = scale * weights
        yield
    finally:
        for m, scale in saved:
            m.scaling[name] = scale


class BakedModel:
    """A base model with a baked adapter. `.model` is the PeftModel, `.tokenizer` its tokenizer.

    `generate` / `chat` answer without the system prompt (the point of baking); `reprompt=True` adds it back
    (baked + u), and `adapter=False` answers as the base model, so all four conditions are one call away.
    """

    def __init__(self, run_dir: str | Path, checkpoint: str | None = None):
        from peft import PeftModel

        self.run_dir = Path(run_dir)
        self.record = runfolder.read_bake_json(self.run_dir)
        adapter_dir = (self.run_dir / runfolder.CHECKPOINTS / checkpoint) if checkpoint else (
            self.run_dir / runfolder.ADAPTER)
        if not (adapter_dir / "adapter_model.safetensors").is_file():
            what = f"checkpoint {checkpoint!r}" if checkpoint else "adapter"
            raise UserError(f"{self.run_dir} has no {what} ({adapter_dir} is missing); finish the bake or pick "
                            f"one of: {', '.join(self.checkpoints()) or 'no checkpoints saved'}")
        self.config = config_from_dict(self.record["config"], where=str(self.run_dir / runfolder.BAKE_JSON))
        teacher = self.record.get("teacher") or {}
        # re-prompting gives what the bake's teacher was given: for an `--on` chain that carries its prompts, every
        # prompt of the chain, not only the last
        self.system_prompt = (teacher["system_prompt"] if teacher.get("carries_prompts") and teacher.get("system_prompt")
                              else self.record["system_prompt"])
        base, self.tokenizer, self.source = load_base(self.config)
        # The final adapter is peft's "default"; a checkpoint keeps its own name, so use_checkpoint can add the rest.
        self.model = fuse_lora(PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=checkpoint or "default",
                                                         use_safetensors=True))
        self.model.eval()
        self.stop_ids = stop_token_ids(self.tokenizer, base.generation_config)
        self.checkpoint = checkpoint
        self.strength = 1.0

    def with_strength(self, strength: float) -> "BakedModel":
        """Scale the adapter in place and return self: 0 is the base model, 1 the bake, > 1 extrapolates.

        Uses peft's own per-layer scale (LoraLayer.set_scale: scaling = strength · lora_alpha / r).
        """
        from peft.tuners.lora import LoraLayer

        strength = check_strength(strength)
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                module.set_scale(self.model.active_adapter, strength)
        self.strength = strength
        return self

    def use_checkpoint(self, checkpoint: str | None) -> "BakedModel":
        """Switch to checkpoints/`checkpoint` (None: the final adapter) without reloading the base; keeps the strength.

        Each adapter is loaded once into the same PeftModel under its own name (peft's load_adapter/set_adapter).
        """
        name = checkpoint or "default"
        if name not in self.model.peft_config:
            folder = self.run_dir / (runfolder.CHECKPOINTS + "/" + name if checkpoint else runfolder.ADAPTER)
            if not (folder / "adapter_model.safetensors").is_file():
                raise UserError(f"{self.run_dir} has no checkpoint {name!r}; saved: "
                                f"{', '.join(self.checkpoints()) or 'none'}")
            self.model.load_adapter(str(folder), adapter_name=name, use_safetensors=True)
        self.model.set_adapter(name)
        self.checkpoint = checkpoint
        return self.with_strength(self.strength)

    def checkpoints(self) -> list[str]:
        return runfolder.checkpoint_names(self.run_dir)

    def _sample_config(self, temperature: float | None, max_new_tokens: int | None) -> SampleConfig:
        cfg = self.config.sample
        return SampleConfig(sampling_temperature=cfg.sampling_temperature if temperature is None else temperature,
                            top_p=cfg.top_p, max_new_tokens=max_new_tokens or cfg.max_new_tokens)

    def respond(self, conversations: list[list[dict]], reprompt: bool = False, adapter: bool = True,
                temperature: float | None = None, max_new_tokens: int | None = None, seed: int = 0) -> list[str]:
        """One reply per conversation (lists of user/assistant messages).

        Conversations are batched by prompt length, at most `sample_batch_size` of the bake's config at a time; the
        reply to conversation i is drawn from its own random stream, seeded from (seed, i), so the same call gives
        the same replies.
        """
        n = len(conversations)
        return self._respond(conversations, [reprompt] * n, [adapter] * n, temperature, max_new_tokens, seed)

    def _respond(self, conversations: list[list[dict]], reprompt: list[bool], adapter: list[bool],
                 temperature: float | None, max_new_tokens: int | None, seed: int) -> list[str]:
        """respond, with the system prompt and the adapter chosen per conversation: where both adapter states
        occur, each batch mixes them (per_row_adapter), so one decoding loop serves all rows."""
        prompts = [prompt_ids(self.tokenizer, messages, self.system_prompt if system else None)
                   for messages, system in zip(conversations, reprompt)]
        gen = generation_config(self._sample_config(temperature, max_new_tokens), self.stop_ids,
                                self.tokenizer.pad_token_id)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        mixed = len(set(adapter)) > 1
        replies: list[str] = [""] * len(prompts)
        with adapter_disabled(self.model) if not any(adapter) else contextlib.nullcontext():
            for batch in batches_of(order, self.config.sample.sample_batch_size):
                with per_row_adapter(self.model, [adapter[i] for i in batch]) if mixed else contextlib.nullcontext():
                    outputs, _ = generate_batch(self.model, [prompts[i] for i in batch], gen,
                                                self.tokenizer.pad_token_id, self.stop_ids,
                                                seeds=[stream_seed(seed, "reply", i) for i in batch],
                                                share_prefix=not mixed)
                for i, (ids, _) in zip(batch, outputs):
                    replies[i] = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return replies

    def generate(self, question: str | list[str], reprompt: bool = False, adapter: bool = True, **kwargs):
        """Answer one question (→ str) or several (→ list[str]) with no system prompt unless `reprompt`."""
        questions = [question] if isinstance(question, str) else list(question)
        replies = self.respond([[{"role": "user", "content": q}] for q in questions], reprompt, adapter, **kwargs)
        return replies[0] if isinstance(question, str) else replies

    def chat(self, messages: list[dict], reprompt: bool = False, **kwargs) -> str:
        """Next assistant reply to a multi-turn conversation ([{role, content}, ...], no system message)."""
        return self.respond([messages], reprompt, **kwargs)[0]

    def side_by_side(self, questions: list[str], seed: int = 0, **kwargs) -> list[dict]:
        """For each question: the base model without / with the prompt, and the baked model without it (one decoding
        loop for the three: `sample_batch_size` rows at a time, mixing adapter on and off)."""
        n = len(questions)
        replies = self._respond([[{"role": "user", "content": q}] for q in questions] * 3,
                                [False] * n + [True] * n + [False] * n, [False] * 2 * n + [True] * n,
                                kwargs.get("temperature"), kwargs.get("max_new_tokens"), seed)
        base, prompted, baked = replies[:n], replies[n:2 * n], replies[2 * n:]
        return [{"question": q, "base": a, "base_with_prompt": b, "baked": c}
                for q, a, b, c in zip(questions, base, prompted, baked)]


def load_baked(run_dir: str | Path, checkpoint: str | None = None, strength: float = 1.0) -> BakedModel:
    """Load the baked model of a run folder (its final adapter, or `checkpoint` like 'step-8'), scaled by strength."""
    return BakedModel(run_dir, checkpoint).with_strength(strength)
