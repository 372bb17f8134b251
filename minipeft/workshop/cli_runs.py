"""The bases the command line runs on and the run record beside each adapter it writes.

A command runs on the mini GPT (`--quick`: the small one, or the tiny one with MINIPEFT_QUICK_BASE=tiny) or on a
pretrained LLM (`--base`). finetune writes `minipeft_run.json` beside the adapter, naming its base, method and
quantization, so generate, merge and chat given the adapter load it on the base it was trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RUN_FILE = "minipeft_run.json"      # beside an adapter: the method, task and base it was trained with
QUICK_BASE_VAR = "MINIPEFT_QUICK_BASE"   # which base --quick means: small (default) or tiny (the test suite's)


def base_name(quick: bool) -> str:
    """The base a command runs on: full, or with --quick $MINIPEFT_QUICK_BASE (small, the default, or tiny)."""
    if not quick:
        return "full"
    name = os.environ.get(QUICK_BASE_VAR) or "small"
    if name not in ("small", "tiny"):
        raise ValueError(f"{QUICK_BASE_VAR}={name!r}: --quick runs on the small base (default) or the tiny one; set "
                         f"{QUICK_BASE_VAR} to small or tiny, or unset it")
    return name


def load_cli_base(pretrained: str | None, quick: bool):
    """The base a command runs on: a pretrained model (--base: a name, a .gguf file or a Hugging Face folder), or
    the project's mini GPT (the small one with --quick)."""
    if pretrained is not None:
        from minipeft.workshop.llm import load_pretrained  # noqa: PLC0415

        return load_pretrained(pretrained)
    from minipeft.workshop.pretrain import BASES, load_base_model  # noqa: PLC0415

    return load_base_model(cfg=BASES[base_name(quick)], progress=True)


def read_run(adapter: Path) -> dict:
    """The run record beside an adapter ({} when there is none), refused by name when it is not one."""
    run_file = adapter / RUN_FILE
    if not run_file.is_file():
        return {}
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{run_file} is not valid JSON ({e}); it says which base the adapter was trained on: run "
                         f"finetune --out {adapter} again, or delete the file to load the adapter on the default "
                         "(float) base") from None
    if not isinstance(run, dict):
        raise ValueError(f"{run_file} holds a JSON {type(run).__name__}, not the run record finetune writes; run "
                         f"finetune --out {adapter} again, or delete the file")
    return run


def load_adapted(adapter: Path, quick: bool, pretrained: str | None = None):
    """(model, tokenizer, run info) of an adapter folder on the base it was trained on (4-bit for QLoRA)."""
    from minipeft.peft import PeftModel, save_load  # noqa: PLC0415
    from minipeft.quant import BitsAndBytesConfig, quantize_model  # noqa: PLC0415
    from minipeft.workshop.cli_method import import_methods  # noqa: PLC0415
    from minipeft.workshop.compare.recipes import NF4_DQ  # noqa: PLC0415
    from minipeft.workshop.pretrain import BASES, load_base_model  # noqa: PLC0415

    save_load.recover(str(adapter))   # finish a save a crash cut short before reading its record
    run = read_run(adapter)
    import_methods(run.get("imports"))
    if run.get("pretrained"):    # a real model: the name or path it was loaded from
        name = run["pretrained"]
    elif "base_name" in run:
        name = run["base_name"]
    elif "quick" in run:         # a record from before the small base: its --quick meant the tiny base
        name = "tiny" if run["quick"] else "full"
    else:
        name = base_name(quick)
    if pretrained is not None and pretrained != run.get("pretrained"):
        raise ValueError(f"{adapter} was trained on {run.get('pretrained') or 'the mini GPT'} (its {RUN_FILE} says "
                         f"so), not on --base {pretrained}; leave --base out: the adapter's record names its base")
    if run.get("pretrained"):
        base = load_cli_base(name, False)
    elif name not in BASES:
        raise ValueError(f"{adapter / RUN_FILE}: base_name {name!r} is not one of {sorted(BASES)}; run finetune --out "
                         f"{adapter} again")
    else:
        base = load_base_model(cfg=BASES[name], progress=True)
    qcfg = run.get("quantization")
    if qcfg is not None:
        model = quantize_model(base.model, BitsAndBytesConfig.from_dict(qcfg))
    else:
        model = quantize_model(base.model, NF4_DQ) if run.get("method") == "qlora" else base.model
    return PeftModel.from_pretrained(model, str(adapter)), base.tokenizer, run
