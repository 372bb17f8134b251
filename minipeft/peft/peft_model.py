"""`get_peft_model` and `PeftModel`: the Hugging Face PEFT API over our tuners."""

from __future__ import annotations

import contextlib
import warnings

from minipeft import backend
from minipeft.nn.module import Module
from minipeft.peft import save_load
from minipeft.peft.config import PeftConfig
from minipeft.peft.registry import PEFT_TYPE_TO_TUNER
from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.base_layer import BaseTunerLayer


class PeftModel(Module):
    """A base model with one or more adapters of one method; call it like the base model."""

    def __init__(self, model: Module, config: PeftConfig, adapter_name: str = "default"):
        if isinstance(model, PeftModel):
            raise TypeError("this model is already a PeftModel; use add_adapter() to add another adapter")
        if any(isinstance(m, BaseTunerLayer) for _, m in model.named_modules()):
            raise ValueError("this model already holds adapter layers (another PeftModel wraps it); add adapters "
                             "through that PeftModel's add_adapter(), or unload() it first")
        if config.peft_type not in PEFT_TYPE_TO_TUNER:
            raise ValueError(f"unsupported peft_type {config.peft_type!r}; registered: {sorted(PEFT_TYPE_TO_TUNER)}")
        self.base_fingerprint = save_load.fingerprint(model)   # taken before any merge can change W0
        self.base_model: BaseTuner = PEFT_TYPE_TO_TUNER[config.peft_type](model, config, adapter_name)

    # ---- the HF PEFT surface -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def hidden_states(self, *args, **kwargs):
        """The last hidden states (B, T, C) with the method applied (see minipeft.loss.causal_lm_loss)."""
        return self.base_model.hidden_states(*args, **kwargs)

    def head(self, h):
        """The LM head on hidden states h: logits (..., vocab)."""
        return self.base_model.head(h)

    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        return self.base_model.peft_config

    @property
    def active_adapter(self) -> str:
        return self.base_model.active_adapter

    @property
    def active_adapters(self) -> list[str]:
        """The active adapter as a list, as Hugging Face PEFT names it (one is active at a time here)."""
        return [] if self.active_adapter is None else [self.active_adapter]

    @property
    def device(self) -> str:
        """Where the model's arrays live: "cpu" (NumPy) or "cuda" (CuPy), as minipeft.get_device() says (Hugging
        Face PEFT's is the base model's torch.device)."""
        return backend.get_device()

    @property
    def config(self):
        """The base model's config (`GPTConfig`), as `peft_model.config` reads it in Hugging Face PEFT."""
        return self.get_base_model().config

    def get_base_model(self) -> Module:
        return self.base_model.model

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters) counted in elements.

        A 4-bit quantized weight counts the values it encodes (two per byte of codes) and its block scales count
        nothing (`counts_as`), as Hugging Face PEFT counts bitsandbytes' Params4bit: "all params" is then the
        same whether the base model is quantized or not.
        """
        def count(params) -> int:
            return sum(getattr(p, "counts_as", p.size) for p in params)

        return count(self.parameters(trainable_only=True)), count(self.parameters())

    def print_trainable_parameters(self) -> str:
        """Print (and return) `trainable params: … || all params: … || trainable%: …` as PEFT does."""
        t, a = self.get_nb_trainable_parameters()
        line = f"trainable params: {t:,d} || all params: {a:,d} || trainable%: {100 * t / a:.4f}"
        print(line)
        return line

    def add_adapter(self, adapter_name: str, config: PeftConfig) -> None:
        """Add another adapter of the same method; it is not activated (call set_adapter)."""
        if not isinstance(config, PeftConfig):
            raise TypeError(f"add_adapter: config must be a PeftConfig such as LoraConfig, got {type(config).__name__}")
        if config.peft_type != self.base_model.peft_type:
            raise TypeError(f"this PeftModel holds {self.base_model.peft_type} adapters; "
                            f"cannot add a {config.peft_type} adapter")
        self.base_model.inject_adapter(adapter_name, config)

    def set_adapter(self, adapter_name: str) -> None:
        """Make `adapter_name` the active adapter and the only trainable one (unless loaded for inference).

        Stricter than Hugging Face PEFT, which warns and unmerges: while an adapter is merged this raises."""
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    def merge_adapter(self) -> None:
        """Fold the active adapter into the base weights (faster inference); undo with unmerge_adapter()."""
        self.base_model.merge()

    def unmerge_adapter(self) -> None:
        """Take the merged adapter out of the base weights again. With nothing merged this raises (Hugging Face
        PEFT warns "Already unmerged. Nothing to do.")."""
        self.base_model.unmerge()

    def merge_and_unload(self) -> Module:
        """Merge the active adapter and return the plain base model (same class and shapes as before)."""
        return self.base_model.merge_and_unload()

    def unload(self) -> Module:
        """Remove every adapter without merging and return the base model as it was.

        modules_to_save included: the original module goes back, not the trained copy (Hugging Face PEFT's
        unload() keeps the active adapter's copy; here only merge_and_unload() does)."""
        return self.base_model.unload()

    def enable_adapter_layers(self) -> None:
        self.base_model.enable_adapter_layers()

    def disable_adapter_layers(self) -> None:
        """Compute the base model's output until enable_adapter_layers(); see also disable_adapter().

        Not quite the base's when a LoRA adapter was trained with bias='all' or 'lora_only': those biases are the
        base model's own, changed in place, and stay changed (a warning says so, as Hugging Face PEFT's does)."""
        self._warn_if_biases_trained()
        self.base_model.disable_adapter_layers()

    def _warn_if_biases_trained(self) -> None:
        trained = self.base_model.trains_base_parameters()
        if trained:
            warnings.warn(f"adapter(s) {trained} trained the base model's biases (bias != 'none'), which are not part "
                          "of the adapter layers: with the adapters disabled the output is not the base model's",
                          stacklevel=3)

    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside this block the model computes the base model's output (merged weights are unmerged); not quite,
        after LoRA with bias != 'none' (see disable_adapter_layers)."""
        self._warn_if_biases_trained()
        merged = self.base_model.merged
        if merged:
            self.base_model.unmerge()
        self.base_model.set_adapters_disabled(True)
        try:
            yield self
        finally:
            self.base_model.set_adapters_disabled(False)
            if merged:
                self.base_model.merge()

    # ---- files -----------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str, selected_adapters: list[str] | None = None, *,
                        extra_files: dict[str, bytes] | None = None) -> None:
        """Write adapter_config.json + adapter_model.safetensors (subfolders for non-default adapters); extra_files
        {name: bytes} go into save_directory in the same crash-safe unit as the adapter saved there."""
        save_load.save_adapters(self, save_directory, selected_adapters, extra_files)

    def load_adapter(self, directory: str, adapter_name: str, is_trainable: bool = False,
                     check_base_model: bool = True) -> None:
        save_load.load_adapter(self, directory, adapter_name, is_trainable, check_base_model)

    @classmethod
    def from_pretrained(cls, model: Module, directory: str, adapter_name: str = "default",
                        is_trainable: bool = False, check_base_model: bool = True) -> PeftModel:
        """Wrap `model` with the adapter saved in `directory`; refuses a different base unless told not to."""
        return save_load.from_pretrained(cls, model, directory, adapter_name, is_trainable, check_base_model)


def get_peft_model(model: Module, peft_config: PeftConfig, adapter_name: str = "default") -> PeftModel:
    """Freeze `model` and inject the method's trainable parameters; returns the wrapping PeftModel."""
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config must be a PeftConfig such as LoraConfig, got {type(peft_config).__name__}")
    if not isinstance(model, Module):
        raise TypeError(f"get_peft_model: model must be a minipeft Module such as GPT(GPTConfig(...)), got "
                        f"{type(model).__name__}")
    return PeftModel(model, peft_config, adapter_name)


__all__ = ["PeftModel", "get_peft_model"]
