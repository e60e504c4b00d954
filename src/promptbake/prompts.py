"""Teacher and student framing: conversations → token ids (pure; no model, no I/O).

Teacher = the system prompt as the system message of the model's own chat template; student = the same
conversation with no system message (exactly what a user of the baked model sends). Three framings:
- "chat_template": the template takes a system message;
- "system_folded": the template refuses a system message (Gemma's raise "System role not supported") or drops it;
  the system prompt then opens the first user turn, followed by a blank line (what such models' own guides advise);
- "plain_prefix": no chat template; the system prompt is a plain-text prefix followed by a newline.
"""
from __future__ import annotations

import weakref
from typing import Sequence

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
FOLD_SEPARATOR = "\n\n"
_PROBE = "promptbake-system-probe"
_KINDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # tokenizer -> framing kind, decided once


def _takes_system_message(tokenizer) -> bool:
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": _PROBE},
                                              {"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:   # jinja2's TemplateError from raise_exception, or a template that fails on the role
        return False
    return _PROBE in text


def framing_kind(tokenizer) -> str:
    """"chat_template", "system_folded" or "plain_prefix" (module docstring); decided once per tokenizer."""
    try:
        return _KINDS[tokenizer]
    except (KeyError, TypeError):
        pass
    if not getattr(tokenizer, "chat_template", None):
        kind = "plain_prefix"
    else:
        kind = "chat_template" if _takes_system_message(tokenizer) else "system_folded"
    try:
        _KINDS[tokenizer] = kind
    except TypeError:
        pass
    return kind


def conversation(messages: Sequence[Message], system_prompt: str | None, fold: bool = False) -> list[Message]:
    """Prepend the system prompt (if any) to a user/assistant conversation: as a system message, or (fold) at the
    start of the first user turn."""
    messages = [dict(m) for m in messages]
    if not system_prompt:
        return messages
    if not fold:
        return [{"role": "system", "content": system_prompt}] + messages
    first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if first is None:
        return [{"role": "user", "content": system_prompt}] + messages
    messages[first]["content"] = system_prompt + FOLD_SEPARATOR + messages[first]["content"]
    return messages


def render(tokenizer, messages: Sequence[Message], system_prompt: str | None) -> str:
    """The text the model sees before its next turn (generation prompt included)."""
    kind = framing_kind(tokenizer)
    if kind != "plain_prefix":
        return tokenizer.apply_chat_template(conversation(messages, system_prompt, fold=kind == "system_folded"),
                                             tokenize=False, add_generation_prompt=True)
    turns = [m["content"] for m in messages]
    prefix = f"{system_prompt}\n" if system_prompt else ""
    return prefix + "\n".join(turns) + "\n"


def prompt_ids(tokenizer, messages: Sequence[Message], system_prompt: str | None) -> list[int]:
    """Token ids of the rendered prompt. Chat templates carry their own special tokens, so none are added."""
    text = render(tokenizer, messages, system_prompt)
    add_special = framing_kind(tokenizer) == "plain_prefix"
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def teacher_prompt_ids(tokenizer, question: str, system_prompt: str) -> list[int]:
    return prompt_ids(tokenizer, [{"role": "user", "content": question}], system_prompt)


def student_prompt_ids(tokenizer, question: str) -> list[int]:
    return prompt_ids(tokenizer, [{"role": "user", "content": question}], None)


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Tokens that end an assistant turn: the tokenizer's EOS plus any the model's generation config lists."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    return sorted(ids)


def describe_framing(tokenizer, system_prompt: str) -> dict:
    """What bake.json records about how teacher and student were framed, with a rendered example."""
    example = [{"role": "user", "content": "<question>"}]
    notes = {"system_folded": "the chat template refuses or drops a system message, so the system prompt opens the "
                              "first user turn, followed by a blank line",
             "plain_prefix": "no chat template: the system prompt is a plain-text line before the conversation"}
    kind = framing_kind(tokenizer)
    return {
        "kind": kind,
        **({"note": notes[kind]} if kind in notes else {}),
        "teacher_example": render(tokenizer, example, system_prompt),
        "student_example": render(tokenizer, example, None),
    }
