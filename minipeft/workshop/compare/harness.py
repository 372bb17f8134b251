"""The comparison: fine-tune a base (the cached mini GPT, or a pretrained LLM with `base=`) with every method on
one task, data, step budget and seed, and measure each the same way.

Per method, in this order:
1. build it on a fresh copy of the base (`METHOD_RECIPES[key].make`) and count its trainable parameters;
2. fine-tune it (`minipeft.workshop.finetune.finetune`, the tutorials' one code path) and time the steps;
3. one more training step on the first batch, read by component (`minipeft.memory.measure_step`: weights,
   gradients, optimizer state, activations, peak) -- apart from training, because tracing slows a step;
4. score it on the test split with greedy generation (the task's metric);
5. forgetting, beside the base model's: on the mini GPT, perplexity on held-out pretraining text (the base
   recipe's validation documents); on a pretrained LLM, the share of general-knowledge questions the base
   answered right that it still answers, and perplexity on English prose nobody here wrote
   (minipeft/workshop/data/knowledge.py);
6. the bytes its task costs on disk: the adapter folder save_pretrained writes, or the whole model's
   checkpoint for full fine-tuning;
7. a merged copy when the method can merge (the deployed form: a plain model again);
8. the inference latency per generated token with the KV cache of the base, the model as trained and merged,
   timed in rounds whose order rotates (medians), so a slow spell of a shared machine falls on all three alike.
   Each method is timed right after its training and then dropped: only three models are alive at once (a
   135M-parameter model is 540 MB in float32). The base row's latency is the median of all its timings.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

import minipeft as mp
from minipeft.generate import context_left, generate
from minipeft.memory import measure_step
from minipeft.peft.storage import adapter_file_bytes
from minipeft.workshop.checkpoint import save_checkpoint
from minipeft.workshop.compare.recipes import METHOD_RECIPES, BuildContext, recipe_rate
from minipeft.workshop.data.batching import encode_corpus
from minipeft.workshop.data.generator import get_task, make_corpus, make_splits
from minipeft.workshop.data.knowledge import ENGLISH_FILE, knowledge_score, load_knowledge, text_perplexity
from minipeft.workshop.finetune import evaluate, finetune, sft_sampler
from minipeft.workshop.llm.hub import MODELS
from minipeft.workshop.pretrain import FULL, QUICK, lm_loss
from minipeft.workshop.tutorial_base import MINI, is_llm, load_tutorial_base

PRIMARY = {"rouge": "rougeL", "exact_match": "exact_match", "accuracy": "accuracy"}   # the table's score column


@dataclass(frozen=True)
class CompareConfig:
    """What the comparison runs; every method gets the same task, data, steps, batch and seed."""

    task: str = "dialogsum"                             # a generated task (minipeft.workshop.data.TASKS)
    methods: tuple[str, ...] = tuple(METHOD_RECIPES)    # keys of METHOD_RECIPES, in table order
    steps: int = 150                                    # optimizer steps per method (tutorials 07, 08)
    batch_size: int = 16                                # examples per step
    n_train: int = 2000                                 # training examples (reshuffled every epoch)
    n_test: int = 30                                    # examples scored by greedy generation
    seed: int = 0                                       # data, initialization and batch order
    max_new_tokens: int = 48                            # generated per test example
    warmup: int = 20                                    # steps of linear warmup before the cosine decay
    ppl_seq_len: int = 128                              # forgetting (mini GPT): windows of held-out pretraining
    ppl_windows: int = 32                               # text, this many (4,096 tokens)
    n_knowledge: int | None = None                      # forgetting (LLM): the first n questions (None: all)
    english_chars: int | None = None                    # forgetting (LLM): the English text's first n characters
    latency_tokens: int = 16                            # generated per timing
    latency_rounds: int = 3                             # timings per form (median)
    base: str = MINI                                    # the mini GPT, or a pretrained LLM (tutorial_base.MODELS)
    quick: bool = False                                 # the tiny base model (seconds); with an LLM base, a tiny
    #                                                     random Llama on the same code path
    progress: bool = True                               # a progress bar across methods

    def __post_init__(self):
        get_task(self.task)                             # raises naming the known tasks
        unknown = [m for m in self.methods if m not in METHOD_RECIPES]
        if unknown or not self.methods:
            raise ValueError(f"CompareConfig.methods: unknown {unknown or 'none given'}; choose from "
                             f"{list(METHOD_RECIPES)}")
        if self.base != MINI and self.base not in MODELS:
            raise ValueError(f"CompareConfig.base: unknown {self.base!r}; choose {MINI!r} (the mini GPT) or one of "
                             f"{sorted(MODELS)}")
        for name in ("steps", "batch_size", "n_train", "n_test", "max_new_tokens", "ppl_seq_len", "ppl_windows",
                     "latency_tokens", "latency_rounds", "warmup", "n_knowledge", "english_chars"):
            v = getattr(self, name)
            if (name == "warmup" and v == 0) or (name in ("n_knowledge", "english_chars") and v is None):
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"CompareConfig.{name} must be an int >= 1, got {v!r}")
        if self.n_train < self.batch_size:
            raise ValueError(f"CompareConfig: n_train={self.n_train} is fewer than batch_size={self.batch_size}")


QUICK_SIZES = dict(steps=4, batch_size=4, n_train=32, n_test=2, max_new_tokens=8, ppl_seq_len=32, ppl_windows=4,
                   n_knowledge=3, english_chars=300, latency_tokens=4, latency_rounds=1)
# A pretrained LLM on 2 cores: a step of 4 dialogues (~180 tokens each) takes 2.7 s with LoRA, 4.7 s with full
# fine-tuning (BENCHMARKS.md, "The real model: SmolLM2-135M-Instruct"), so fewer, smaller steps; 8 test dialogues;
# all 74 questions.
LLM_SIZES = dict(steps=30, batch_size=4, n_train=400, n_test=8, warmup=3)
# Methods a Llama has nothing to apply to, and why (a method given by hand still raises, naming the fix).
NOT_ON_LLAMA = {"bitfit": "a Llama's linear and RMSNorm layers have no bias terms"}


def llm_methods() -> tuple[str, ...]:
    """Every method of the table that applies to a Llama (NOT_ON_LLAMA says which do not, and why)."""
    return tuple(k for k in METHOD_RECIPES if k not in NOT_ON_LLAMA)


def quick_config(**overrides) -> CompareConfig:
    """The tiny model and sizes `--quick` runs: every column filled in seconds, the numbers meaningless."""
    llm = is_llm(overrides.get("base", MINI))
    return CompareConfig(**{**QUICK_SIZES, "quick": True, **({"methods": llm_methods()} if llm else {}), **overrides})


def llm_config(base: str, **overrides) -> CompareConfig:
    """The sizes a pretrained LLM `base` runs at on a CPU (LLM_SIZES), every method that applies to it, with
    `overrides` on top."""
    return CompareConfig(**{**LLM_SIZES, "base": base, "methods": llm_methods(), **overrides})


@dataclass
class CompareResult:
    """One row per model (the base first), what the run was, and how long each part took."""

    rows: list[dict]
    meta: dict = field(default_factory=dict)


def machine() -> dict:
    """Where the numbers were measured."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "device": mp.get_device(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")}


