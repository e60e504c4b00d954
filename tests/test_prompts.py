"""Framing: teacher = system prompt through the chat template; student = none; plain prefix without a template."""
import copy

from promptbake.prompts import describe_framing, render, student_prompt_ids, teacher_prompt_ids

from conftest import PERSONA


def test_chat_template_framing(tiny):
    _, tokenizer = tiny
    teacher = tokenizer.decode(teacher_prompt_ids(tokenizer, "Hi?", PERSONA))
    student = tokenizer.decode(student_prompt_ids(tokenizer, "Hi?"))
    assert teacher == f"<|im_start|>system\n{PERSONA}<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    # SmolLM2's template inserts its own default system prompt when none is given: intended, and recorded
    assert student.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert PERSONA not in student and student.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    assert describe_framing(tokenizer, PERSONA)["kind"] == "chat_template"


def test_plain_prefix_framing_without_a_chat_template(tiny):
    _, tokenizer = tiny
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert render(plain, [{"role": "user", "content": "Hi?"}], PERSONA) == f"{PERSONA}\nHi?\n"
    assert render(plain, [{"role": "user", "content": "Hi?"}], None) == "Hi?\n"
    assert plain.decode(teacher_prompt_ids(plain, "Hi?", PERSONA), skip_special_tokens=True) == f"{PERSONA}\nHi?\n"
    framing = describe_framing(plain, PERSONA)
    assert framing["kind"] == "plain_prefix" and framing["student_example"] == "<question>\n"


def test_multi_turn_conversation_keeps_every_turn(tiny):
    _, tokenizer = tiny
    turns = [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "B."},
             {"role": "user", "content": "C?"}]
    text = render(tokenizer, turns, None)
    assert text.index("A?") < text.index("B.") < text.index("C?") and text.endswith("<|im_start|>assistant\n")
