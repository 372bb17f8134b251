"""`python -m minipeft`: pretrain, finetune, compare, generate, merge, chat.

Exit codes scripts can rely on: 0 done; 2 bad arguments (argparse's usage message, or a value checked before
any work starts: a missing file, a step count of 0, an unknown method); 1 the run itself failed, with one line
on stderr naming what went wrong (pass --debug for the traceback); 130 interrupted.

    python -m minipeft pretrain                          # build (or find) the cached base model
    python -m minipeft finetune --method lora-all --task dialogsum --out my_adapter
    python -m minipeft finetune --method ia3 --data my_rows.jsonl --metric exact --out my_adapter   # your own JSONL
    python -m minipeft finetune --method lora-qv --r 4 --alpha 8 --targets q_proj,v_proj --out my_adapter
    python -m minipeft finetune --import my_method.py --config my_config.json --lr 1e-2 --out my_adapter
    python -m minipeft generate --adapter my_adapter --task dialogsum --prompt "#Person1#: ..."
    python -m minipeft merge --adapter my_adapter --out merged_model
    python -m minipeft compare --quick                   # every method, one table
    python -m minipeft finetune --base smollm2-135m-instruct --method lora-qv --lr 2e-3 --steps 60 --batch-size 4 \
        --out my_adapter                                 # a real LLM (fetched once, 93 MB) instead of the mini GPT
    python -m minipeft chat --base smollm2-135m-instruct [--adapter my_adapter]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from minipeft.workshop.cli_args import (
    comma_list,
    existing_dir,
    existing_file,
    method_list,
    metric_name,
    non_negative_float,
    non_negative_int,
    numbers_as_values,
    out_dir,
    positive_float,
    positive_int,
)
from minipeft.workshop.cli_runs import QUICK_BASE_VAR, RUN_FILE, base_name, load_adapted, load_cli_base
from minipeft.workshop.data.generator import TASKS, Task, get_task, make_splits
from minipeft.workshop.data.jsonl import load_jsonl
from minipeft.workshop.llm.hub import MODELS
from minipeft.workshop.tutorial_base import MINI


# ---- the commands ----------------------------------------------------------------------------------------------
def cmd_pretrain(args) -> None:
    from minipeft.workshop.pretrain import BASES, load_base_model  # noqa: PLC0415

    base = load_base_model(cfg=BASES[base_name(args.quick)], rebuild=args.rebuild, progress=True)
    info = base.info
    print(f"base model: {base.model.num_parameters():,d} parameters at {base.path}")
    print(f"validation perplexity {info['val_perplexity']:.3f} (from {info['val_perplexity_init']:.1f} at "
          f"initialization), {info['tokens_trained']:,d} tokens in {info['train_seconds']:.0f} s")


def jsonl_task(path: Path, task_name: str | None) -> tuple[Task, list[dict]]:
    """The rows of a user's JSONL file and the Task that formats them: a named task's fields, or any
    {"prompt", "completion"} rows (the prompt used as it is, scored with ROUGE)."""
    if task_name is not None:
        t = get_task(task_name)
        return t, load_jsonl(path, required=(*t.input_fields, t.completion_field))
    first = load_jsonl(path, required=())[0]
    if {"prompt", "completion"} <= set(first):
        task = Task("prompt_completion", "{prompt}", ("prompt",), "completion", "rouge", make=None, draw=None)
        return task, load_jsonl(path, required=("prompt", "completion"))
    for t in TASKS.values():
        if {*t.input_fields, t.completion_field} <= set(first):
            return t, load_jsonl(path, required=(*t.input_fields, t.completion_field))
    shapes = [sorted({*t.input_fields, t.completion_field}) for t in TASKS.values()]
    raise ValueError(f"{path}: rows with fields {sorted(first)} fit no task; use {{'prompt', 'completion'}} or one "
                     f"of {shapes}")


def cmd_finetune(args) -> None:
    import minipeft as mp  # noqa: PLC0415
    from minipeft.generate import context_left  # noqa: PLC0415
    from minipeft.io_utils import json_safe  # noqa: PLC0415
    from minipeft.peft import get_peft_model  # noqa: PLC0415
    from minipeft.quant import quantize_model  # noqa: PLC0415
    from minipeft.workshop.compare import BuildContext  # noqa: PLC0415
    from minipeft.workshop.finetune import evaluate, finetune, sft_sampler  # noqa: PLC0415

    plan = args.plan
    if args.data is not None:
        task, rows = jsonl_task(args.data, args.task)
        n_test = min(args.n_test, len(rows) // 5)               # hold out up to a fifth of the user's rows
        train, test = rows[: len(rows) - n_test], rows[len(rows) - n_test:]
    else:
        task = get_task(args.task or "dialogsum")
        splits = make_splits(task.name, args.n_train, 0, args.n_test, seed=args.seed)
        train, test = splits["train"], splits["test"]
    metric = args.metric or (task.metric if args.data is not None else None)   # your data: no dialogue metric
    if len(train) < args.batch_size:
        raise ValueError(f"{len(train)} training rows are fewer than --batch-size {args.batch_size}; pass a smaller "
                         "--batch-size, or more rows (with --data, a fifth of them, at most --n-test, is held out)")
    base = load_cli_base(args.base, args.quick)
    tok, fresh = base.tokenizer, base.model
    mp.manual_seed(args.seed)
    config = plan.build_config(fresh)
    if config is None:
        sampler = sft_sampler(train, task, tok, args.batch_size, context_left(base.model), args.seed)
        model = plan.recipe.make(fresh, BuildContext(batches=lambda n: [sampler(i) for i in range(n)],
                                                     full_model_adapter=True))
    else:
        model = get_peft_model(fresh if plan.quantization is None else quantize_model(fresh, plan.quantization),
                               config)
    model.print_trainable_parameters()
    lr = plan.lr
    res = finetune(model, tok, task, train, steps=args.steps, batch_size=args.batch_size, lr=lr, seed=args.seed,
                   progress=True, measure_memory=False, desc=plan.name)
    scores = evaluate(model, tok, test, task, args.max_new_tokens, metric=metric)[0] if test else {}
    run = {"method": plan.name, "task": task.name, "quick": args.quick, "base_name": base_name(args.quick),
           "base": str(base.path), "pretrained": args.base, "lr": lr,
           "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "n_train": len(train),
           "n_test": len(test), "final_loss": res.final_loss, "train_s": res.wall_time_s, "scores": scores,
           "data": None if args.data is None else str(args.data), "metric": metric,
           "quantization": None if plan.quantization is None else plan.quantization.to_dict(),
           "imports": [str(Path(m).resolve()) if m.endswith(".py") else m for m in args.imports or []],
           "losses": res.losses}
    # the record is written in the adapter's own unit: a crash leaves both old or both new, never a mix
    record = json.dumps(json_safe(run), indent=1, allow_nan=False) + "\n"
    model.save_pretrained(str(args.out), extra_files={RUN_FILE: record.encode()})
    print(f"trained {args.steps} steps in {res.wall_time_s:.1f} s, final loss {res.final_loss:.4f} (the mean of the "
          "last 10 steps' losses)")
    if scores:
        print(f"on {len(test)} held-out rows: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    if args.plot:
        from minipeft.workshop.plots import save_loss_plot  # noqa: PLC0415

        print(f"loss curve: {save_loss_plot(res.losses, Path(args.out) / 'loss.png', title=plan.name)}")
    print(f"adapter written to {args.out}")


def cmd_generate(args) -> None:
    from minipeft.generate import TextStreamer, generate  # noqa: PLC0415
    from minipeft.workshop.checkpoint import load_checkpoint  # noqa: PLC0415
    from minipeft.workshop.data.batching import encode_prompts  # noqa: PLC0415
    from minipeft.workshop.data.tokenizer import Tokenizer  # noqa: PLC0415

    if args.adapter is not None:
        model, tok, _ = load_adapted(args.adapter, args.quick, args.base)
    elif args.model is not None:
        if (args.model / "adapter_config.json").is_file():
            raise ValueError(f"{args.model} is an adapter folder (written by finetune); pass it as --adapter, "
                             "--model takes a folder written by merge")
        if (args.model / "config.json").is_file():          # a merged real model: a Hugging Face folder
            base = load_cli_base(str(args.model), False)
            model, tok = base.model, base.tokenizer
        else:
            model = load_checkpoint(args.model / "model.safetensors")
            tok = Tokenizer.from_file(args.model / "tokenizer.json")
    else:
        base = load_cli_base(args.base, args.quick)
        model, tok = base.model, base.tokenizer
    prompt = args.prompt
    if args.task is not None:
        t = get_task(args.task)
        if len(t.input_fields) != 1:
            raise ValueError(f"--task {t.name} builds its prompt from {list(t.input_fields)}; pass the whole prompt "
                             "text without --task instead")
        prompt = t.prompt_template.format(**{t.input_fields[0]: prompt}).rstrip(" ")
    model.eval()
    ids = encode_prompts(tok, [prompt])[0]       # as finetune trained it: a chat model's prompt is a user turn
    generate(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
             eos_id=tok.eos_id, truncate=True, on_token=TextStreamer(tok))
    print()


def cmd_merge(args) -> None:
    from minipeft.workshop.checkpoint import save_checkpoint  # noqa: PLC0415

    model, tok, run = load_adapted(args.adapter, args.quick)
    if not model.base_model.mergeable:
        raise ValueError(f"{args.adapter} holds {model.base_model.peft_type} adapters, which cannot be merged into the "
                         "base weights (the method adds computation no weight change reproduces); use it as it is: "
                         f"generate --adapter {args.adapter}")
    merged = model.merge_and_unload()
    if run.get("pretrained"):        # a real model: a Hugging Face folder that transformers reads too
        from minipeft.workshop.llm.weights import save_hf_folder  # noqa: PLC0415

        save_hf_folder(merged, tok, args.out)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(merged, args.out / "model.safetensors")
        tok.save(args.out / "tokenizer.json")
    print(f"merged model ({merged.num_parameters():,d} parameters) written to {args.out}")


def cmd_chat(args) -> None:
    from minipeft.workshop.chat import chat_loop  # noqa: PLC0415

    if args.adapter is not None:
        model, tok, _ = load_adapted(args.adapter, args.quick, args.base)
    else:
        base = load_cli_base(args.base, args.quick)
        model, tok = base.model, base.tokenizer
    model.eval()
    print("an empty line or end of input ends the conversation")
    chat_loop(model, tok, system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
              top_k=args.top_k, seed=args.seed)


def cmd_compare(args) -> None:
    from minipeft.workshop.compare import (  # noqa: PLC0415
        CompareConfig,
        format_table,
        llm_config,
        quick_config,
        run_compare,
        write_outputs,
    )

    given = {k: v for k, v in dict(task=args.task, methods=args.methods, steps=args.steps, seed=args.seed,
                                   batch_size=args.batch_size, n_test=args.n_test).items() if v is not None}
    llm = args.base != MINI
    cfg = (quick_config(**given, base=args.base) if args.quick else llm_config(args.base, **given) if llm else
           CompareConfig(**given))
    result = run_compare(cfg)
    print(format_table(result))
    for kind, path in write_outputs(result, args.out, plot=not args.no_plot).items():
        print(f"{kind}: {path}")
    print(f"{result.meta['wall_s']:.0f} s")


# ---- the parser ------------------------------------------------------------------------------------------------
class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows an option's default where it has one (not for flags, None, or a help that names its own)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from minipeft import __version__  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="minipeft", description="Parameter-efficient fine-tuning built from scratch.",
                                epilog="Exit codes: 0 done, 1 the run failed, 2 bad arguments.")
    p.add_argument("--version", action="version", version=f"minipeft {__version__}")
    p.add_argument("--debug", action="store_true", help="print the full traceback when a command fails")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    methods = _method_names()                         # in the table's order

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=_Help)
        sp.set_defaults(fn=fn)
        sp.add_argument("--quick", action="store_true", help="a small base model (built in about a minute; "
                        f"{QUICK_BASE_VAR}=tiny: the test suite's, in seconds)" if name != "compare" else
                        "the tiny base, few rows and steps (seconds; for trying things out)")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,   # also after the command
                        help="print the full traceback when the command fails")
        if name in ("finetune", "generate", "merge", "chat"):
            sp.add_argument("--base", help="a pretrained LLM instead of the mini GPT: smollm2-135m-instruct (fetched "
                            "once, 93 MB), a .gguf file or a Hugging Face model folder")
        return sp

    sp = add("pretrain", cmd_pretrain, "build the base model (or report the cached one)")
    sp.add_argument("--rebuild", action="store_true", help="retrain even if a cached model exists")
    sp = add("finetune", cmd_finetune, "fine-tune the base with one method and write an adapter folder")
    sp.add_argument("--method", help=f"a recipe ({','.join(methods)}), or a registered peft_type (lora, ia3, ...; "
                    "your own with --import) configured by --config/--r/--alpha/--targets; default: --config's")
    sp.add_argument("--config", type=existing_file, help="the method's config as JSON, in adapter_config.json's form "
                    '(e.g. {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})')
    sp.add_argument("--r", type=positive_int, help="rank (LoRA's r), on top of the recipe's or --config's")
    sp.add_argument("--alpha", type=positive_float, help="scaling numerator (LoRA's lora_alpha)")
    sp.add_argument("--targets", type=comma_list, help="modules to adapt: q_proj,v_proj or all-linear")
    sp.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                    help="a module or .py file to import first (registers a method of your own; repeatable)")
    sp.add_argument("--task", choices=sorted(TASKS), help="a generated task (default dialogsum), or the shape of "
                    "--data's rows")
    sp.add_argument("--data", type=existing_file, help="your own JSONL: the task's fields, or prompt/completion")
    sp.add_argument("--metric", type=metric_name, help="how the held-out rows are scored: rouge, exact (exact_match) "
                    "or accuracy (default: the task's; with --data, ROUGE for prompt/completion rows)")
    sp.add_argument("--out", type=out_dir, required=True, help="the adapter folder to write")
    sp.add_argument("--plot", action="store_true", help="also write loss.png, the training loss per step (needs "
                    "matplotlib: pip install 'minipeft[plots]')")
    sp.add_argument("--steps", type=positive_int, default=150, help="optimizer steps")
    sp.add_argument("--batch-size", type=positive_int, default=16, help="rows per step")
    sp.add_argument("--lr", type=positive_float, help="peak learning rate (default: the method's recipe)")
    sp.add_argument("--seed", type=int, default=0, help="data split, adapter init and batch order")
    sp.add_argument("--n-train", type=positive_int, default=2000, help="generated training rows")
    sp.add_argument("--n-test", type=non_negative_int, default=20, help="rows scored after training (0: none)")
    sp.add_argument("--max-new-tokens", type=positive_int, default=48, help="the scored completions' length")
    sp = add("compare", cmd_compare, "fine-tune with every method and print one table (writes CSV, JSON, PNG)")
    sp.add_argument("--task", choices=sorted(TASKS))
    sp.add_argument("--methods", type=method_list, help=f"comma-separated, from {','.join(methods)} (default all)")
    sp.add_argument("--steps", type=positive_int)
    sp.add_argument("--batch-size", type=positive_int)
    sp.add_argument("--n-test", type=positive_int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--base", default=MINI, choices=[MINI, *sorted(MODELS)],
                    help="the mini GPT, or a pretrained LLM at smaller sizes (30 steps of 4, 8 test rows; forgetting "
                    "as general knowledge and English perplexity)")
    sp.add_argument("--out", type=out_dir, default=Path("compare_out"), help="folder for compare.csv/.json/.png")
    sp.add_argument("--no-plot", action="store_true", help="skip the PNG")
    sp = add("generate", cmd_generate, "continue a prompt with the base, an adapter, or a merged model")
    sp.add_argument("--prompt", required=True, help="the text to continue (with --task: the task's input)")
    src = sp.add_mutually_exclusive_group()
    src.add_argument("--adapter", type=existing_dir, help="an adapter folder written by finetune")
    src.add_argument("--model", type=existing_dir, help="a model folder written by merge")
    sp.add_argument("--task", choices=sorted(TASKS), help="wrap --prompt in the task's template")
    sp.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate at most")
    sp.add_argument("--temperature", type=non_negative_float, default=0.0, help="0: greedy")
    sp.add_argument("--top-k", type=positive_int)
    sp.add_argument("--seed", type=int)
    sp = add("chat", cmd_chat, "talk to a chat model in the terminal (--base smollm2-135m-instruct)")
    sp.add_argument("--adapter", type=existing_dir, help="an adapter folder written by finetune --base ...")
    sp.add_argument("--system", help="a system message (default: the model's chat template's)")
    sp.add_argument("--max-new-tokens", type=positive_int, default=256, help="tokens per reply at most")
    sp.add_argument("--temperature", type=non_negative_float, default=0.0, help="0: greedy")
    sp.add_argument("--top-k", type=positive_int)
    sp.add_argument("--seed", type=int)
    sp = add("merge", cmd_merge, "fold an adapter into the base weights and write a plain model folder")
    sp.add_argument("--adapter", type=existing_dir, required=True, help="an adapter folder written by finetune")
    sp.add_argument("--out", type=out_dir, required=True, help="the model folder to write (model.safetensors, "
                    "tokenizer.json)")
    return p


def _method_names() -> list[str]:
    from minipeft.workshop.compare import METHOD_RECIPES  # noqa: PLC0415

    return list(METHOD_RECIPES)


def check_before_work(parser: argparse.ArgumentParser, args) -> None:
    """What can be refused before any work starts, with argparse's exit code 2: the cache folder, the method and
    its config, the plotting extra."""
    from minipeft.workshop.pretrain import minipeft_home  # noqa: PLC0415

    try:
        minipeft_home()
        base_name(getattr(args, "quick", False))
        if args.command == "finetune":
            from minipeft.workshop.cli_method import plan_method  # noqa: PLC0415

            args.plan = plan_method(args)
            if args.plot and importlib.util.find_spec("matplotlib") is None:
                raise ValueError("--plot needs matplotlib, which is not installed: pip install 'minipeft[plots]' (or "
                                 "pip install matplotlib), or leave --plot out (the run record keeps the losses)")
    except (ValueError, TypeError, OSError) as e:
        parser.error(" ".join(str(e).split()))


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse exits with 2 itself on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(numbers_as_values(sys.argv[1:] if argv is None else list(argv)))
    check_before_work(parser, args)
    try:
        args.fn(args)
    except KeyboardInterrupt:
        print(f"minipeft {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (every failure becomes one line and exit code 1)
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"minipeft {args.command}: error: {type(e).__name__}: {message}", file=sys.stderr)
        return 1
    return 0
