"""Teacher and student framing: conversations → token ids (pure; no model, no I/O).

Teacher = the system prompt as the system message of the model's own chat template; student = the same
conversation with no system message (exactly what a user of the baked model sends). A tokenizer without a chat
template gets the system prompt as a plain-text prefix followed by a newline.
"""
from __future__ import annotations

from typing import Sequence

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


def framing_kind(tokenizer) -> str:
    return "chat_template" if getattr(tokenizer, "chat_template", None) else "plain_prefix"


def conversation(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """Prepend the system prompt (if any) to a user/assistant conversation."""
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return head + [dict(m) for m in messages]


def render(tokenizer, messages: Sequence[Message], system_prompt: str | None) -> str:
    """The text the model sees before its next turn (generation prompt included)."""
    if framing_kind(tokenizer) == "chat_template":
        return tokenizer.apply_chat_template(conversation(messages, system_prompt), tokenize=False,
                                             add_generation_prompt=True)
    turns = [m["content"] for m in messages]
    prefix = f"{system_prompt}\n" if system_prompt else ""
    return prefix + "\n".join(turns) + "\n"


def prompt_ids(tokenizer, messages: Sequence[Message], system_prompt: str | None) -> list[int]:
    """Token ids of the rendered prompt. Chat templates carry their own special tokens, so none are added."""
    text = render(tokenizer, messages, system_prompt)
    add_special = framing_kind(tokenizer) != "chat_template"
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
    return {
        "kind": framing_kind(tokenizer),
        "teacher_example": render(tokenizer, example, system_prompt),
        "student_example": render(tokenizer, example, None),
    }
