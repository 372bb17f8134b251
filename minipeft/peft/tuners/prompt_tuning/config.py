"""`PromptTuningConfig`, named and meant as Hugging Face PEFT's, saved as adapter_config.json."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from minipeft.peft.config import check_field
from minipeft.peft.tuners.soft_prompt import PromptLearningConfig

INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning (Lester et al., 2021): n trainable virtual-token embeddings in front of every input.

    prompt_tuning_init, as in Hugging Face PEFT:
      "RANDOM"        N(0, 1) entries (torch.nn.Embedding's default; far larger than a trained model's
                      token embeddings, which is one reason the paper prefers the two below),
      "SAMPLE_VOCAB"  the embeddings of n token ids drawn uniformly from the vocabulary,
      "TEXT"          the embeddings of `prompt_tuning_init_text`'s tokens, repeated or cut to n.
    TEXT needs the base model's tokenizer, given one of two ways: `tokenizer`, any object with
    `encode(text) -> list of ids` (`load_pretrained(...).tokenizer`, `load_base_model().tokenizer`, a
    transformers tokenizer), used as is and not saved; or, as in Hugging Face, `tokenizer_name_or_path`: with
    no model hub here, the path of a `tokenizer.json` or of a folder holding one (`load_base_model().path`),
    read with minipeft.workshop.data.Tokenizer, which encodes without special tokens. Like Hugging Face, the
    initialisation runs only when the adapter is created for training (inference_mode=False): an adapter
    loaded for inference takes its weights from the file without the tokenizer, while one loaded with
    is_trainable=True is initialised first (so its tokenizer path must still exist), then overwritten.
    """

    PEFT_TYPE: ClassVar[str] = "PROMPT_TUNING"

    prompt_tuning_init: str = "RANDOM"             # "RANDOM" | "SAMPLE_VOCAB" | "TEXT" (see the docstring)
    prompt_tuning_init_text: str | None = None     # TEXT: the text whose token embeddings start the prompt
    tokenizer_name_or_path: str | None = None      # TEXT: a tokenizer.json, or a folder holding one
    tokenizer: Any = field(default=None, repr=False, compare=False)   # TEXT: or an object with encode(text);
    #                                                  not written to adapter_config.json

    def __post_init__(self):
        super().__post_init__()
        init = getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init)  # an enum member's value
        self.prompt_tuning_init = init
        check_field(self, "prompt_tuning_init", init in INITS, " or ".join(repr(i) for i in INITS))
        text, tok = self.prompt_tuning_init_text, self.tokenizer_name_or_path
        check_field(self, "prompt_tuning_init_text", text is None or isinstance(text, str), "None or a str")
        check_field(self, "tokenizer_name_or_path", tok is None or isinstance(tok, str), "None or a str (a path)")
        check_field(self, "tokenizer", self.tokenizer is None or callable(getattr(self.tokenizer, "encode", None)),
                    "None or a tokenizer with an encode(text) method")
        if init == "TEXT":
            check_field(self, "prompt_tuning_init_text", bool(text and text.strip()),
                        "a non-empty text when prompt_tuning_init='TEXT'")
            check_field(self, "tokenizer_name_or_path", bool(tok) or self.tokenizer is not None or self.inference_mode,
                        "the path of a tokenizer.json (or of a folder holding one) when prompt_tuning_init='TEXT', "
                        "e.g. str(load_base_model().path); or pass the tokenizer itself as tokenizer=")

    def to_dict(self) -> dict:
        """The fields adapter_config.json holds: all but `tokenizer` (an object; its text init is in the weights)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "tokenizer"}
