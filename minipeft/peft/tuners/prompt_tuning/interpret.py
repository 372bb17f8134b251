"""What a learned soft prompt "says": each virtual token's nearest vocabulary tokens in the embedding space.

Lester et al. (2021, section 7) read learned prompts this way: for each virtual token, the vocabulary tokens
whose (frozen) input embeddings have the highest cosine similarity with it. They report that the nearest
neighbours form semantic clusters, often words of the task's domain or its labels. Whether that holds for a
given prompt is an empirical question; tutorial 08 prints the neighbours and measures it.
"""

from __future__ import annotations

import numpy as np

from minipeft import backend


def nearest_tokens(prompt, word_embeddings, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n, k), cosines (n, k)): per row of prompt (n, C), the k rows of word_embeddings (V, C) of highest
    cosine similarity cos(p, w) = p . w / (|p| |w|), nearest first."""
    P = backend.to_numpy(prompt).astype(np.float64)
    W = backend.to_numpy(word_embeddings).astype(np.float64)
    if P.ndim != 2 or W.ndim != 2 or P.shape[1] != W.shape[1]:
        raise ValueError(f"nearest_tokens: prompt (n, C) and word_embeddings (V, C) must share C, got {P.shape} and "
                         f"{W.shape}")
    if not isinstance(k, int) or not 1 <= k <= W.shape[0]:
        raise ValueError(f"nearest_tokens: k must be an int in [1, {W.shape[0]}] (the vocabulary size), got {k!r}")
    tiny = np.finfo(np.float64).tiny   # a zero row has cosine 0 with everything instead of a division by zero
    Pn = P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), tiny)
    Wn = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), tiny)
    cos = Pn @ Wn.T                                                         # (n, V)
    ids = np.argsort(-cos, axis=1, kind="stable")[:, :k]                    # ties: the lower id first
    return ids, np.take_along_axis(cos, ids, axis=1)


def prompt_nearest_tokens(peft_model, tokenizer=None, k: int = 5,
                          adapter_name: str | None = None) -> list[list[tuple[str | int, float]]]:
    """For each virtual token of a prompt-tuning adapter (the active one by default), its k nearest vocabulary
    tokens as (token string, or id without a tokenizer, cosine similarity)."""
    tuner = peft_model.base_model
    if tuner.peft_type != "PROMPT_TUNING":
        raise TypeError(f"prompt_nearest_tokens needs a prompt-tuning model, got {tuner.peft_type} (prefix tuning's "
                        "keys and values do not live in the embedding space)")
    name = adapter_name or tuner.active_adapter
    if name not in tuner.prompt_encoder:
        raise KeyError(f"no prompt-tuning adapter named {name!r}; adapters are {sorted(tuner.peft_config)}")
    prompt = tuner.prompt_encoder[name].embedding.weight.data
    ids, cos = nearest_tokens(prompt, tuner.model.get_input_embeddings().weight.data, k)
    label = (lambda i: tokenizer.id_to_token(int(i))) if tokenizer is not None else int
    return [[(label(i), float(c)) for i, c in zip(row_ids, row_cos, strict=True)]
            for row_ids, row_cos in zip(ids, cos, strict=True)]
