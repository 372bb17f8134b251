"""The ops: each a Function with an explicit forward and backward, and a functional wrapper.

Every op here is its reference implementation, the textbook forward and backward. Some have a fast path in
minipeft/workshop/fast/, registered against the reference; the wrappers call `pick(Reference)`, which takes the
fast path while fast ops are on (the default; see minipeft/ops/fastpath.py).
"""

from minipeft.autograd import register_tensor_ops
from minipeft.ops._util import record_matmuls
from minipeft.ops.elementwise import add, div, exp, gelu, log, mul, neg, pow, relu, sub, tanh
from minipeft.ops.head_loss import linear_cross_entropy
from minipeft.ops.linalg import linear, matmul
from minipeft.ops.llama import rms_norm, silu, swiglu
from minipeft.ops.loss import cross_entropy
from minipeft.ops.multihead_attention import attention
from minipeft.ops.nn import dropout, embedding, layer_norm, softmax
from minipeft.ops.rotary import rotary
from minipeft.ops.shape import broadcast_to, concat, getitem, mean, permute, reshape, split, sum, transpose

register_tensor_ops(add=add, sub=sub, mul=mul, div=div, neg=neg, pow=pow, matmul=matmul, getitem=getitem, sum=sum,
                    mean=mean, reshape=reshape, transpose=transpose, exp=exp, log=log, tanh=tanh, relu=relu)

__all__ = [
    "add", "attention", "broadcast_to", "concat", "cross_entropy", "div", "dropout", "embedding", "exp",
    "gelu", "getitem", "layer_norm", "linear", "linear_cross_entropy", "log", "matmul", "mean", "mul", "neg",
    "permute", "pow", "record_matmuls", "relu", "reshape", "rms_norm", "rotary", "silu", "softmax", "split", "sub",
    "sum", "swiglu", "tanh", "transpose",
]
