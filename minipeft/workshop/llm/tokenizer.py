"""A pretrained model's tokenizer: byte-level BPE from GGUF metadata or a tokenizer.json, and its chat template.

`PretrainedTokenizer` is a `minipeft.workshop.data.Tokenizer` (same encode, decode, batching and ids), built from
what a model ships instead of trained here: the vocabulary, merges and special tokens from a GGUF file's
`tokenizer.ggml.*` metadata (as llama.cpp and transformers read them) or from Hugging Face's tokenizer.json,
with eos/bos/pad taken from the model's files rather than guessed from token names. As in the base class,
user text that spells a special token ("<|im_end|>") is encoded as text: only `add_eos` and the chat
template put special ids into a sequence.

The chat template is rendered without a template engine (minipeft.workshop.llm.chat_template): SmolLM2's ChatML
template is recognised by its exact text and rendered in Python; any other template is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from minipeft.io_utils import write_files_as_unit
from minipeft.workshop.data.tokenizer import SEP_CANDIDATES, Tokenizer, _resolve
from minipeft.workshop.llm.chat_template import chatml_default_system, chatml_pieces
from minipeft.workshop.llm.gguf_file import read_gguf_metadata

CONTROL, USER_DEFINED = 3, 4           # llama.cpp's token types: control tokens are special, user-defined ones plain
CONFIG_NAME = "tokenizer_config.json"  # Hugging Face's file beside tokenizer.json: special tokens, chat template
TEMPLATE_NAME = "chat_template.jinja"  # where newer transformers versions save the chat template instead


def _smollm():
    # llama.cpp's "smollm" and the hub's tokenizer.json: every digit alone, then GPT-2's byte-level split
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


PRE_TOKENIZERS = {  # tokenizer.ggml.pre -> the pre-tokenizer its merges were learned with
    "smollm": _smollm,
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
}


class PretrainedTokenizer(Tokenizer):
    """A pretrained model's byte-level BPE: its own eos/pad/bos ids and its ChatML chat template."""

    def __init__(self, hf: HFTokenizer, source: str = "<memory>", *, eos_id: int | None = None,
                 pad_id: int | None = None, bos_id: int | None = None, chat_template: str | None = None):
        if eos_id is None and pad_id is None:
            super().__init__(hf, source)       # nothing given: find them by name, as the base class does
        else:
            self._hf, self.source = hf, source
            self._hf.encode_special_tokens = True  # user text that spells "<|im_end|>" stays text
            self._eos_id, self._sep_id = eos_id, self._first_id(SEP_CANDIDATES)
            self._pad_id = pad_id if pad_id is not None else eos_id
        self._bos_id = bos_id
        for what, i in (("eos_id", self._eos_id), ("pad_id", self._pad_id), ("bos_id", bos_id)):
            if i is not None and not (isinstance(i, int) and 0 <= i < self.vocab_size):
                raise ValueError(f"{source}: {what}={i!r} is not a token id of this tokenizer (0 to "
                                 f"{self.vocab_size - 1}); the model's files disagree with its vocabulary")
        # bytes the vocabulary cannot spell (SmolLM2 lacks 21: six control characters, bytes no UTF-8 text holds)
        absent = [b for b, c in enumerate(byte_chars()) if hf.token_to_id(c) is None]
        self._absent_bytes = bytes(absent) if isinstance(hf.decoder, decoders.ByteLevel) else b""
        self._present_bytes = bytes(sorted(set(range(256)) - set(self._absent_bytes)))
        self._default_system = chatml_default_system(chat_template) if chat_template is not None else None
        self._chat_template = chat_template

    def _check_spellable(self, text: str, what: str) -> None:
        """Refuse text with a byte that has no token: transformers drops such bytes silently, losing text."""
        if not self._absent_bytes or not isinstance(text, str):
            return  # the base class names a non-str text
        if text.encode("utf-8", "surrogatepass").translate(None, self._present_bytes):
            i, c = next((i, c) for i, c in enumerate(text)
                        if c.encode("utf-8", "surrogatepass").translate(None, self._present_bytes))
            raise ValueError(f"{what} holds {c!r} (U+{ord(c):04X}) at index {i}, a character this vocabulary has no "
                             f"byte tokens for ({self.source} lacks bytes "
                             f"{' '.join(f'{b:02x}' for b in self._absent_bytes)}): remove or replace it")

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        """Token ids of text (see Tokenizer.encode); text the vocabulary cannot spell is refused."""
        self._check_spellable(text, "encode: text")
        return super().encode(text, add_eos)

    def encode_batch(self, texts: Sequence[str], add_eos: bool = False) -> list[list[int]]:
        """Token ids of many texts (see Tokenizer.encode_batch); text the vocabulary cannot spell is refused."""
        if not isinstance(texts, (str, bytes)):
            texts = list(texts)
            for i, text in enumerate(texts):
                self._check_spellable(text, f"encode_batch: texts[{i}]")
        return super().encode_batch(texts, add_eos)

    @property
    def chat_template(self) -> str | None:
        """The model's chat template (jinja text, a ChatML one), or None."""
        return self._chat_template

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id, or None (SmolLM2's is <|im_start|>; encode never adds it)."""
        return self._bos_id

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, object], source: str = "<GGUF metadata>") -> PretrainedTokenizer:
        """Build the tokenizer a GGUF file describes (`read_gguf(path).metadata`): vocabulary, merges, special ids."""
        model, pre = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre")
        if model != "gpt2":
            raise ValueError(f"{source}: tokenizer.ggml.model = {model!r}; minipeft builds byte-level BPE tokenizers "
                             "('gpt2', as SmolLM2's), not SentencePiece ('llama') or others: use the model's "
                             "tokenizer.json with PretrainedTokenizer.from_file")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"{source}: tokenizer.ggml.pre = {pre!r} is a pre-tokenizer minipeft does not know "
                             f"(known: {', '.join(PRE_TOKENIZERS)}); its merges would split text wrongly: use the "
                             "model's tokenizer.json with PretrainedTokenizer.from_file")
        for flag in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"):
            if metadata.get(flag) is True:
                raise ValueError(f"{source}: {flag} is true: the model expects that id around every text, which "
                                 "minipeft's encode does not add (it gives the text's ids only)")
        tokens = _field(metadata, "tokenizer.ggml.tokens", str, source)
        merges = _field(metadata, "tokenizer.ggml.merges", str, source)
        types = _field(metadata, "tokenizer.ggml.token_type", int, source, required=False) or [1] * len(tokens)
        ids = {k: _field(metadata, f"tokenizer.ggml.{k}_token_id", int, source, required=(k == "eos"), array=False)
               for k in ("eos", "bos", "padding", "unknown")}
        if len(types) != len(tokens):
            raise ValueError(f"{source}: {len(tokens)} tokens but {len(types)} token types")
        hf = _build_bpe(tokens, merges, PRE_TOKENIZERS[pre](), source)
        special = [i for i, t in enumerate(types) if t == CONTROL] + [i for i in ids.values() if i is not None]
        hf.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                               for i in sorted(set(special)) if 0 <= i < len(tokens)])
        hf.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                       for i, t in enumerate(types) if t == USER_DEFINED])
        template = metadata.get("tokenizer.chat_template")
        return cls(hf, source, eos_id=ids["eos"], pad_id=ids["padding"], bos_id=ids["bos"],
                   chat_template=template if isinstance(template, str) else None)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> PretrainedTokenizer:
        """The tokenizer of a GGUF file, read from its metadata alone (its tensors are not read)."""
        return cls.from_gguf_metadata(read_gguf_metadata(path), source=str(path))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PretrainedTokenizer:
        """A tokenizer.json (or a folder holding one), with the special tokens and chat template of the
        tokenizer_config.json (and chat_template.jinja) beside it when present, as the hub gives them."""
        file = _resolve(path)
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer file at {file}; pass a tokenizer.json or a folder holding one (a "
                                    "model's folder from the Hugging Face hub)")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception with serde's message
            raise ValueError(f"{file} is not a valid tokenizer.json ({e}); it is truncated or corrupted: copy it "
                             "again from the model's files") from None
        config = _read_config(file.parent / CONFIG_NAME)
        jinja = file.parent / TEMPLATE_NAME
        template = jinja.read_text(encoding="utf-8") if jinja.is_file() else config.get("chat_template")
        if template is not None and not isinstance(template, str):
            raise ValueError(f"{file.parent / CONFIG_NAME}: chat_template must be one template string, got "
                             f"{type(template).__name__}; minipeft renders one ChatML template")

        def token_id(key: str) -> int | None:
            tok = config.get(key)
            tok = tok.get("content") if isinstance(tok, dict) else tok   # an AddedToken saved as a dict
            if tok is None:
                return None
            i = hf.token_to_id(tok)
            if i is None:
                raise ValueError(f"{file.parent / CONFIG_NAME}: {key} {tok!r} is not in the vocabulary of {file}")
            return i

        return cls(hf, str(file), eos_id=token_id("eos_token"), pad_id=token_id("pad_token"),
                   bos_id=token_id("bos_token"), chat_template=template)

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json and tokenizer_config.json (special tokens, chat template) together, atomically."""
        file = _resolve(path)
        config = {key: self.id_to_token(i) for key, i in
                  (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id)) if i is not None}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        write_files_as_unit(file.parent, {file.name: self.to_str().encode(),
                                          CONFIG_NAME: json.dumps(config, indent=2, ensure_ascii=False).encode()})
        return file

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = True) -> list[int] | str:
        """The conversation as token ids (or its text with tokenize=False), as transformers renders this template.

        The template's markup (<|im_start|>, <|im_end|>) becomes special ids; message text is encoded as text,
        so a message that spells "<|im_end|>" cannot end its turn (transformers, which tokenizes the rendered
        string, would make it the special id).
        """
        if self.chat_template is None:
            raise ValueError(f"{self.source}: this tokenizer has no chat template (tokenizer.chat_template in a GGUF "
                             "file, chat_template in tokenizer_config.json); format the conversation yourself")
        pieces = chatml_pieces(messages, add_generation_prompt, self._default_system)
        if not tokenize:
            return "".join(text for text, _ in pieces)
        ids: list[int] = []
        for text, special in pieces:
            if special:
                i = self.token_to_id(text)
                if i is None:
                    raise ValueError(f"{self.source}: the chat template needs the token {text!r}, which is not in "
                                     "the vocabulary")
                ids.append(i)
            else:
                ids.extend(self.encode(text))
        return ids

    def __repr__(self) -> str:
        return (f"PretrainedTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, pad_id={self.pad_id}, "
                f"bos_id={self.bos_id}, chat_template={'ChatML' if self.chat_template else None}, "
                f"source={self.source!r})")


def byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: the character that spells byte b, for b in 0..255.

    Printable Latin-1 bytes spell themselves; the other 68 (controls, space, ...) take the characters from
    U+0100 on, in byte order, so that a space is 'Ġ' (U+0120) and a newline 'Ċ' (U+010A).
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, n = [], 0
    for b in range(256):
        chars.append(chr(b) if b in printable else chr(0x100 + n))
        n += b not in printable
    return chars


def _build_bpe(tokens: list[str], merges: list[str], pre_tokenizer, source: str) -> HFTokenizer:
    """A byte-level BPE model from a token list (id = position) and merges "a b", checked for consistency."""
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if vocab.setdefault(tok, i) != i:
            raise ValueError(f"{source}: token {tok!r} appears twice in the vocabulary (ids {vocab[tok]} and {i})")
    pairs = []
    for j, merge in enumerate(merges):
        parts = merge.split(" ")
        if len(parts) != 2 or not all(p in vocab for p in parts) or "".join(parts) not in vocab:
            raise ValueError(f"{source}: merge {j} {merge!r} is not two vocabulary tokens whose join is one too")
        pairs.append((parts[0], parts[1]))
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, unk_token=None, fuse_unk=False,
                                byte_fallback=False))
    hf.pre_tokenizer = pre_tokenizer
    hf.decoder = decoders.ByteLevel()
    return hf


def _field(metadata: Mapping, key: str, kind: type, source: str, required: bool = True, array: bool = True):
    """metadata[key], checked to be a list of `kind` (or one `kind` with array=False); None if absent and optional."""
    value = metadata.get(key)
    if value is None and not required:
        return None
    items = value if array and isinstance(value, list) else [value] if not array else None
    if items is None or not all(isinstance(v, kind) and not isinstance(v, bool) for v in items):
        want = f"a list of {kind.__name__}" if array else f"a {kind.__name__}"
        raise ValueError(f"{source}: {key} = {str(value)[:80]} is not {want}; the metadata does not describe a "
                         "tokenizer minipeft can build")
    return value


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the model's files or delete it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config
