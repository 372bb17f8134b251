"""Chat through a tokenizer's template (minipeft.workshop.chat) and text streamed as it is generated (TextStreamer)."""

from __future__ import annotations

import pytest

from minipeft.generate import TextStreamer, generate
from minipeft.workshop.chat import chat_loop, chat_reply
from minipeft.workshop.llm import load_pretrained
from minipeft.workshop.llm.tiny import write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_pretrained(write_tiny_llama(tmp_path_factory.mktemp("tiny") / "t.gguf", seed=2), progress=False)


def test_streamed_text_is_the_decoded_reply_and_never_a_broken_character(tiny):
    """Byte-level tokens can split a character; the streamer writes only whole ones, and its pieces join to the
    final text. Driven with the ids of a string holding multi-byte characters, one token at a time."""
    text = "naïve café: 日本 ok"
    pieces = []
    stream = TextStreamer(tiny.tokenizer, pieces.append)
    for i in tiny.tokenizer.encode(text):
        stream(i)
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 1


def test_chat_reply_streams_what_it_returns_and_stops_at_the_end_of_turn(tiny):
    pieces = []
    messages = [{"role": "user", "content": "hello"}]
    reply = chat_reply(tiny.model, tiny.tokenizer, messages, max_new_tokens=12, write=pieces.append)
    assert "".join(pieces) == reply
    ids = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert reply == tiny.tokenizer.decode(generate(tiny.model, ids, 12, eos_id=tiny.tokenizer.eos_id))


def test_chat_loop_keeps_the_conversation_and_ends_on_an_empty_line(tiny):
    said = iter(["first question", "second", ""])
    conversation = chat_loop(tiny.model, tiny.tokenizer, read=lambda prompt: next(said), write=lambda s: None,
                             system="be brief", max_new_tokens=3)
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user", "assistant"]
    assert conversation[3]["content"] == "second"


def test_chat_refuses_a_tokenizer_without_a_template(tiny):
    class Plain:
        pass

    with pytest.raises(TypeError, match="has no chat template"):
        chat_reply(tiny.model, Plain(), [{"role": "user", "content": "hi"}])
