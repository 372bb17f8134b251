"""The training loss of a causal language model, computed only where a target exists."""

from __future__ import annotations

from minipeft import backend, ops
from minipeft.autograd import Tensor

IGNORE_INDEX = -100  # the target value the loss skips, as in PyTorch's cross_entropy


def linear_head(model) -> tuple[Tensor, Tensor | None] | None:
    """(W, b) of the model's LM head when head(h) = h W^T + b, else None.

    `model` is a GPT or Llama model, or a PeftModel over one: every tuner runs the base model's head unchanged, so
    the base model's linear_head() answers; it is None when an adapter wraps lm_head (LoRA on lm_head,
    modules_to_save), and for any model without linear_head() (then head(h) runs as it is)."""
    while hasattr(model, "get_base_model"):
        model = model.get_base_model()
    get = getattr(model, "linear_head", None)
    return None if get is None else get()


def causal_lm_loss(model, input_ids, targets, ignore_index: int = IGNORE_INDEX,
                   chunk_rows: int | None = None) -> Tensor:
    """Mean next-token cross-entropy over the positions whose target != ignore_index.

    loss = -1/N sum_{(b,t): y_bt != ignore} log softmax(head(h_bt))[y_bt],  h = model.hidden_states(input_ids)

    The head runs only on the N rows that have a target: in fine-tuning most positions are prompt, so
    this skips most of the (rows, C) x (C, vocab) head product and its softmax; the loss is the same as
    `model(input_ids, targets)[1]`. `model` is anything with hidden_states(ids) and head(h): a GPT, a Llama
    model or a PeftModel. This is train()'s default loss_fn.
    Where the head is a plain matrix (linear_head), the head and the loss run together in chunks of rows
    (ops.linear_cross_entropy), so the (N, vocab) logits, the largest array of a step, never exist whole;
    chunk_rows overrides the rows per chunk. An adapted head (LoRA on lm_head, modules_to_save) runs unchunked.
    """
    xp = backend.xp()
    ids = input_ids.data if isinstance(input_ids, Tensor) else xp.asarray(input_ids)
    t = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"causal_lm_loss: targets must be integer token ids, got dtype {t.dtype}; use "
                        f"{ignore_index} (ignore_index) for positions without a target")
    if t.shape != ids.shape:
        raise ValueError(f"causal_lm_loss: targets have shape {t.shape} but input_ids {ids.shape}; they must match "
                         "(targets[b, t] is the token that should follow input_ids[b, :t + 1])")
    t = t.reshape(-1)
    keep = xp.flatnonzero(t != ignore_index)                            # flat positions with a target
    if keep.size == 0:
        raise ValueError(f"causal_lm_loss: every target is ignore_index={ignore_index}, so there is no loss to "
                         "learn from; check the batch's loss mask (a prompt longer than max_len leaves no "
                         "completion tokens)")
    h = model.hidden_states(ids)                                        # (B, T, C)
    h = ops.reshape(h, (-1, h.shape[-1]))                               # (B*T, C)
    if keep.size < t.size:
        h, t = ops.getitem(h, keep), t[keep]                            # (N, C): only the rows with a target
    head = linear_head(model)
    if head is None:
        return ops.cross_entropy(model.head(h), t, ignore_index=ignore_index)
    W, b = head
    return ops.linear_cross_entropy(h, W, t, bias=b, ignore_index=ignore_index, chunk_rows=chunk_rows)
