"""ChatML without a template engine (minipeft/workshop/llm/chat_template.py): SmolLM2's template text, its recognition,
and the rendering, checked against jinja2 running the template itself."""

from __future__ import annotations

import pytest
from llm_files import SMOLLM2_SYSTEM, SMOLLM2_TEMPLATE

from minipeft.workshop.llm.chat_template import chatml_default_system, chatml_pieces, chatml_template

# Hugging Face's documented ChatML template, without a default system message
PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")

CONVERSATIONS = [
    [],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Write code:\n    x = {{ 1 }}\n\n'quoted' \"too\" {% raw %}"}],
    [{"role": "user", "content": "spell <|im_end|> and <|im_start|>system\n in text"}],
    [{"role": "assistant", "content": ""}, {"role": "system", "content": "late system"}],
]


def _text(messages, add_generation_prompt, default_system):
    return "".join(t for t, _ in chatml_pieces(messages, add_generation_prompt, default_system))


def test_smollm2_template_is_chatml_with_its_default_system_message():
    assert chatml_template(SMOLLM2_SYSTEM) == SMOLLM2_TEMPLATE
    assert chatml_default_system(SMOLLM2_TEMPLATE) == SMOLLM2_SYSTEM
    assert chatml_template() == PLAIN_CHATML and chatml_default_system(PLAIN_CHATML) is None
    assert chatml_default_system(chatml_template("Be brief.")) == "Be brief."


@pytest.mark.parametrize("template", [
    SMOLLM2_TEMPLATE.replace("'\n'", "'\r\n'"),                     # a different turn separator
    SMOLLM2_TEMPLATE + "\n",
    SMOLLM2_TEMPLATE.replace("SmolLM,", "Smol'LM,"),                  # a quote: jinja would need an escape
    SMOLLM2_TEMPLATE.replace("SmolLM,", "Smol\\nLM,"),                # an escape jinja would turn into a newline
    "{{ bos_token }}{% for message in messages %}[INST] {{ message['content'] }} [/INST]{% endfor %}",
    "",
])
def test_any_other_template_is_refused(template):
    assert template != SMOLLM2_TEMPLATE   # each case really changes it
    with pytest.raises(ValueError, match="unknown chat template .*refuses any other rather than render it wrong"):
        chatml_default_system(template)


def test_default_system_message_goes_first_only_when_the_first_message_is_not_system():
    user = [{"role": "user", "content": "Hi"}]
    assert _text(user, False, "Sys") == "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    own = [{"role": "system", "content": "Mine"}, *user]
    assert _text(own, True, "Sys") == ("<|im_start|>system\nMine<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                       "<|im_start|>assistant\n")
    assert _text(user, True, None) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert _text([], False, "Sys") == "" and _text([], True, "Sys") == "<|im_start|>assistant\n"


def test_pieces_mark_the_template_markup_special_and_message_text_never():
    messages = [{"role": "user", "content": "a <|im_end|> b"}]
    pieces = chatml_pieces(messages, True, None)
    assert pieces == [("<|im_start|>", True), ("user\na <|im_end|> b", False), ("<|im_end|>", True),
                      ("\n", False), ("<|im_start|>", True), ("assistant\n", False)]
    # never two text pieces in a row: each is the whole run between two special tokens, as a tokenizer sees it
    assert not any(not a[1] and not b[1] for a, b in zip(pieces[:-1], pieces[1:], strict=True))


@pytest.mark.parametrize("template, system", [(SMOLLM2_TEMPLATE, SMOLLM2_SYSTEM), (PLAIN_CHATML, None)])
@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_rendering_equals_jinja2_running_the_template(template, system, messages, add_generation_prompt):
    sandbox = pytest.importorskip("jinja2.sandbox")
    # the environment transformers' apply_chat_template renders in
    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    want = env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)
    assert _text(messages, add_generation_prompt, chatml_default_system(template)) == want


@pytest.mark.parametrize("messages, match", [
    ("Hi", "messages must be a list of"),
    ({"role": "user", "content": "Hi"}, "messages must be a list of"),
    ([{"role": "user"}], r"messages\[0\] must be a dict with str 'role' and 'content'.*got content=None"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": ["part"]}], r"messages\[1\].*content=\['part'\]"),
    ([{"role": 3, "content": "a"}], "got role=3"),
    (["Hi"], r"messages\[0\].*got str"),
])
def test_malformed_messages_are_named(messages, match):
    with pytest.raises(TypeError, match=match):
        chatml_pieces(messages, False, None)
