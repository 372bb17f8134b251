"""`PromptTuningConfig`, named and meant as Hugging Face PEFT's, saved as adapter_config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
    TEXT needs the tokenizer. With no model hub here, `tokenizer_name_or_path` is the path of a
    `tokenizer.json` or of a folder holding one (`load_base_model().path` is such a folder), read with
    minipeft.data.Tokenizer; the text is encoded without special tokens. Like Hugging Face, the
    initialisation runs only when the adapter is created for training (inference_mode=False): an adapter
    loaded for inference takes its weights from the file without the tokenizer, while one loaded with
    is_trainable=True is initialised first (so its tokenizer path must still exist), then overwritten.
    """

    PEFT_TYPE: ClassVar[str] = "PROMPT_TUNING"
    UNSUPPORTED_FIELDS: ClassVar[dict[str, tuple]] = {"tokenizer_kwargs": (None, {})}

    prompt_tuning_init: str = "RANDOM"             # "RANDOM" | "SAMPLE_VOCAB" | "TEXT" (see the docstring)
    prompt_tuning_init_text: str | None = None     # TEXT: the text whose token embeddings start the prompt
    tokenizer_name_or_path: str | None = None      # TEXT: a tokenizer.json, or a folder holding one

    def __post_init__(self):
        super().__post_init__()
        init = getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init)  # an enum member's value
        self.prompt_tuning_init = init
        check_field(self, "prompt_tuning_init", init in INITS, " or ".join(repr(i) for i in INITS))
        text, tok = self.prompt_tuning_init_text, self.tokenizer_name_or_path
        check_field(self, "prompt_tuning_init_text", text is None or isinstance(text, str), "None or a str")
        check_field(self, "tokenizer_name_or_path", tok is None or isinstance(tok, str), "None or a str (a path)")
        if init == "TEXT":
            check_field(self, "prompt_tuning_init_text", bool(text and text.strip()),
                        "a non-empty text when prompt_tuning_init='TEXT'")
            check_field(self, "tokenizer_name_or_path", bool(tok),
                        "the path of a tokenizer.json (or of a folder holding one) when prompt_tuning_init='TEXT', "
                        "e.g. str(load_base_model().path)")
