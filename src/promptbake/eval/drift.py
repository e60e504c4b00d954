"""The drift suite: does the persona survive a long conversation? (Li et al. 2024, "Measuring and controlling
instruction (in)stability in language model dialogs": self-chat, with a probe question after every turn.)

The model under test talks with a user simulator, a second instance of the *base* model (adapter off) that is told
to play a curious user interested in a topic. After each of the assistant's turns, the persona probe is asked in a
branch of that conversation (the probe exchange never enters the dialogue) and judged. A prompted model's system
prompt recedes as the dialogue grows; a baked model carries the persona in its weights.
"""
from __future__ import annotations

from .conditions import CONDITIONS
from .probes import ProbeFile
from .stats import rate

TOPICS = ("cooking a quick dinner on a weeknight", "learning to play the guitar", "planning a weekend hiking trip",
          "keeping houseplants alive", "spending less money on groceries", "training a new puppy",
          "starting to run regularly", "picking a first programming language to learn")
SIMULATOR_PROMPT = ("You are a person chatting with an AI assistant about {topic}. Write only your own next "
                    "message to the assistant: one or two short sentences, a question or a reaction to what it "
                    "said. Never answer as the assistant.")
SIMULATOR_WARMUP = "Hello! What would you like to talk about today?"
OPENER = "Hi! I'd like some advice about {topic}. Where should I start?"
DRIFT_CONDITIONS = ("base+prompt", "baked", "baked+prompt")
DEFAULT_TURNS, DEFAULT_DIALOGUES, DEFAULT_SAMPLES = 8, 8, 2
ASSISTANT_TOKENS, SIMULATOR_TOKENS, PROBE_TOKENS = 48, 32, 48


def simulator_view(topic: str, dialogue: list[dict]) -> list[dict]:
    """The conversation as the simulated user sees it: its own instructions, then the dialogue with roles swapped.

    A fixed first 'user' line keeps roles alternating (some chat templates insist), and the assistant's latest
    reply comes last as the 'user' message the simulator answers.
    """
    flipped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in dialogue]
    return [{"role": "system", "content": SIMULATOR_PROMPT.format(topic=topic)},
            {"role": "user", "content": SIMULATOR_WARMUP}, *flipped]


def drift_suite(baked, probes: ProbeFile, turns: int = DEFAULT_TURNS, dialogues: int = DEFAULT_DIALOGUES,
                samples: int = DEFAULT_SAMPLES, temperature: float | None = None, seed: int = 0,
                progress=None) -> dict:
    """Probe pass rate after each assistant turn of `dialogues` self-chats, for base+prompt, baked, baked+prompt.

    Turn 0 is the probe asked with no conversation at all. `progress(line)`, when given, hears each turn's result as
    it is judged (a default eval takes half an hour on 2 cores). Returns {"turns", "dialogues", "samples_per_dialogue",
    "probe": {"name", "question", "check"}, "topics", "conditions": {condition: {"per_turn": [{"turn", rate...}],
    "example": the first dialogue's transcript}}}.
    """
    probe = probes.find(probes.drift_probe)
    temperature = baked.config.sample.sampling_temperature if temperature is None else temperature
    topics = [TOPICS[i % len(TOPICS)] for i in range(dialogues)]
    results = {}
    for condition in (c for c in CONDITIONS if c.name in DRIFT_CONDITIONS):
        def ask(conversations, stream, tokens, adapter=condition.adapter, reprompt=condition.reprompt):
            return baked.respond(conversations, reprompt=reprompt, adapter=adapter, temperature=temperature,
                                 max_new_tokens=tokens, seed=seed * 1_000 + stream)

        def judge(dialogs: list[list[dict]], turn: int) -> dict:
            branch = [d + [{"role": "user", "content": probe.question}] for d in dialogs for _ in range(samples)]
            replies = ask(branch, 3 * turn + 2, PROBE_TOKENS)
            passed = sum(probe.check(r) for r in replies)
            if progress:
                progress(f"drift: {condition.name}, turn {turn} of {turns}: {passed}/{len(replies)} pass "
                         f"'{probe.name}'")
            return {"turn": turn, **rate(passed, len(replies)), "example_reply": replies[0]}

        dialogs = [[{"role": "user", "content": OPENER.format(topic=t)}] for t in topics]
        per_turn = [judge([[] for _ in topics], 0)]
        for turn in range(1, turns + 1):
            for dialog, reply in zip(dialogs, ask(dialogs, 3 * turn, ASSISTANT_TOKENS)):
                dialog.append({"role": "assistant", "content": reply})
            per_turn.append(judge(dialogs, turn))
            if turn < turns:   # the simulated user (base model, its own instructions) writes the next message
                views = [simulator_view(t, d) for t, d in zip(topics, dialogs)]
                for dialog, message in zip(dialogs, ask(views, 3 * turn + 1, SIMULATOR_TOKENS, False, False)):
                    dialog.append({"role": "user", "content": message})
        results[condition.name] = {"per_turn": per_turn, "example": dialogs[0]}
    return {"turns": turns, "dialogues": dialogues, "samples_per_dialogue": samples, "temperature": temperature,
            "probe": {"name": probe.name, "question": probe.question, "check": str(probe.check)},
            "topics": topics, "conditions": results}
