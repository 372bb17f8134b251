"""Basic layers: Linear, Embedding, LayerNorm, Dropout, MLP. Each forward is one or two fused ops."""

from __future__ import annotations

import math

from minipeft import backend, ops
from minipeft.autograd import Tensor
from minipeft.nn.module import Module, Parameter


def _normal(shape, std: float):
    return backend.rng().standard_normal(shape, dtype=backend.get_default_dtype()) * std


def _uniform(shape, bound: float):
    return backend.rng().uniform(-bound, bound, size=shape).astype(backend.get_default_dtype())


class Linear(Module):
    """y = x W^T + b, W of shape (out_features, in_features) like torch.nn.Linear.

    Unlike torch.nn.Linear, whose bias starts uniform(-1/sqrt(in), 1/sqrt(in)), the bias starts at zero
    (GPT-2's initialisation, which the GPT here and the tutorials' numbers rely on).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float | None = None):
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = in_features, out_features
        # default: PyTorch's kaiming-uniform bound 1/sqrt(in); GPT passes std=0.02 (normal)
        bound = 1.0 / math.sqrt(in_features)
        w = _uniform((out_features, in_features), bound) if std is None else _normal((out_features, in_features), std)
        self.weight = Parameter(w)
        self.bias = Parameter(backend.xp().zeros(out_features, dtype=w.dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table of num_embeddings rows of size embedding_dim, initialised N(0, std^2)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float = 0.02):
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(_normal((num_embeddings, embedding_dim), std))

    def forward(self, ids) -> Tensor:
        return ops.embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Layer normalization over the last axis with learnable scale (ones) and shift (zeros)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        xp, dt = backend.xp(), backend.get_default_dtype()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(xp.ones(dim, dtype=dt))
        self.bias = Parameter(xp.zeros(dim, dtype=dt)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Zero activations with probability p while training; identity in eval mode.

    p defaults to 0.0, not torch.nn.Dropout's 0.5: the small models here train without dropout, so off is the
    useful default (pass p to turn it on).
    """

    def __init__(self, p: float = 0.0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return ops.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(Module):
    """The transformer feed-forward block: fc2(gelu(fc1(x))), with dropout on the output."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = True,
                 std: float = 0.02, out_std: float = 0.02):
        self.fc1 = Linear(d_model, d_ff, bias=bias, std=std)
        self.fc2 = Linear(d_ff, d_model, bias=bias, std=out_std)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(ops.gelu(self.fc1(x))))
