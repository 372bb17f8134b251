"""`SelectiveLayer`: a base module whose selected parameters are replaced, per adapter, by trained copies.

Training base values in place (as BitFit is usually written, `requires_grad` on the biases) would change
the base model itself: a second task could not share it, and "disable the adapter" would have nothing to
go back to. Here each adapter holds a trainable copy of each tensor it selects, and the wrapped module's own
op runs with the copy in place of the original:

    y = op(x, weight', bias')      weight' = the adapter's copy if selected, else the base's weight

so the gradient, the AdamW state and the weight decay of the copy are exactly those in-place training
would give the original (same op, same values), while the original stays bit-identical. merge() writes the
copies into the base (keeping the originals, so unmerge() restores them exactly).

Tied embeddings: the GPT's head reads `wte.weight`. A wrapper's `weight` is a property returning the
active copy, so when the embedding table is selected the head and the lookup use the same trained tensor,
and its gradient is the sum of both paths, as for the tied original.
"""

from __future__ import annotations

from minipeft.autograd import Tensor
from minipeft.peft.tuners.substitution import SubstitutionLayer


class SelectiveLayer(SubstitutionLayer):
    """Per adapter, a trainable copy of each selected parameter: `selective_weight.<adapter>`, `selective_bias...`."""

    adapter_layer_names = ("selective_weight", "selective_bias")   # the copies, by adapter
    other_param_names = ("selective_params",)                      # adapter -> names of the parameters it trains

    def substitute(self, name: str, pname: str) -> Tensor:
        return getattr(self, f"selective_{pname}")[name]

    def create_adapter(self, adapter_name: str, config, pnames: list[str]) -> None:
        """A copy of each base parameter in `pnames`, equal to it bit for bit."""
        for pname in pnames:
            original = getattr(self.base_layer, pname)
            getattr(self, f"selective_{pname}")[adapter_name] = type(original)(original.data.copy())
        self.selective_params[adapter_name] = tuple(pnames)

    def merge_into_base(self, name: str) -> None:
        """Write the adapter's copies into the base parameters (the originals kept, for unmerge)."""
        for pname in self.trains(name):
            base = getattr(self.base_layer, pname)
            self._merged_originals[pname] = base.data
            base.data = self.substitute(name, pname).data.copy()

    def unmerge_from_base(self) -> None:
        """Put the original base values back, bit for bit."""
        for pname, data in self._merged_originals.items():
            getattr(self.base_layer, pname).data = data
        self._merged_originals.clear()

    def extra_repr(self) -> str:
        return f"{type(self.base_layer).__name__}, adapters={ {n: list(p) for n, p in self.selective_params.items()} }"