def _stored_bytes(model) -> int:
    """Bytes one task costs on disk: the adapter folder, or a full model's checkpoint."""
    if hasattr(model, "base_model"):
        return adapter_file_bytes(model)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(model, os.path.join(d, "model.safetensors"))
        return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def _merged(model):
    """The deployed form of a mergeable method (a plain GPT with the update folded in), else None."""
    if not hasattr(model, "base_model"):
        return model                                    # full fine-tuning: already a plain model
    if not model.base_model.mergeable:
        return None
    return copy.deepcopy(model).merge_and_unload()


def time_generation(forms: dict[str, object], prompt: list[int], tokens: int, rounds: int) -> dict[str, float]:
    """Median seconds per generated token (greedy, KV cache) of each model; the order rotates every round."""
    names = list(forms)
    times: dict[str, list[float]] = {n: [] for n in names}
    for model in forms.values():                       # warm-up: first-call allocations
        generate(model, prompt, 1)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            generate(forms[name], prompt, tokens)
            times[name].append((time.perf_counter() - t) / tokens)
    return {n: statistics.median(v) for n, v in times.items()}


def forgetting_measure(cfg: CompareConfig, base) -> Callable[[object], dict]:
    """model -> {"ppl", "knowledge", "knowledge_by_kind"}: what the fine-tune made it forget (module docstring, 5).
    On the mini GPT the knowledge fields are None: it cannot answer questions in the first place."""
    tok = base.tokenizer
    if not is_llm(cfg.base):
        recipe = QUICK if cfg.quick else FULL
        heldout = encode_corpus(make_corpus(recipe.n_val_docs, seed=recipe.seed + 10_000), tok)
        seq_len = min(cfg.ppl_seq_len, base.model.config.context_length // 2)
        return lambda model: dict(ppl=math.exp(lm_loss(model, heldout, seq_len, cfg.ppl_windows)), knowledge=None,
                                  knowledge_by_kind=None)
    questions = load_knowledge()[:cfg.n_knowledge]
    english = ENGLISH_FILE.read_text(encoding="utf-8")[:cfg.english_chars]

    def measure(model) -> dict:
        known = knowledge_score(model, tok, questions)
        return dict(ppl=text_perplexity(model, tok, english), knowledge=known["accuracy"],
                    knowledge_by_kind=known["by_kind"])
    return measure


def run_compare(cfg: CompareConfig) -> CompareResult:
    """Fine-tune and measure every method of `cfg` (see the module docstring); returns the table's rows."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    task = get_task(cfg.task)
    base = load_tutorial_base(cfg.base, cfg.quick)
    tok, n_base = base.tokenizer, base.model.num_parameters()
    splits = make_splits(cfg.task, cfg.n_train, 0, cfg.n_test, seed=cfg.seed)
    forgetting = forgetting_measure(cfg, base)

    def fresh():
        mp.manual_seed(cfg.seed)
        return load_tutorial_base(cfg.base, cfg.quick).model

    sampler = sft_sampler(splits["train"], cfg.task, tok, cfg.batch_size, context_left(base.model), cfg.seed)
    ctx = BuildContext(batches=lambda n: [sampler(i) for i in range(n)])
    metric = PRIMARY[task.metric]
    scores, _ = evaluate(base.model, tok, splits["test"], cfg.task, cfg.max_new_tokens)
    before = forgetting(base.model)
    rows = [dict(method="base", label="base model (zero-shot)", family="base", lr=None, lr_source="", trainable=0,
                 trainable_pct=0.0, stored_bytes=None, train_s=None, step_s=None, memory=None, mergeable=True,
                 scores=scores, metric=metric, ppl_before=before["ppl"], ppl_after=before["ppl"],
                 knowledge=before["knowledge"], knowledge_by_kind=before["knowledge_by_kind"], seconds=None,
                 cpu_s=None)]
    room = context_left(base.model) - cfg.latency_tokens
    prompt = tok.encode_batch([task.to_prompt_completion(splits["test"][0])[0].rstrip(" ")])[0][-room:]
    base_latency = []
    bar = tqdm(total=len(cfg.methods), desc="compare", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for key in cfg.methods:
            rec = METHOD_RECIPES[key]
            lr, lr_source = recipe_rate(key, cfg.base)
            bar.set_postfix_str(rec.label)
            t0, cpu0 = time.perf_counter(), time.process_time()
            model = rec.make(fresh(), ctx)
            trainable = sum(getattr(p, "counts_as", p.size) for p in model.parameters(trainable_only=True))
            res = finetune(model, tok, cfg.task, splits["train"], steps=cfg.steps, batch_size=cfg.batch_size,
                           lr=lr, warmup=cfg.warmup, seed=cfg.seed, progress=False, measure_memory=False, log_every=0)
            first = sft_sampler(splits["train"], cfg.task, tok, cfg.batch_size, context_left(model), cfg.seed)(0)
            memory = measure_step(model, first)
            scores, _ = evaluate(model, tok, splits["test"], cfg.task, cfg.max_new_tokens)
            after = forgetting(model)
            stored = _stored_bytes(model)
            merged = _merged(model)
            forms = {"base": base.model, key: model}
            if merged is not None and merged is not model:
                forms["merged"] = merged
            fits = min(context_left(m) for m in forms.values()) - cfg.latency_tokens   # soft prompts take positions
            latency = time_generation(forms, prompt[-fits:], cfg.latency_tokens, cfg.latency_rounds)
            base_latency.append(latency["base"])
            rows.append(dict(method=key, label=rec.label, family=rec.family, lr=lr, lr_source=lr_source,
                             trainable=int(trainable), trainable_pct=100 * trainable / n_base, stored_bytes=stored,
                             train_s=res.wall_time_s, step_s=res.wall_time_s / cfg.steps, memory=memory.as_dict(),
                             mergeable=merged is not None, scores=scores, metric=metric, ppl_before=before["ppl"],
                             ppl_after=after["ppl"], knowledge=after["knowledge"],
                             knowledge_by_kind=after["knowledge_by_kind"], final_loss=res.final_loss,
                             latency_ms=1000 * latency[key],
                             latency_merged_ms=(1000 * latency["merged"] if "merged" in latency else
                                                1000 * latency[key] if merged is model else None),
                             latency_base_ms=1000 * latency["base"], seconds=time.perf_counter() - t0,
                             cpu_s=time.process_time() - cpu0))
            del model, merged, forms                    # one trained model alive at a time
            bar.update(1)
    finally:
        bar.close()
    rows[0]["latency_ms"] = rows[0]["latency_merged_ms"] = 1000 * statistics.median(base_latency)
    meta = dict(config=asdict(cfg), base_parameters=n_base, base_path=str(base.path), metric=metric,
                task_metric=task.metric, machine=machine(), latency_prompt_tokens=len(prompt),
                forgetting_text=(ENGLISH_FILE.name if is_llm(cfg.base) else "held-out pretraining text"),
                not_applicable={k: v for k, v in NOT_ON_LLAMA.items() if is_llm(cfg.base) and k not in cfg.methods},
                wall_s=time.perf_counter() - t_start, cpu_s=time.process_time() - cpu_start,
                date=time.strftime("%Y-%m-%d %H:%M:%S"))
    return CompareResult(rows, meta)
