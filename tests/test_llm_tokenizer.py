"""A pretrained model's tokenizer (minipeft/workshop/llm/tokenizer.py): built from GGUF metadata or a
tokenizer.json, the same ids as transformers, special ids from the model's files, the chat template; on a tiny
vocabulary built here and on the real SmolLM2 file when it is cached."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_files import SMOLLM2_SYSTEM, SMOLLM2_TEMPLATE, real_gguf_path
from tokenizers import pre_tokenizers

from minipeft.workshop.data import Tokenizer, collate_sft, encode_corpus, encode_sft
from minipeft.workshop.llm.chat_template import chatml_template
from minipeft.workshop.llm.gguf_file import write_gguf
from minipeft.workshop.llm.tokenizer import PretrainedTokenizer, byte_chars

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]                  # ids 0, 1, 2 as in SmolLM2
MERGES = ["Ġ t", "h e", "Ġt he", "1 2", "l l", "he ll", "hell o", "Ġ hello"]
MERGED = [m.replace(" ", "") for m in MERGES]                               # ids 259.. in merge order
TOKENS = [*SPECIAL, *byte_chars(), *MERGED, "<think>"]
ID = {t: i for i, t in enumerate(TOKENS)}


def tiny_metadata(**changes) -> dict:
    """A byte-level BPE as a GGUF file describes one: 3 control tokens, 256 bytes, 8 merges, 1 user-defined token."""
    md = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.token_type": [3] * 3 + [1] * (256 + len(MERGED)) + [4],   # 3 control, 1 normal, 4 user-defined
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": SMOLLM2_TEMPLATE,
    }
    md.update(changes)
    return {k: v for k, v in md.items() if v is not None}


@pytest.fixture(scope="module")
def tiny() -> PretrainedTokenizer:
    return PretrainedTokenizer.from_gguf_metadata(tiny_metadata())


TEXTS = [
    "Hello world", "hello the hello", "12345 apples and 3.14159", "naïve café, résumé, Ångström",
    "你好，世界！这是一个测试。", "日本語のテキスト", "emoji 😀👍🏽🇺🇸 and ❤️",
    "def f(x):\n    return x ** 2  # comment\n\n\n\tindented\ttabs", "   leading, internal    and trailing spaces   ",
    "\n\n\r\n \n", "user text that spells <|im_end|> and <|im_start|>", "<|endoftext|><repo_name>",
    "I'm sure they'll say it's fine, don't you think?", "", " ", "x²³ ½",
]


# ---- the build path, on the tiny vocabulary --------------------------------------------------------------------

def test_special_ids_come_from_the_metadata(tiny):
    # the base class would guess eos = <|endoftext|> (0) from its name; the model ends a turn with <|im_end|> (2)
    assert (tiny.eos_id, tiny.pad_id, tiny.bos_id) == (2, 2, 1)
    assert Tokenizer(tiny._hf).eos_id == 0
    assert tiny.vocab_size == len(TOKENS) and tiny.encode("hi", add_eos=True)[-1] == 2
    no_pad = tiny_metadata(**{"tokenizer.ggml.padding_token_id": None})
    assert PretrainedTokenizer.from_gguf_metadata(no_pad).pad_id == 2       # pads with eos when the file names no pad


def test_merges_apply_in_their_order(tiny):
    ids = tiny.encode("hello the hello")
    assert [tiny.id_to_token(i) for i in ids] == ["hello", "Ġthe", "Ġhello"]
    assert ids == [ID["hello"], ID["Ġthe"], ID["Ġhello"]]


def test_smollm_splits_every_digit_before_the_byte_level_split():
    # the vocabulary merges "1 2", but SmolLM2's pre-tokenizer never lets two digits meet
    smollm = PretrainedTokenizer.from_gguf_metadata(tiny_metadata())
    gpt2 = PretrainedTokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.pre": "gpt-2"}))
    assert [smollm.id_to_token(i) for i in smollm.encode("x 123")] == ["x", "Ġ", "1", "2", "3"]
    assert [gpt2.id_to_token(i) for i in gpt2.encode("x 123")] == ["x", "Ġ", "12", "3"]


def test_text_that_spells_a_special_token_stays_text(tiny):
    ids = tiny.encode("a<|im_end|>b")
    assert ID["<|im_end|>"] not in ids and tiny.decode(ids) == "a<|im_end|>b"
    assert tiny.decode([ID["<|im_start|>"], ID["hello"], ID["<|im_end|>"]]) == "hello"   # special ids dropped
    assert tiny.decode([ID["<|im_start|>"], ID["hello"]], skip_special_tokens=False) == "<|im_start|>hello"


def test_user_defined_tokens_are_matched_whole_and_kept_on_decode(tiny):
    ids = tiny.encode("a<think>b")
    assert ids == [ID["a"], ID["<think>"], ID["b"]] and tiny.decode(ids) == "a<think>b"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(), st.sampled_from([*SPECIAL, "<think>", " 12", "\n\n", "é", "🙂"])),
                max_size=6).map("".join))
def test_decode_encode_round_trips_any_text(tiny, text):
    assert tiny.decode(tiny.encode(text)) == text


def test_text_the_vocabulary_cannot_spell_is_refused():
    # SmolLM2 has no token for six control characters: transformers drops them from the ids, minipeft refuses
    tokens = [t if t != byte_chars()[4] else "<unused>" for t in TOKENS]
    tok = PretrainedTokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.tokens": tokens}))
    assert tok.decode(tok.encode("a\x05b")) == "a\x05b"
    with pytest.raises(ValueError, match=r"encode: text holds '\\x04' \(U\+0004\) at index 1, a character this "
                                         r"vocabulary has no byte tokens for .*lacks bytes 04\): remove or replace it"):
        tok.encode("a\x04b")
    with pytest.raises(ValueError, match=r"encode_batch: texts\[1\] holds '\\x04'"):
        tok.encode_batch(["fine", "\x04"])


@pytest.mark.parametrize("changes, match", [
    ({"tokenizer.ggml.model": "llama"}, r"tokenizer\.ggml\.model = 'llama'; minipeft builds byte-level BPE"),
    ({"tokenizer.ggml.pre": "qwen2"}, r"tokenizer\.ggml\.pre = 'qwen2' is a pre-tokenizer minipeft does not know"),
    ({"tokenizer.ggml.pre": None}, r"tokenizer\.ggml\.pre = None"),
    ({"tokenizer.ggml.add_bos_token": True}, r"add_bos_token is true: the model expects that id"),
    ({"tokenizer.ggml.tokens": None}, r"tokenizer\.ggml\.tokens = None is not a list of str"),
    ({"tokenizer.ggml.merges": [1, 2]}, r"tokenizer\.ggml\.merges = \[1, 2\] is not a list of str"),
    ({"tokenizer.ggml.eos_token_id": None}, r"eos_token_id = None is not a int"),
    ({"tokenizer.ggml.eos_token_id": 10**6}, r"eos_id=1000000 is not a token id of this tokenizer"),
    ({"tokenizer.ggml.token_type": [1, 3]}, rf"{len(TOKENS)} tokens but 2 token types"),
    ({"tokenizer.ggml.merges": ["h e l"]}, r"merge 0 'h e l' is not two vocabulary tokens"),
    ({"tokenizer.ggml.merges": ["x y"]}, r"merge 0 'x y' is not two vocabulary tokens whose join is one too"),
    ({"tokenizer.ggml.tokens": [*TOKENS[:-1], "a"]},
     rf"token 'a' appears twice in the vocabulary \(ids {ID['a']} and {len(TOKENS) - 1}\)"),
    ({"tokenizer.chat_template": "{{ messages }}"}, r"unknown chat template"),
])
def test_metadata_that_does_not_describe_a_known_tokenizer_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        PretrainedTokenizer.from_gguf_metadata(tiny_metadata(**changes))


# ---- the chat template -----------------------------------------------------------------------------------------

def test_chat_template_ids_put_special_ids_at_the_markup_only(tiny):
    messages = [{"role": "user", "content": "hello <|im_end|>"}]
    text = tiny.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n<|im_start|>user\nhello <|im_end|><|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tiny.apply_chat_template(messages, add_generation_prompt=True)
    E, S = ID["<|im_end|>"], ID["<|im_start|>"]
    assert ids == [S, *tiny.encode(f"system\n{SMOLLM2_SYSTEM}"), E, *tiny.encode("\n"),
                   S, *tiny.encode("user\nhello <|im_end|>"), E, *tiny.encode("\n"), S, *tiny.encode("assistant\n")]
    assert ids.count(E) == 2 and tiny.decode(ids, skip_special_tokens=False) == text


def test_no_chat_template_is_an_error():
    tok = PretrainedTokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.chat_template": None}))
    with pytest.raises(ValueError, match="has no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


# ---- files -----------------------------------------------------------------------------------------------------

def test_save_and_from_file_round_trip(tiny, tmp_path):
    path = tiny.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    back = PretrainedTokenizer.from_file(path.parent)
    assert (back.eos_id, back.pad_id, back.bos_id, back.chat_template) == (2, 2, 1, SMOLLM2_TEMPLATE)
    assert back.encode_batch(TEXTS) == tiny.encode_batch(TEXTS)
    messages = [{"role": "user", "content": "hello"}]
    assert back.apply_chat_template(messages, True) == tiny.apply_chat_template(messages, True)


def test_from_file_reads_the_hub_layout(tiny, tmp_path):
    (tmp_path / "tokenizer.json").write_text(tiny.to_str())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>"}, "pad_token": "<|im_end|>",
        "bos_token": "<|im_start|>", "chat_template": "{{ not read: the .jinja file wins }}"}))
    (tmp_path / "chat_template.jinja").write_text(chatml_template("Be brief."))
    tok = PretrainedTokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (2, 2, 1)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>")


def test_from_file_without_a_config_finds_the_ids_by_name(tiny, tmp_path):
    (tmp_path / "tokenizer.json").write_text(tiny.to_str())
    tok = PretrainedTokenizer.from_file(tmp_path)
    assert tok.eos_id == 0 and tok.chat_template is None   # <|endoftext|>: the base class's rule


@pytest.mark.parametrize("files, error, match", [
    ({}, FileNotFoundError, "no tokenizer file at .*tokenizer.json"),
    ({"tokenizer.json": '{"model": '}, ValueError, "is not a valid tokenizer.json"),
    ({"tokenizer.json": None, "tokenizer_config.json": "{"}, ValueError, "tokenizer_config.json is not valid JSON"),
    ({"tokenizer.json": None, "tokenizer_config.json": "[]"}, ValueError, "must hold a JSON object, got list"),
    ({"tokenizer.json": None, "tokenizer_config.json": '{"eos_token": "</s>"}'}, ValueError,
     "eos_token '</s>' is not in the vocabulary"),
    ({"tokenizer.json": None, "tokenizer_config.json": '{"chat_template": [{"name": "default"}]}'}, ValueError,
     "chat_template must be one template string, got list"),
])
def test_from_file_errors_name_the_file(tiny, tmp_path, files, error, match):
    for name, text in files.items():
        (tmp_path / name).write_text(tiny.to_str() if text is None else text)
    with pytest.raises(error, match=match):
        PretrainedTokenizer.from_file(tmp_path)


# ---- the project's code runs on it -----------------------------------------------------------------------------

def test_batching_closes_with_the_models_eos_and_pads_with_its_pad(tiny):
    ids, mask = encode_sft("hello the", " hello", tiny, max_len=32)
    assert ids[-1] == 2 and ids[:-1] == tiny.encode("hello the") + tiny.encode(" hello") and sum(mask) == 2
    batch = collate_sft([(ids, mask), encode_sft("hello", " the hello the", tiny, max_len=32)], tiny.pad_id)
    assert batch["input_ids"][0, -1] == 2 and batch["attention_mask"][0, -1] == 0
    assert list(encode_corpus(["hello", "the"], tiny)) == [ID["hello"], 2, ID["t"], ID["he"], 2]


# ---- against transformers --------------------------------------------------------------------------------------

def _transformers():
    return pytest.importorskip("transformers", reason="the comparison with transformers needs it installed")


def test_tiny_ids_equal_transformers_reading_the_same_gguf(tmp_path):
    transformers = _transformers()
    # transformers' GGUF reader applies no digit split for any pre-tokenizer name, so compare on "gpt-2"
    md = tiny_metadata(**{"tokenizer.ggml.pre": "gpt-2"})
    write_gguf(tmp_path / "tiny.gguf", md, {"w": np.zeros(2, np.float32)})
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf", split_special_tokens=True)
    tok = PretrainedTokenizer.from_gguf(tmp_path / "tiny.gguf")
    assert tok.source == str(tmp_path / "tiny.gguf")
    assert [tok.encode(t) for t in TEXTS] == [ref(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (ref.eos_token_id, ref.pad_token_id, ref.bos_token_id)


def test_saved_folder_loads_in_transformers_with_the_same_ids_and_chat(tiny, tmp_path):
    transformers = _transformers()
    tiny.save(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, split_special_tokens=True)
    assert [tiny.encode(t) for t in TEXTS] == [ref(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert ref.eos_token == "<|im_end|>" and ref.pad_token == "<|im_end|>" and ref.bos_token == "<|im_start|>"
    plain = transformers.AutoTokenizer.from_pretrained(tmp_path)   # specials in the rendered text are special
    messages = [{"role": "user", "content": "hello the"}, {"role": "assistant", "content": "hello"}]
    for gen in (False, True):
        assert tiny.apply_chat_template(messages, gen) == plain.apply_chat_template(
            messages, add_generation_prompt=gen, tokenize=True, return_dict=False)


# ---- the real file ---------------------------------------------------------------------------------------------

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write a Python function that adds two numbers."},
     {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
     {"role": "user", "content": "Now make it add 3 numbers, e.g. 1 + 22 + 333 = 356 ✓"}],
]


@pytest.fixture(scope="module")
def real() -> PretrainedTokenizer:
    return PretrainedTokenizer.from_gguf(real_gguf_path())


@pytest.fixture(scope="module")
def reference():
    """transformers' tokenizer of the same file: (split_special_tokens=True for user text, the plain one for chats)."""
    path = real_gguf_path()
    transformers = _transformers()
    load = transformers.AutoTokenizer.from_pretrained
    return (load(path.parent, gguf_file=path.name, split_special_tokens=True), load(path.parent, gguf_file=path.name))


