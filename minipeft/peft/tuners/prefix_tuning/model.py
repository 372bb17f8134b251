"""`PrefixTuningModel`: trainable keys and values in front of every attention layer's, through `prefix_kv`.

In layer l every query attends over [K_prefix(l) ; K(x)] with values [V_prefix(l) ; V(x)]: the n prefix
entries act like n extra tokens that every position sees, not computed from any input. As in Hugging Face
PEFT, whose prefix is transformers' past_key_values, they take positions 0..n-1 and the input's T tokens
n..n+T-1 (GPT.forward), so a prefix file means the same in both libraries, and n + T must fit the context
(`virtual_positions` is n, which generation and the data loaders subtract). Only the prefix table trains;
the base model stays frozen. With a KV cache the prefixes enter on the first call (cache empty) and stay in
the cache after that.
"""

from __future__ import annotations

from minipeft import ops
from minipeft.autograd import Tensor, no_grad
from minipeft.nn.layers import Embedding, Linear
from minipeft.nn.module import Module, ModuleList, Parameter
from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.prefix_tuning.config import PrefixTuningConfig
from minipeft.peft.tuners.prefix_tuning.op import prefix_projection
from minipeft.peft.tuners.soft_prompt import PROMPT_EMBEDDINGS, SoftPromptTuner


class Tanh(Module):
    """tanh as a module, so the MLP reads `transform.0`, `transform.1`, `transform.2` as Hugging Face's does."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class PrefixEncoder(Module):
    """One adapter's prefix table (n, 2 L d): `embedding.weight` itself, or the MLP applied to it while training."""

    def __init__(self, config: PrefixTuningConfig, dtype):
        n, d, L, h = config.num_virtual_tokens, config.token_dim, config.num_layers, config.encoder_hidden_size
        self.projected = config.prefix_projection and not config.inference_mode
        self.embedding = Embedding(n, d if self.projected else 2 * L * d, std=1.0)   # N(0, 1), torch's default
        self.transform = ModuleList([Linear(d, h), Tanh(), Linear(h, 2 * L * d)]) if self.projected else None
        for p in self.parameters():
            p.data = p.data.astype(dtype)

    def forward(self) -> Tensor:
        """The prefix table (n, 2 L d)."""
        if not self.projected:
            return self.embedding.weight
        first, last = self.transform[0], self.transform[2]
        return prefix_projection(self.embedding.weight, first.weight, first.bias, last.weight, last.bias)

    def fold(self) -> None:
        """Replace the MLP by the table it makes now: the same prefixes, no MLP left (inference, saving)."""
        if not self.projected:
            return
        trainable = self.embedding.weight.requires_grad
        with no_grad():
            table = self().data.copy()                                    # (n, 2 L d)
        self.embedding.weight = Parameter(table, requires_grad=trainable)
        self.embedding.embedding_dim = table.shape[1]
        self.transform, self.projected = None, False


def split_prefix_table(table: Tensor, n_layer: int) -> list[tuple[Tensor, Tensor]]:
    """Hugging Face's layout (n, 2 L d) -> per layer l the pair (columns of block 2l, of block 2l + 1), each (n, d)."""
    n, width = table.shape
    kv = ops.reshape(table, (n, 2 * n_layer, width // (2 * n_layer)))   # (n, 2L, d)
    return [(ops.getitem(kv, (slice(None), 2 * i)), ops.getitem(kv, (slice(None), 2 * i + 1))) for i in range(n_layer)]


class PrefixTuningModel(SoftPromptTuner):
    """The user's GPT with prefix-tuning adapters; the active one's keys and values precede every layer's."""

    def _make_encoder(self, config: PrefixTuningConfig, name: str) -> PrefixEncoder:
        return PrefixEncoder(config, self.model.get_input_embeddings().weight.dtype)

    @property
    def virtual_positions(self) -> int:
        """The n positions the active adapter's prefix takes before the tokens (Hugging Face's placement)."""
        active = self._active()
        return 0 if active is None else active[1].num_virtual_tokens

    def hidden_states(self, ids=None, *, inputs_embeds=None, prefix_kv=None, kv_cache=None):
        """ln_f of the last block (B, T, C) with the active adapter's prefixes in every attention layer; the
        tokens sit at positions n..n+T-1, after the n prefix entries."""
        active = self._active()
        if active is None or (kv_cache is not None and not kv_cache.empty):
            # no adapter, or the cache already holds the prefixes
            return self.model.hidden_states(ids, inputs_embeds=inputs_embeds, prefix_kv=prefix_kv, kv_cache=kv_cache)
        if prefix_kv is not None:
            raise ValueError("prefix tuning: the adapter supplies prefix_kv itself; do not pass one (or disable the "
                             "adapter with disable_adapter() to pass your own)")
        name, _ = active
        pairs = split_prefix_table(self.prompt_encoder[name](), self.model.config.n_layer)   # n_layer x (n, d) k, v
        return self.model.hidden_states(ids, inputs_embeds=inputs_embeds, prefix_kv=pairs, kv_cache=kv_cache)

    def fold_prefix_projection(self, adapter_name: str | None = None) -> None:
        """Fold adapter `adapter_name`'s MLP (active one by default) into its plain prefix table; outputs unchanged."""
        name = adapter_name or self.active_adapter
        if name not in self.prompt_encoder:
            raise KeyError(f"no prefix-tuning adapter named {name!r}; adapters are {sorted(self.peft_config)}")
        self.prompt_encoder[name].fold()

    # ---- the adapter file: the folded table as `prompt_embeddings` ------------------------------------
    def adapter_file_keys(self, name: str) -> dict[str, str]:
        if self.prompt_encoder[name].projected:
            raise ValueError(
                f"adapter {name!r} makes its prefixes with the reparameterization MLP (prefix_projection=True, "
                "inference_mode=False), but an adapter file holds the folded prefix table, which cannot be loaded "
                "back into an MLP: load it with is_trainable=False (inference_mode), or set prefix_projection to false "
                "in its adapter_config.json to train the folded table further")
        return super().adapter_file_keys(name)

    def adapter_file_arrays(self, name: str) -> dict:
        """As saved by Hugging Face: `prompt_embeddings` is the prefix table, the MLP's output if it has one."""
        encoder = self.prompt_encoder[name]
        if not encoder.projected:
            return super().adapter_file_arrays(name)
        own = f"{self.PROMPT_SLOT}.{name}."
        params = dict(self.named_parameters())
        keys = BaseTuner.adapter_file_keys(self, name)                      # the modules_to_save copies, if any
        arrays = {k: params[v].data for k, v in keys.items() if not v.startswith(own)}
        with no_grad():
            arrays[PROMPT_EMBEDDINGS] = encoder().data                    # (n, 2 L d), the fold of the MLP
        return arrays

