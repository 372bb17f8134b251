"""Tutorial 01: pretrain the base model that every other tutorial fine-tunes.

Claim: a ~1M-parameter GPT, trained for minutes on a laptop CPU on a generated corpus of stories,
dialogues, facts and reviews, learns its language -- the loss falls from log(vocab) to a fraction
of it, held-out perplexity drops by orders of magnitude, and samples read like the corpus -- and,
after a plateau, learns to copy words from earlier in its context (a "phase change", Olsson et al.,
2022) -- yet zero-shot it cannot do the fine-tuning tasks (summarize a dialogue, answer a
question about a passage, classify a review), because it never saw their prompts. That gap is
what the PEFT tutorials close.

The tokenizer (byte-level BPE, Hugging Face `tokenizers`) and the model are cached under
$MINIPEFT_HOME (default ~/.cache/minipeft); later tutorials load them from there.

    python tutorials/01_pretrain_base_model.py            # ~13 minutes on 2 cores the first time
    python tutorials/01_pretrain_base_model.py --rebuild  # train again even if cached
    python tutorials/01_pretrain_base_model.py --quick    # a tiny model, seconds
"""

from __future__ import annotations

import argparse

import minipeft as mp
from minipeft.generate import generate_text
from minipeft.workshop.data.generator import TASKS, make_splits
from minipeft.workshop.finetune import evaluate
from minipeft.workshop.pretrain import QUICK_NOTE, load_base_model

# ---- config -------------------------------------------------------------------------------------
N_EVAL = 40          # test examples per task for the zero-shot scores (--quick: 4)
SAMPLE_PROMPTS = ["#Person1#: Excuse me,", "Amberhaven is a town", "Once upon a time,"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, finishes in seconds")
    parser.add_argument("--rebuild", action="store_true", help="retrain even if a cached model exists")
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    base = load_base_model(quick=args.quick, rebuild=args.rebuild, progress=not args.quick)
    info, model, tok = base.info, base.model, base.tokenizer
    cfg = info["model_config"]
    print(f"\nbase model: {info['parameters']:,d} parameters ({cfg['n_layer']} layers, d_model {cfg['d_model']}, "
          f"{cfg['n_head']} heads, context {cfg['context_length']}), vocabulary {tok.vocab_size} (byte-level BPE)")
    print(f"corpus: {info['corpus_tokens']:,d} tokens; trained on {info['tokens_trained']:,d} tokens "
          f"in {info['train_seconds']:.0f} s; cached at {base.path}")

    losses = info["losses"]
    print("\ntraining loss (mean over each tenth of the run)")
    k = max(len(losses) // 10, 1)
    for i in range(0, len(losses), k):
        mean = sum(losses[i:i + k]) / len(losses[i:i + k])
        print(f"  steps {i + 1:>4}-{i + len(losses[i:i + k]):<4} {mean:7.3f}  " + "#" * int(50 * mean / max(losses)))
    print(f"validation loss {info['val_loss_init']:.3f} -> {info['val_loss']:.3f}; "
          f"perplexity {info['val_perplexity_init']:.0f} -> {info['val_perplexity']:.1f}")

    # reading the context: a list, then the same list again; the repeat can only be predicted by looking back
    print("\ncopying from the context (minipeft.workshop.probes, greedy next-token accuracy during pretraining)")
    print(f"  {'step':>6}{'first list':>12}{'its repeat':>12}{'random tokens repeated':>25}")
    for row in info.get("probes", []):
        print(f"  {row['step']:>6}{row['list_first']:>12.3f}{row['list_second']:>12.3f}{row['repeat_accuracy']:>25.3f}")
    print("  the first list is only as predictable as the language makes it; its repeat, once the model has\n"
          "  learned to look back and copy, far more (the 'phase change' of Olsson et al., 2022)")

    print("\nsamples (temperature 0.8, top-k 40)")
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        text = generate_text(model, tok, prompt, max_new_tokens=40, temperature=0.8, top_k=40, seed=i)
        print(f"  {prompt!r} -> {text!r}")

    n = 4 if args.quick else N_EVAL
    print(f"\nzero-shot scores on {n} test examples per task (the base model never saw these prompts)")
    for name in TASKS:
        rows = make_splits(name, 4, 2, n, seed=0)["test"]
        metrics, preds = evaluate(model, tok, rows, name, max_new_tokens=24 if name != "dialogsum" else 48)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        print(f"  {name:<10} {shown}")
        print(f"    e.g. {preds[0][:100]!r}")


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
