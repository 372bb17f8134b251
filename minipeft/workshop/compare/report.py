"""The comparison's outputs: the printed table, CSV and JSON files, and (with the `plots` extra) a PNG."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from minipeft.io_utils import atomic_write_text, json_safe
from minipeft.memory import format_bytes

COMPONENTS = ("weights", "optimizer_state", "gradients", "activations")   # the memory plot's stack, bottom up
METRIC_NAMES = {"rougeL": "ROUGE-L", "exact_match": "EM", "accuracy": "acc"}


def forgetting_pct(row: dict) -> float:
    """How much the forgetting perplexity (held-out pretraining text, or English prose on an LLM) rose with
    fine-tuning, in percent (negative: it fell)."""
    return 100 * (row["ppl_after"] / row["ppl_before"] - 1)


def _cell(value, fmt: str = "", none: str = "-") -> str:
    return none if value is None else format(value, fmt)


def format_table(result) -> str:
    """The comparison as a fixed-width text table, then what each column means."""
    metric = result.meta["metric"]
    facts = any("fact_recall" in r["scores"] for r in result.rows)
    knows = any(r.get("knowledge") is not None for r in result.rows)   # a pretrained LLM's general knowledge
    ppl_name = "held-out ppl" if not knows else "English ppl"
    head = (f"{'method':<24}{'trainable':>11}{'%':>8}{'stored':>11}{'ms/step':>9}{'train mem':>11}"
            f"{METRIC_NAMES[metric]:>9}" + (f"{'facts':>7}" if facts else "") + (f"{'knows':>7}" if knows else "") +
            f"{ppl_name:>16}{'forget':>8}{'ms/tok':>8}{'merged':>8}")
    lines = [head, "-" * len(head)]
    for r in result.rows:
        mem = r["memory"]
        ppl = f"{r['ppl_after']:.3f}" if r["method"] == "base" else f"{r['ppl_before']:.2f}->{r['ppl_after']:.2f}"
        lines.append(
            f"{r['label']:<24}{r['trainable']:>11,d}{r['trainable_pct']:>7.2f}%"
            f"{_cell(r['stored_bytes'] and format_bytes(r['stored_bytes'])):>11}"
            f"{_cell(r['step_s'] and 1000 * r['step_s'], '.0f'):>9}"
            f"{_cell(mem and format_bytes(mem['total'])):>11}{r['scores'][metric]:>9.3f}"
            + (f"{r['scores'].get('fact_recall', float('nan')):>7.2f}" if facts else "")
            + (f"{r['knowledge']:>7.2f}" if knows else "")
            + f"{ppl:>16}{'-' if r['method'] == 'base' else f'{forgetting_pct(r):+.1f}%':>8}"
            f"{r['latency_ms']:>8.2f}{_cell(r['latency_merged_ms'], '.2f', 'no'):>8}")
    cfg = result.meta["config"]
    lines += [
        f"task {cfg['task']}: {cfg['n_train']} training examples, {cfg['steps']} steps of {cfg['batch_size']}, seed "
        f"{cfg['seed']}; {METRIC_NAMES[metric]}{' and facts' if facts else ''} on {cfg['n_test']} test examples",
        "%: of the base model's parameters; stored: bytes on disk per task (adapter folder, or the whole model);",
        "train mem: weights + optimizer state + a training step's peak (activations, gradients), measured;",
        (f"held-out ppl: perplexity on the pretraining recipe's validation text before -> after fine-tuning "
         f"({cfg['ppl_windows']} windows of {cfg['ppl_seq_len']} tokens); forget: its rise;" if not knows else
         f"knows: share of the general-knowledge questions the base answered right still answered right; English "
         f"ppl: perplexity on {result.meta['forgetting_text']} before -> after fine-tuning; forget: its rise;"),
        "ms/tok: greedy generation per token with the KV cache, as trained; merged: the adapter folded into the",
        "weights (a plain model again), 'no' where the method cannot merge; medians of rounds in rotating order",
        "with the base (the base's row: the median of all its timings)",
    ] + [f"not run: {key}, {why}" for key, why in result.meta.get("not_applicable", {}).items()]
    return "\n".join(lines)


def flat_row(row: dict) -> dict:
    """One CSV row: scalars only (memory components and scores spread into columns)."""
    out = {k: row[k] for k in ("method", "label", "family", "lr", "lr_source", "trainable", "trainable_pct",
                               "stored_bytes", "train_s", "step_s", "mergeable", "ppl_before", "ppl_after",
                               "knowledge", "latency_ms", "latency_merged_ms")}
    out["forgetting_pct"] = None if row["method"] == "base" else forgetting_pct(row)
    for k in ("total", *COMPONENTS, "peak"):
        out[f"memory_{k}"] = None if row["memory"] is None else row["memory"][k]
    out.update({f"score_{k}": v for k, v in row["scores"].items()})
    out.update({f"knowledge_{k}": v for k, v in (row.get("knowledge_by_kind") or {}).items()})
    return out


def to_csv(result) -> str:
    rows = [flat_row(r) for r in result.rows]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_outputs(result, out_dir: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """compare.csv, compare.json (rows + how they were made) and, with matplotlib, compare.png, in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": atomic_write_text(out / "compare.csv", to_csv(result)),
             "json": atomic_write_text(out / "compare.json", json.dumps(     # a score that is NaN is written null
                 json_safe({"meta": result.meta, "rows": result.rows}), indent=1, default=float, allow_nan=False) +
                 "\n")}
    if plot:
        png = save_plot(result, out / "compare.png")
        if png is not None:
            paths["png"] = png
    return paths


def save_plot(result, path: str | os.PathLike) -> Path | None:
    """Quality against trainable % (log scale), and training memory by component per method; None without
    matplotlib (the `plots` extra), after saying how to install it."""
    try:
        import matplotlib  # noqa: PLC0415 (optional extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print(f"(matplotlib is not installed: pip install -e '.[plots]' to save {path})")
        return None
    metric = result.meta["metric"]
    trained = [r for r in result.rows if r["method"] != "base"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.5))
    families = sorted({r["family"] for r in trained})
    colors = {f: plt.cm.tab10(i) for i, f in enumerate(families)}
    for r in trained:
        ax.scatter(max(r["trainable_pct"], 1e-4), r["scores"][metric], color=colors[r["family"]], s=40)
        ax.annotate(r["label"], (max(r["trainable_pct"], 1e-4), r["scores"][metric]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    base = result.rows[0]["scores"][metric]
    ax.axhline(base, ls=":", color="grey", label="base model, zero-shot")
    for f in families:
        ax.scatter([], [], color=colors[f], label=f)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of the base model, log scale)")
    ax.set_ylabel(f"{METRIC_NAMES[metric]} ({result.meta['config']['task']})")
    ax.set_title("quality vs trainable parameters")
    ax.legend(fontsize=7, loc="lower right")
    labels = [r["label"] for r in trained]
    left = [0.0] * len(trained)
    for comp in COMPONENTS:
        widths = [r["memory"][comp] / 2**20 for r in trained]
        bx.barh(labels, widths, left=left, label=comp.replace("_", " "))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    bx.invert_yaxis()
    bx.set_xlabel("MiB, measured in one training step")
    bx.set_title("training memory by component")
    bx.tick_params(axis="y", labelsize=7)
    bx.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
