"""The base model every tutorial fine-tunes: built once (tokenizer + pretraining), cached under MINIPEFT_HOME.

`load_base_model()` returns the cached model and tokenizer, or builds them when missing (a few
minutes on a laptop CPU; `quick=True` builds a tiny one in seconds). The cache folder name holds
a hash of the recipe, so changing the recipe rebuilds instead of loading a stale model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minipeft import backend
from minipeft.autograd import no_grad
from minipeft.io_utils import file_in_the_way, json_safe
from minipeft.nn.gpt import GPT, PRESETS, GPTConfig
from minipeft.optim import AdamW, cosine_schedule
from minipeft.train import TrainResult, train
from minipeft.workshop.checkpoint import load_checkpoint, save_checkpoint
from minipeft.workshop.data.batching import encode_corpus, lm_batches
from minipeft.workshop.data.generator import DATA_VERSION, make_corpus
from minipeft.workshop.data.tokenizer import Tokenizer
from minipeft.workshop.probes import list_copy_accuracy, repeat_accuracy


def minipeft_home() -> Path:
    """Where cached artifacts live: $MINIPEFT_HOME, default ~/.cache/minipeft."""
    home = Path(os.environ.get("MINIPEFT_HOME") or Path.home() / ".cache" / "minipeft")
    blocker = home if home.exists() and not home.is_dir() else file_in_the_way(home)
    if blocker is not None:
        source = "MINIPEFT_HOME" if os.environ.get("MINIPEFT_HOME") else "the default cache folder"
        raise NotADirectoryError(f"{source} is {home}, but {blocker} is a file, so the cached base model cannot be "
                                 "kept there; set MINIPEFT_HOME to a folder (it is made if missing), or unset it for "
                                 "~/.cache/minipeft")
    return home


@dataclass(frozen=True)
class PretrainConfig:
    """Recipe of the base model: data, tokenizer, model size and optimisation."""

    preset: str = "mini"          # GPT size (see minipeft.nn.gpt.PRESETS); vocab_size comes from the tokenizer
    n_docs: int = 20000           # generated pretraining documents (~1.7M tokens)
    n_val_docs: int = 400         # held-out documents (another seed) for validation perplexity
    vocab_size: int = 2048        # byte-level BPE vocabulary
    steps: int = 900              # optimizer steps
    batch_size: int = 8           # sequences per step
    seq_len: int = 256            # tokens per sequence (the full context: fine-tuning prompts need it)
    lr: float = 3e-3              # peak AdamW learning rate (small models take large rates)
    min_lr: float = 3e-4          # end of the cosine decay
    warmup: int = 60              # linear warmup steps
    weight_decay: float = 0.1     # decoupled weight decay on matrices (not on biases or LayerNorm)
    seed: int = 0                 # data, initialisation and batch order
    overrides: tuple = ()         # extra GPTConfig fields as (name, value) pairs
    corpus_weights: tuple = ()    # (document kind, weight) pairs overriding the corpus mix (data.corpus.KINDS)
    data_version: int = DATA_VERSION  # bumped when the generator changes, so the cache rebuilds

    def __post_init__(self):
        for name in ("n_docs", "n_val_docs", "vocab_size", "steps", "batch_size", "seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PretrainConfig.{name} must be an int >= 1, got {v!r}")
        if self.warmup < 0 or self.warmup >= self.steps:
            raise ValueError(f"PretrainConfig.warmup must be in [0, steps={self.steps}), got {self.warmup!r}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"PretrainConfig needs 0 < min_lr <= lr, got min_lr={self.min_lr!r}, lr={self.lr!r}")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"PretrainConfig.weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"PretrainConfig.preset {self.preset!r} is not a GPT preset; choose from "
                             f"{sorted(PRESETS)}")
        GPTConfig.from_preset(self.preset, **dict(self.overrides))  # raises naming a bad override
        make_corpus(0, weights=dict(self.corpus_weights) or None)    # raises naming an unknown document kind

    def key(self) -> str:
        recipe = {k: v for k, v in asdict(self).items() if v != () or k != "corpus_weights"}  # keys as before
        blob = json.dumps(recipe, sort_keys=True, default=list).encode()
        return f"{self.preset}-{hashlib.sha256(blob).hexdigest()[:10]}"


# The base model's recipe (measured in BENCHMARKS.md, "The base model: pretraining recipe and length"):
# rotary position embeddings, a corpus with more documents that repeat what came earlier (lists, dialogues
# with notes), and steps enough for the phase change in which the model starts copying from its context
# (list copy accuracy 0.54 -> 0.94 between steps 1200 and 2400): fine-tuned summaries then state the
# dialogue's places and times instead of plausible inventions.
READING = dict(overrides=(("position_embedding", "rope"),),
               corpus_weights=(("lists", 0.25), ("dialogue_notes", 0.25)))
FULL = PretrainConfig(steps=2400, **READING)
# what a tutorial prints first under --quick, where its scores and timings are those of a tiny model
QUICK_NOTE = ("--quick: a tiny model, a few rows and steps, to show the code runs end to end; the scores and timings "
              "below mean nothing (run without --quick for the measured ones, BENCHMARKS.md)")
QUICK = PretrainConfig(preset="test", n_docs=600, n_val_docs=50, vocab_size=384, steps=40, batch_size=8,
                       seq_len=64, lr=1e-2, min_lr=1e-3, warmup=5, corpus_weights=READING["corpus_weights"],
                       overrides=(("context_length", 384), ("d_model", 32), ("d_ff", 64), *READING["overrides"]))

# The base for trying the whole loop (the command line's --quick): big enough to learn a toy task in a short
# fine-tune (sentiment, scored by exact match), small enough to build in about a minute on 2 cores; the figures,
# measured once, are in the README's "Command line" section.
SMALL = PretrainConfig(preset="mini", n_docs=3000, n_val_docs=100, vocab_size=512, steps=300, batch_size=8,
                       seq_len=128, lr=1e-2, min_lr=1e-3, warmup=20, corpus_weights=READING["corpus_weights"],
                       overrides=(("context_length", 256), ("d_model", 64), ("n_layer", 2), ("n_head", 4),
                                  ("d_ff", 256), *READING["overrides"]))
BASES = {"full": FULL, "small": SMALL, "tiny": QUICK}   # the bases by name, as the command line records them


@dataclass
class BaseModel:
    """A pretrained model, its tokenizer, and what the pretraining run measured."""

    model: GPT
    tokenizer: Tokenizer
    info: dict
    path: Path


def decay_groups(model: GPT, weight_decay: float) -> list[dict]:
    """AdamW groups: decay the matrices, not the biases, LayerNorm gains or position table (GPT-2 practice)."""
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and n != "wpe.weight"]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and n != "wpe.weight")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@no_grad()
def lm_loss(model: GPT, ids: np.ndarray, seq_len: int, max_windows: int = 64) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of a token stream."""
    model.eval()
    n = min(max_windows, (len(ids) - 1) // seq_len)
    if n < 1:
        raise ValueError(f"lm_loss: {len(ids)} tokens are fewer than one window of {seq_len + 1}")
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    losses = [model(x[i : i + 16], y[i : i + 16])[1].item() * len(x[i : i + 16]) for i in range(0, n, 16)]
    return float(sum(losses) / n)


def build_base_model(cfg: PretrainConfig = FULL, progress: bool = True, probe_every: int = 0,
                     probe=None) -> tuple[BaseModel, TrainResult]:
    """Train the tokenizer and pretrain a GPT on the generated corpus (no caching).

    probe: model -> dict of metrics, run every probe_every steps and at the end (e.g. how well the model
    copies from its context, minipeft.workshop.probes.repeat_accuracy); the default probe is repeat_accuracy.
    """
    t0 = time.perf_counter()
    docs = make_corpus(cfg.n_docs, seed=cfg.seed, weights=dict(cfg.corpus_weights) or None)
    val_docs = make_corpus(cfg.n_val_docs, seed=cfg.seed + 10_000)
    tok = Tokenizer.train(docs, vocab_size=cfg.vocab_size)
    stream, val_stream = encode_corpus(docs, tok), encode_corpus(val_docs, tok)
    backend.manual_seed(cfg.seed)
    gcfg = GPTConfig.from_preset(cfg.preset, vocab_size=tok.vocab_size, **dict(cfg.overrides))
    model = GPT(gcfg)
    rng = np.random.default_rng(cfg.seed)
    opt = AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    init_val = lm_loss(model, val_stream, cfg.seq_len)
    def default_probe(m) -> dict:
        lists = list_copy_accuracy(m, tok, n_docs=16)
        return {"repeat_accuracy": repeat_accuracy(m, low=min(256, tok.vocab_size // 2)),
                "list_first": lists["first"], "list_second": lists["second"]}

    probe = probe or default_probe
    result = train(model, lambda step: lm_batches(stream, cfg.batch_size, cfg.seq_len, rng), steps=cfg.steps,
                   optimizer=opt, schedule=lambda s: cosine_schedule(s, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr),
                   grad_clip=1.0, progress=progress, seed=cfg.seed, desc="pretrain", eval_fn=probe,
                   eval_every=probe_every)
    val = lm_loss(model, val_stream, cfg.seq_len)
    info = {"recipe": asdict(cfg), "model_config": gcfg.to_dict(), "parameters": model.num_parameters(),
            "corpus_tokens": int(len(stream)), "tokens_trained": result.tokens_seen,
            "val_loss_init": init_val, "val_loss": val, "val_perplexity": math.exp(val),
            "val_perplexity_init": math.exp(init_val), "train_seconds": result.wall_time_s,
            "total_seconds": time.perf_counter() - t0, "losses": result.losses,
            "probes": [{"step": step, **m} for step, m in result.eval_history]}
    return BaseModel(model, tok, info, Path()), result


def load_base_model(quick: bool = False, cfg: PretrainConfig | None = None, progress: bool = True,
                    rebuild: bool = False) -> BaseModel:
    """The cached base model for this recipe, built (and cached atomically) when missing."""
    cfg = cfg or (QUICK if quick else FULL)
    path = minipeft_home() / "base" / cfg.key()
    if path.is_dir() and not rebuild:
        model = load_checkpoint(path / "model.safetensors")
        tok = Tokenizer.from_file(path / "tokenizer.json")
        info = json.loads((path / "pretrain.json").read_text())
        return BaseModel(model, tok, info, path)
    if progress:
        print(f"building the base model ({cfg.preset}, {cfg.steps} steps); cached at {path}")
    base, _ = build_base_model(cfg, progress=progress, probe_every=max(cfg.steps // 8, 1))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_checkpoint(base.model, tmp / "model.safetensors")
        base.tokenizer.save(tmp / "tokenizer.json")
        (tmp / "pretrain.json").write_text(json.dumps(json_safe(base.info), allow_nan=False))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    base.path = path
    return base
