"""`Linear4bit`: a Linear whose frozen weight is held in NF4 (optionally double-quantized), as bitsandbytes' layer.

What the layer holds (all frozen, all saved by `state_dict` and fingerprinted like any parameter):

    weight          (out * in / 2,) uint8   two NF4 codes per byte (nf4.py)
    absmax          (out * in / blocksize,) float block scales, or with double quantization their uint8 codes
                                            (indices into bitsandbytes' dynamic 8-bit map, double_quant.py)
    nested_absmax   (ceil(nblocks / 256),)  float scales of those 8-bit codes  (double quantization only)
    offset          (1,)                    float mean of the block scales     (double quantization only)
    bias            (out,)                  float, kept as it was (a normal Parameter)

The forward dequantizes the weight into a temporary float (out, in) matrix, multiplies, and lets it go;
the backward dequantizes it again for dx = dy W. Between the two passes only the 4-bit weight is kept,
which is what lets QLoRA train a model whose float weights would not fit. The weight gets no gradient:
it is not an input of the op at all, only an option, so no dW product can be formed.

It subclasses Linear (as bitsandbytes' Linear4bit subclasses torch.nn.Linear) so every method that
targets Linear layers finds it; `in_features`, `out_features`, `bias` and `forward` behave as a frozen
Linear's. Its `weight` is packed codes, not a float matrix: code that needs the float weight calls
`dequantize()` (the matrix) or `to_linear()` (a float Linear), and `compute_dtype` is the float dtype
the layer computes in.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.nn.layers import Linear
from minipeft.nn.module import Parameter
from minipeft.ops._util import check_float, check_same_dtype, mm
from minipeft.quant.double_quant import NESTED_BLOCKSIZE, check_nested_blocksize, dequantize_absmax, quantize_absmax
from minipeft.quant.nf4 import check_blocksize, dequantize_nf4, quantize_nf4


class QuantParameter(Parameter):
    """A frozen array of a quantized layer (packed codes, block scales): never trains, integer dtypes never change.

    `counts_as` is how many model parameters it stands for in PeftModel.get_nb_trainable_parameters: the
    codes count two per byte (the values they encode), the scales count nothing, as Hugging Face PEFT counts
    bitsandbytes' Params4bit.
    """

    def __init__(self, data, counts_as: int = 0):
        super().__init__(data, requires_grad=False)
        self.counts_as = counts_as

    @property
    def requires_grad(self) -> bool:
        return False

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        if flag:
            raise TypeError("a 4-bit quantized weight cannot train (its codes and scales have no gradient); train "
                            "adapters on top of it (get_peft_model), or dequantize the layer first "
                            "(minipeft.quant.dequantize_model)")

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value) -> None:
        arr = backend.asarray(value)
        if self._data.dtype.kind != "f" and arr.dtype != self._data.dtype:
            raise TypeError(f"this array of a quantized layer holds {self._data.dtype} codes; assigning a "
                            f"{arr.dtype} array would corrupt them. Dequantize the layer (dequantize() / to_linear()) "
                            "to work on float weights")
        self._data = arr


class QuantState(NamedTuple):
    """The arrays and settings that define one quantized weight; `dequantize()` gives the float matrix back."""

    packed: Any                 # (n/2,) uint8 codes
    absmax: Any                 # (n/blocksize,) float scales, or uint8 codes of them (double quantization)
    nested_absmax: Any          # (ceil(nblocks/nested_blocksize),) float, or None
    offset: Any                 # (1,) float, or None
    shape: tuple[int, int]      # (out_features, in_features)
    blocksize: int
    nested_blocksize: int

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    @property
    def dtype(self):
        """The float dtype the weight dequantizes to (that of its float scales)."""
        return (self.nested_absmax if self.double_quant else self.absmax).dtype

    def block_scales(self):
        """The float absmax of every block (after undoing double quantization)."""
        if not self.double_quant:
            return self.absmax
        return dequantize_absmax(self.absmax, self.nested_absmax, self.offset, self.nested_blocksize)

    def dequantize(self):
        """The (out, in) float weight: code[index] * block scale."""
        return dequantize_nf4(self.packed, self.block_scales(), self.shape, self.blocksize)


class Linear4bitFn(Function):
    """y = x W^T + b with W = dequantize(qweight); the quantized weight is an option, so it never gets a gradient."""

    @staticmethod
    def forward(ctx, x, b, qweight: QuantState):
        check_float("linear4bit", "x", x)
        d, k = qweight.shape
        if x.shape[-1] != k or (b is not None and b.shape != (d,)):
            raise ValueError(f"linear4bit: x {x.shape} and b {None if b is None else b.shape} do not fit a quantized "
                             f"weight of shape {qweight.shape}; need x (..., {k}) and b ({d},)")
        W = qweight.dequantize()                             # (d, k) a temporary, gone when forward returns
        check_same_dtype("linear4bit", x=x, W=W, b=b)
        y = mm(x.reshape(-1, k), W.T)                        # (N, d)
        if b is not None:
            y += b
        ctx.save_for_backward(qweight, x.shape)              # the 4-bit weight, not a float copy
        return y.reshape(*x.shape[:-1], d)

    @staticmethod
    def backward(ctx, dout):
        # y = x W^T + b  =>  dx = dy W,  db = sum_rows dy.  W is dequantized again here rather than kept
        # since forward (QLoRA keeps only 4 bits per weight between the passes); there is no dW at all.
        qweight, xshape = ctx.saved
        nx, nb = ctx.needs_input_grad
        dy = dout.reshape(-1, qweight.shape[0])              # (N, d)
        dx = mm(dy, qweight.dequantize()).reshape(xshape) if nx else None
        db = dy.sum(axis=0) if nb else None
        return dx, db


def linear4bit(x: Tensor, b: Tensor | None, qweight: QuantState) -> Tensor:
    """y = x dequantize(qweight)^T + b."""
    return Linear4bitFn.apply(x, b, qweight=qweight)


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"Linear4bit computes in float32 or float64, got {dt}")
    return dt


class Linear4bit(Linear):
    """A frozen Linear stored in NF4: `Linear4bit.from_linear(linear)` quantizes one; forward dequantizes on the fly."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, blocksize: int = 64,
                 double_quant: bool = True, nested_blocksize: int = NESTED_BLOCKSIZE, compute_dtype=np.float32):
        """An all-zero layer of the right shapes (what load_state_dict fills); from_linear() quantizes a Linear."""
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear4bit: in_features and out_features must be >= 1, got {in_features}, "
                             f"{out_features}")
        n = in_features * out_features
        check_blocksize(n, blocksize, f"{out_features}x{in_features} weight")
        check_nested_blocksize(nested_blocksize)
        if not isinstance(double_quant, bool):
            raise TypeError(f"Linear4bit: double_quant must be True or False, got {double_quant!r}")
        xp, dt = backend.xp(), _float_dtype(compute_dtype)
        self.in_features, self.out_features = in_features, out_features
        self.blocksize, self.nested_blocksize = int(blocksize), int(nested_blocksize)
        nblocks = n // blocksize
        self.weight = QuantParameter(xp.zeros(n // 2, dtype=np.uint8), counts_as=n)
        if double_quant:
            self.absmax = QuantParameter(xp.zeros(nblocks, dtype=np.uint8))
            self.nested_absmax = QuantParameter(xp.zeros(-(-nblocks // nested_blocksize), dtype=dt))
            self.offset = QuantParameter(xp.zeros(1, dtype=dt))
        else:
            self.absmax = QuantParameter(xp.zeros(nblocks, dtype=dt))
            self.nested_absmax = self.offset = None
        self.bias = Parameter(xp.zeros(out_features, dtype=dt)) if bias else None

    @classmethod
    def from_linear(cls, linear: Linear, blocksize: int = 64, double_quant: bool = True,
                    nested_blocksize: int = NESTED_BLOCKSIZE) -> Linear4bit:
        """Quantize a float Linear's weight to NF4 (and its block scales to 8 bits with double_quant)."""
        if not isinstance(linear, Linear) or isinstance(linear, Linear4bit):
            raise TypeError(f"Linear4bit.from_linear takes a float Linear, got {type(linear).__name__}")
        W = linear.weight.data
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, blocksize=blocksize,
                    double_quant=double_quant, nested_blocksize=nested_blocksize, compute_dtype=W.dtype)
        packed, absmax = quantize_nf4(W, blocksize)
        layer.weight.data = packed
        if double_quant:
            q, nested, offset = quantize_absmax(absmax, nested_blocksize)
            layer.absmax.data, layer.nested_absmax.data, layer.offset.data = q, nested, offset
        else:
            layer.absmax.data = absmax
        if linear.bias is not None:
            layer.bias = Parameter(linear.bias.data.copy(), requires_grad=linear.bias.requires_grad)
        return layer

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    @property
    def compute_dtype(self):
        """The float dtype this layer computes in (that of its float scales)."""
        return self.quant_state().dtype

    def quant_state(self) -> QuantState:
        """The layer's quantized weight as one value the ops take (no copy)."""
        return QuantState(self.weight.data, self.absmax.data, None if self.nested_absmax is None
                          else self.nested_absmax.data, None if self.offset is None else self.offset.data,
                          (self.out_features, self.in_features), self.blocksize, self.nested_blocksize)

    def dequantize(self):
        """The float (out, in) weight this layer computes with (a new array)."""
        return self.quant_state().dequantize()

    def to_linear(self) -> Linear:
        """A float Linear with the dequantized weight (frozen) and this layer's bias (the same Parameter)."""
        with backend.fork_rng():       # Linear() draws an init we overwrite: keep the caller's stream unmoved
            backend.manual_seed(0)
            lin = Linear(self.in_features, self.out_features, bias=False)
        lin.weight = Parameter(self.dequantize(), requires_grad=False)
        lin.bias = self.bias
        return lin

    def storage_bytes(self) -> int:
        """Bytes of the quantized weight as held: codes, scales and (double quantization) their scales and mean."""
        return sum(int(p.data.nbytes) for p in (self.weight, self.absmax, self.nested_absmax, self.offset)
                   if p is not None)

    def forward(self, x: Tensor) -> Tensor:
        return linear4bit(x, self.bias, self.quant_state())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nf4 blocksize={self.blocksize}, double_quant={self.double_quant}")
