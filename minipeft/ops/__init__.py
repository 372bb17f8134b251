"""The ops: each a Function with an explicit forward and backward, and a functional wrapper."""

from minipeft.ops._util import record_matmuls
from minipeft.ops.attention import attention
from minipeft.ops.elementwise import add, div, exp, gelu, log, mul, neg, pow, relu, sub, tanh
from minipeft.ops.linalg import linear, matmul
from minipeft.ops.loss import cross_entropy
from minipeft.ops.nn import dropout, embedding, layer_norm, softmax
from minipeft.ops.shape import broadcast_to, concat, getitem, mean, permute, reshape, split, sum, transpose

__all__ = [
    "add", "attention", "broadcast_to", "concat", "cross_entropy", "div", "dropout", "embedding", "exp", "gelu",
    "getitem", "layer_norm", "linear", "log", "matmul", "mean", "mul", "neg", "permute", "pow", "record_matmuls",
    "relu", "reshape", "softmax", "split", "sub", "sum", "tanh", "transpose",
]
