"""Chat templates without a template engine: ChatML (SmolLM2's template), recognised by its exact text.

A model's chat template is a jinja program that turns a list of messages into the text the model was
fine-tuned on. transformers runs it with jinja2; minipeft adds no template engine, so it knows one
template family, ChatML, writes out its jinja text (`chatml_template`), accepts a model's template only
when it is that text exactly (`chatml_default_system`), and renders it in Python (`chatml_pieces`). Any
other template is refused rather than rendered approximately.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_FOR = "{% for message in messages %}"
_DEFAULT_SYSTEM = ("{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n", "<|im_end|>\n' }}"
                   "{% endif %}")
_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
_END = "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"


def chatml_template(default_system: str | None = None) -> str:
    """The jinja text of the ChatML template rendered here; SmolLM2's has a default system message.

    Each message becomes `<|im_start|>{role}\\n{content}<|im_end|>\\n`; when the first message is not a
    system one, the default system message (if any) goes first; a generation prompt adds
    `<|im_start|>assistant\\n`.
    """
    head = _FOR if default_system is None else _FOR + _DEFAULT_SYSTEM[0] + default_system + _DEFAULT_SYSTEM[1]
    return head + _TURN + _END


def chatml_default_system(template: str) -> str | None:
    """The default system message of a ChatML template of `chatml_template`'s form; ValueError for any other."""
    if template == chatml_template(None):
        return None
    prefix = _FOR + _DEFAULT_SYSTEM[0]
    m = re.fullmatch(re.escape(prefix) + r"([^'\\]*)" + re.escape(_DEFAULT_SYSTEM[1] + _TURN + _END), template)
    if m is None:
        raise ValueError(f"unknown chat template {template[:160]!r}...: minipeft renders ChatML (SmolLM2's "
                         "template, see minipeft.workshop.llm.chat_template.chatml_template) without a template "
                         "engine and refuses any other rather than render it wrong; format the conversation "
                         "yourself and encode it")
    return m.group(1)


def _check_messages(messages) -> list[Mapping]:
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(f"apply_chat_template: messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
                        f"{type(messages).__name__}")
    for i, m in enumerate(messages):
        for key in ("role", "content"):
            if not isinstance(m, Mapping) or not isinstance(m.get(key), str):
                got = type(m).__name__ if not isinstance(m, Mapping) else f"{key}={m.get(key)!r}"
                raise TypeError(f"apply_chat_template: messages[{i}] must be a dict with str 'role' and 'content' "
                                f"(e.g. {{'role': 'user', 'content': 'Hi'}}), got {got}")
    return list(messages)


def chatml_pieces(messages, add_generation_prompt: bool, default_system: str | None) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_special) pieces: the template's markup is special, message text never."""
    pieces: list[tuple[str, bool]] = []

    def put(text: str, special: bool = False) -> None:
        if pieces and not special and not pieces[-1][1]:
            pieces[-1] = (pieces[-1][0] + text, False)   # one text run between two special tokens
        else:
            pieces.append((text, special))

    def turn(role: str, content: str) -> None:
        put(IM_START, True)
        put(f"{role}\n{content}")
        put(IM_END, True)
        put("\n")

    messages = _check_messages(messages)
    if messages and messages[0]["role"] != "system" and default_system is not None:
        turn("system", default_system)
    for m in messages:
        turn(m["role"], m["content"])
    if add_generation_prompt:
        put(IM_START, True)
        put("assistant\n")
    return pieces