NUMERIC_AFTER_SPACE = {"x²³ ½"}  # see test_real_numerics_split_as_the_hub_tokenizer


def test_real_ids_equal_transformers(real, reference):
    split, _ = reference
    texts = [t for t in TEXTS if t not in NUMERIC_AFTER_SPACE]
    assert [real.encode(t) for t in texts] == [split(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert all(real.decode(real.encode(t)) == t for t in TEXTS)
    assert [real.id_to_token(i) for i in real.encode("12345")] == list("12345")   # one token per digit


def test_real_numerics_split_as_the_hub_tokenizer(real, reference):
    # SmolLM2's tokenizer.json (and llama.cpp's "smollm") splits every \p{N} character before GPT-2's regex;
    # transformers' GGUF reader knows no "smollm" and skips that split, which changes " ½" (a space, then a
    # numeric that is not an ASCII digit). The reference is transformers' tokenizer with the hub's pre-tokenizer.
    split, _ = reference
    hub = type(split.backend_tokenizer).from_str(split.backend_tokenizer.to_str())
    hub.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    hub.encode_special_tokens = True
    for text in [*TEXTS, " ½", "in ٣ days", "x ²", "a 1/2"]:
        assert real.encode(text) == hub.encode(text, add_special_tokens=False).ids, text


def test_real_special_ids_and_template(real):
    assert (real.eos_id, real.pad_id, real.bos_id, real.vocab_size) == (2, 2, 1, 49152)
    assert [real.id_to_token(i) for i in range(3)] == SPECIAL
    assert real.chat_template == SMOLLM2_TEMPLATE   # the file carries exactly the template rendered here
    with pytest.raises(ValueError, match=r"U\+0004"):
        real.encode("a\x04b")


@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_real_chat_template_equals_transformers(real, reference, chat, add_generation_prompt):
    _, plain = reference
    messages = CHATS[chat]
    want_text = plain.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    want_ids = plain.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                         return_dict=False)
    assert real.apply_chat_template(messages, add_generation_prompt, tokenize=False) == want_text
    assert real.apply_chat_template(messages, add_generation_prompt) == want_ids


def test_real_chat_keeps_a_spelled_im_end_as_text(real, reference):
    split, plain = reference
    messages = [{"role": "user", "content": "Say <|im_end|> please"}]
    ids = real.apply_chat_template(messages, add_generation_prompt=True)
    text = plain.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert real.decode(ids, skip_special_tokens=False) == text
    assert ids.count(2) == 2                      # the system turn's and the user turn's ends, not the spelled one
    encode = lambda t: split(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    tail = [2, *encode("\n"), 1, *encode("assistant\n")]
    assert ids[-len(tail):] == tail
    user = [1, *encode("user\nSay <|im_end|> please")]   # <|im_start|>, then the whole turn's text as text
    assert ids[:-len(tail)][-len(user):] == user
