"""`PromptTuningModel`: n virtual tokens in front of every input, through the model's `inputs_embeds` hook.

    h = model([P ; embed(ids)])[:, n:]      P (n, C) trains; the base model, its embedding included, stays frozen

The virtual tokens take positions 0..n-1 (and count against the context); the tokens follow at n...
Outputs at the virtual positions are dropped, so hidden states, logits and the loss line up with `ids`
exactly as the base model's do: padding, loss masks and generation need nothing new. With a KV cache the
prompt enters on the first call (cache empty); later calls feed only new tokens, whose positions the cache
already counts from n.
"""

from __future__ import annotations

import math
from pathlib import Path

from minipeft import backend, ops
from minipeft.autograd import Tensor, no_grad
from minipeft.nn.layers import Embedding
from minipeft.nn.module import Module
from minipeft.peft.tuners.prompt_tuning.config import PromptTuningConfig
from minipeft.peft.tuners.prompt_tuning.op import prepend_prompt
from minipeft.peft.tuners.soft_prompt import SoftPromptTuner


def text_init_ids(text_ids: list[int], n: int) -> list[int]:
    """Hugging Face's TEXT rule: the text's token ids cut to n, or repeated until n are there."""
    if not text_ids:
        raise ValueError("prompt_tuning_init_text encodes to no token; give a text with at least one word")
    reps = math.ceil(n / len(text_ids))
    return (list(text_ids) * reps)[:n]


def read_init_text(config: PromptTuningConfig) -> list[int]:
    """The token ids of config.prompt_tuning_init_text: encoded by config.tokenizer (any object with encode()),
    or by the tokenizer file config.tokenizer_name_or_path names."""
    if config.tokenizer is not None:
        return [int(i) for i in config.tokenizer.encode(config.prompt_tuning_init_text)]
    if not config.tokenizer_name_or_path:
        raise ValueError("PromptTuningConfig: prompt_tuning_init='TEXT' needs the base model's tokenizer to start the "
                         "prompt from the text: pass tokenizer= (any object with encode(text)) or "
                         "tokenizer_name_or_path= (a tokenizer.json); an adapter loaded with is_trainable=True is "
                         "initialised before its weights are read, so set tokenizer_name_or_path in its "
                         "adapter_config.json")
    from tokenizers import Tokenizer  # noqa: PLC0415 (only TEXT init reads a tokenizer file)

    path = Path(config.tokenizer_name_or_path)
    file = path if path.suffix == ".json" else path / "tokenizer.json"     # a file, or a folder that holds one
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for a missing or unreadable file
        raise ValueError(f"PromptTuningConfig.tokenizer_name_or_path={config.tokenizer_name_or_path!r}: no readable "
                         f"tokenizer.json at {file} ({e})") from None
    return tok.encode(config.prompt_tuning_init_text, add_special_tokens=False).ids


class PromptEmbedding(Module):
    """One adapter's virtual tokens: `embedding.weight` (n, C), as Hugging Face's PromptEmbedding holds them."""

    def __init__(self, config: PromptTuningConfig, word_embeddings: Embedding):
        n, C = config.num_virtual_tokens, config.token_dim
        W = word_embeddings.weight
        self.embedding = Embedding(n, C, std=1.0)               # RANDOM: N(0, 1), torch.nn.Embedding's default
        if not config.inference_mode and config.prompt_tuning_init != "RANDOM":
            if config.prompt_tuning_init == "SAMPLE_VOCAB":
                ids = backend.rng().integers(0, W.shape[0], size=n)
            else:
                ids = text_init_ids(read_init_text(config), n)
                bad = [i for i in ids if not 0 <= i < W.shape[0]]
                if bad:
                    which = config.tokenizer_name_or_path if config.tokenizer is None else config.tokenizer
                    raise ValueError(f"PromptTuningConfig: the tokenizer {which!r} gives token ids {bad[:4]} outside "
                                     f"the model's vocabulary of {W.shape[0]}; use the base model's own tokenizer")
            with no_grad():
                self.embedding.weight.data = W.data[backend.asarray(ids, dtype="int64")].copy()   # (n, C) copies
        self.embedding.weight.data = self.embedding.weight.data.astype(W.dtype)

    def forward(self) -> Tensor:
        return self.embedding.weight                           # (n, C)


class PromptTuningModel(SoftPromptTuner):
    """The user's model with prompt-tuning adapters; the active one's virtual tokens precede every input."""

    def _make_encoder(self, config: PromptTuningConfig, name: str) -> PromptEmbedding:
        return PromptEmbedding(config, self.model.get_input_embeddings())

    @property
    def virtual_positions(self) -> int:
        active = self._active()
        return 0 if active is None else active[1].num_virtual_tokens

    def _check_fits(self, n: int, T: int) -> None:
        ctx = self.model.config.context_length
        if n >= ctx:   # the virtual tokens alone fill the context: no input length would fit
            raise ValueError(f"prompt tuning: num_virtual_tokens={n} fills the model's context length {ctx}, leaving "
                             f"no position for an input token; use at most {ctx - 1} virtual tokens")
        if n + T > ctx:
            raise ValueError(f"prompt tuning: {n} virtual tokens + {T} input tokens = {n + T} positions exceed the "
                             f"model's context length {ctx}; truncate the input to at most {ctx - n} tokens, or use "
                             "fewer virtual tokens (num_virtual_tokens)")

    def hidden_states(self, ids=None, *, inputs_embeds=None, prefix_kv=None, kv_cache=None):
        """The last hidden states at the input positions (B, T, C), the virtual tokens' positions dropped."""
        active = self._active()
        if active is None or (kv_cache is not None and not kv_cache.empty):
            # no prompt, or the cache already holds it (and counts its positions)
            return self.model.hidden_states(ids, inputs_embeds=inputs_embeds, prefix_kv=prefix_kv, kv_cache=kv_cache)
        name, config = active
        n = config.num_virtual_tokens
        if inputs_embeds is None:
            if ids is None:
                raise ValueError("prompt tuning: pass ids (B, T) or inputs_embeds (B, T, C)")
            arr = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
            if arr.ndim == 2:
                self._check_fits(n, arr.shape[1])   # naming both lengths; check_input checks the rest
            inputs_embeds = self.model.get_input_embeddings()(self.model.check_input(arr, past=n))  # (B, T, C)
        elif ids is not None:
            raise ValueError("prompt tuning: pass exactly one of ids and inputs_embeds, got both")
        else:
            self._check_fits(n, inputs_embeds.shape[1])
        x = prepend_prompt(self.prompt_encoder[name](), inputs_embeds)                 # (B, n + T, C)
        h = self.model.hidden_states(inputs_embeds=x, prefix_kv=prefix_kv, kv_cache=kv_cache)
        return ops.getitem(h, (slice(None), slice(n, None))) if n else h              # (B, T, C)
