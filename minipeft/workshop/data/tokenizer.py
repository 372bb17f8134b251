"""A thin wrapper over Hugging Face `tokenizers`: train a byte-level BPE, save and load tokenizer.json.

Byte-level means every string maps to bytes first, so `decode(encode(text)) == text` for any text.
Special-token strings inside user text (a literal "<|endoftext|>") are encoded as plain text, never as
the special id: only `add_eos=True` (or the batching code) puts an end-of-text id into a sequence.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from minipeft.io_utils import atomic_write_text

PAD, EOS, SEP = "<|pad|>", "<|endoftext|>", "<|sep|>"
SPECIAL_TOKENS = (PAD, EOS, SEP)  # ids 0, 1, 2 in a tokenizer trained here
PAD_CANDIDATES = (PAD, "<pad>", "[PAD]", "<|padding|>")
EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>", "<|eos|>")
SEP_CANDIDATES = (SEP, "<sep>", "[SEP]")
FILE_NAME = "tokenizer.json"


def _resolve(path: str | os.PathLike) -> Path:
    """A .json path as is; anything else is a folder holding tokenizer.json."""
    path = Path(path)
    return path if path.suffix == ".json" else path / FILE_NAME


def _check_text(text, what: str) -> None:
    """Text must be a str that UTF-8 can encode (a lone surrogate, e.g. from a bad decode, cannot be)."""
    if not isinstance(text, str):
        hint = " (decode bytes first: data.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
        raise TypeError(f"{what} must be a str, got {type(text).__name__}{hint}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} holds a lone surrogate {text[e.start]!r} at index {e.start}, which is not text "
                         "UTF-8 can encode; it comes from decoding bytes with errors='surrogateescape': decode "
                         "with errors='replace' instead") from None


class Tokenizer:
    """Byte-level BPE tokenizer with pad, end-of-text and (optional) separator ids."""

    def __init__(self, hf: HFTokenizer, source: str = "<memory>"):
        self._hf = hf
        self._hf.encode_special_tokens = True  # user text that spells "<|endoftext|>" stays text
        self.source = source
        self._eos_id = self._first_id(EOS_CANDIDATES)
        self._sep_id = self._first_id(SEP_CANDIDATES)
        pad = self._first_id(PAD_CANDIDATES)
        if pad is None:
            pad = self._eos_id  # the GPT-2 convention: pad with end-of-text, masked out anyway
        if pad is None:
            raise ValueError(
                f"{source}: the tokenizer has no pad token ({', '.join(PAD_CANDIDATES)}) and no end-of-text "
                f"token ({', '.join(EOS_CANDIDATES)}) to pad with. Fix: add one as a special token, e.g. "
                f"`hf.add_special_tokens(['{PAD}', '{EOS}'])` and save it again, or use Tokenizer.train."
            )
        self._pad_id = pad

    def _first_id(self, candidates: Sequence[str]) -> int | None:
        for tok in candidates:
            i = self._hf.token_to_id(tok)
            if i is not None:
                return i
        return None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> Tokenizer:
        """Train a byte-level BPE with <|pad|>=0, <|endoftext|>=1, <|sep|>=2; same texts, same result."""
        n_base = 256 + len(SPECIAL_TOKENS)
        if isinstance(texts, (str, bytes)):   # iterating it would train on its single characters
            raise TypeError(f"Tokenizer.train: texts must be a list of strings, got a single {type(texts).__name__}; "
                            "pass [text]")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"Tokenizer.train: vocab_size must be an int, got {vocab_size!r}")
        if vocab_size < n_base:
            raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {n_base} "
                             f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load any tokenizer.json (a file, or a folder that holds one)."""
        file = _resolve(path)
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer file at {file}; train one with Tokenizer.train(texts)")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception with serde's message ("EOF while parsing ...")
            raise ValueError(f"{file} is not a valid tokenizer.json ({e}); it is truncated or corrupted: save the "
                             "tokenizer again (Tokenizer.save) or delete it so it is rebuilt") from None
        return cls(hf, source=str(file))

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json atomically (to `path` if it ends in .json, else into folder `path`)."""
        return atomic_write_text(_resolve(path), self._hf.to_str())

    def to_str(self) -> str:
        """The tokenizer.json text."""
        return self._hf.to_str()

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's embedding rows)."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """Id used to pad batches (end-of-text when the tokenizer has no pad token)."""
        return self._pad_id

    @property
    def eos_id(self) -> int | None:
        """End-of-text id, or None if the tokenizer has none."""
        return self._eos_id

    @property
    def sep_id(self) -> int | None:
        """Separator id, or None if absent."""
        return self._sep_id

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None."""
        return self._hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """Token string of an id, or None."""
        return self._hf.id_to_token(int(i))

    def _with_eos(self, ids: list[int], add_eos: bool) -> list[int]:
        if not add_eos:
            return ids
        if self._eos_id is None:
            raise ValueError(f"{self.source}: add_eos=True but the tokenizer has no end-of-text token")
        return [*ids, self._eos_id]

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        """Token ids of text, with the end-of-text id appended if add_eos."""
        _check_text(text, "encode: text")
        return self._with_eos(self._hf.encode(text, add_special_tokens=False).ids, add_eos)

    def encode_batch(self, texts: Sequence[str], add_eos: bool = False) -> list[list[int]]:
        """Token ids of many texts (encoded in parallel by `tokenizers`)."""
        if isinstance(texts, (str, bytes)):
            raise TypeError(f"encode_batch: texts must be a list of strings, got a single {type(texts).__name__}; "
                            "use encode(text) for one text, or pass [text]")
        texts = list(texts)
        for i, text in enumerate(texts):
            _check_text(text, f"encode_batch: texts[{i}]")
        encode = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)  # _fast skips offsets (>=0.21)
        encs = encode(texts, add_special_tokens=False)
        return [self._with_eos(e.ids, add_eos) for e in encs]

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of task prompts as the model expects them: here plain text (encode_batch); a chat model's
        tokenizer wraps each in its chat template as a user turn (minipeft.workshop.llm.tokenizer)."""
        return self.encode_batch(texts)

    def encode_completions(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of the completions that follow encode_prompts' prompts (a chat model's start a new turn)."""
        return self.encode_batch(texts)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids (a list or a 1-D integer array); special tokens dropped by default."""
        if getattr(ids, "ndim", 1) != 1:
            raise ValueError(f"decode: ids must be one sequence (a list or a 1-D array), got shape {ids.shape}; "
                             "decode each row: [tok.decode(row) for row in ids]")
        ids = list(ids)
        n = self.vocab_size
        for pos, i in enumerate(ids):
            if isinstance(i, (bool, float, str, bytes)) or not hasattr(i, "__index__"):
                raise TypeError(f"decode: ids[{pos}] = {i!r} is not an integer token id")
            if not 0 <= int(i) < n:
                raise IndexError(f"decode: ids[{pos}] = {int(i)} is not a token id of this tokenizer (ids are 0 to "
                                 f"{n - 1}); was it produced by a model with a larger vocabulary?")
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, pad_id={self.pad_id}, eos_id={self.eos_id}, "
                f"sep_id={self.sep_id}, source={self.source!r})")
