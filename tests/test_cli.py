"""`python -m minipeft`: every command runs end to end on the tiny model; bad arguments exit 2 with a message,
a failed run exits 1 with one line on stderr."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from minipeft.workshop.cli import RUN_FILE, main
from minipeft.workshop.data.generator import make_splits

COMMANDS = ("pretrain", "finetune", "compare", "generate", "merge", "chat")
TINY = ["--quick", "--steps", "2", "--batch-size", "4", "--n-train", "8", "--n-test", "1"]
PROMPT = "#Person1#: Shall we meet at the library on Friday? #Person2#: Yes, at 3 pm."


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MINIPEFT_HOME", str(tmp_path_factory.mktemp("minipeft_home")))
    mp.setenv("MINIPEFT_QUICK_BASE", "tiny")          # --quick on the tiny base: the suite runs in seconds
    yield
    mp.undo()


def run(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one command, argparse's own exits included."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_module_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "minipeft", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert all(c in done.stdout for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and "usage: minipeft " + command in out


def test_pretrain(home, capsys):
    code, out, _ = run(["pretrain", "--quick"], capsys)
    assert code == 0 and "base model:" in out and "validation perplexity" in out


def test_finetune_generate_merge(home, tmp_path, capsys):
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    code, out, err = run(["finetune", "--method", "lora-all", "--out", str(adapter), *TINY], capsys)
    assert code == 0, err
    assert {"adapter_config.json", "adapter_model.safetensors", RUN_FILE} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / RUN_FILE).read_text())["method"] == "lora-all"
    ask = ["generate", "--prompt", PROMPT, "--task", "dialogsum", "--max-new-tokens", "6"]
    code, from_adapter, err = run([*ask, "--adapter", str(adapter)], capsys)
    assert code == 0 and from_adapter.strip(), err
    code, out, err = run(["merge", "--adapter", str(adapter), "--out", str(merged)], capsys)
    assert code == 0 and (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file(), err
    code, from_merged, err = run([*ask, "--model", str(merged)], capsys)
    assert code == 0 and from_merged == from_adapter, err        # the merged model is the adapted one's function


def test_finetune_reads_your_own_jsonl(home, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Repeat {i}: ", "completion": f"{i} {i}."}) + "\n"
                            for i in range(12)))
    code, out, err = run(["finetune", "--method", "bitfit", "--data", str(data), "--out", str(tmp_path / "a"),
                          "--quick", "--steps", "2", "--batch-size", "4", "--n-test", "2"], capsys)
    assert code == 0, err
    run_info = json.loads((tmp_path / "a" / RUN_FILE).read_text())
    assert run_info["task"] == "prompt_completion" and (run_info["n_train"], run_info["n_test"]) == (10, 2)


def test_qlora_adapter_loads_on_its_4bit_base(home, tmp_path, capsys):
    code, _, err = run(["finetune", "--method", "qlora", "--out", str(tmp_path / "q"), *TINY], capsys)
    assert code == 0, err
    code, out, err = run(["generate", "--adapter", str(tmp_path / "q"), "--prompt", "Hello", "--max-new-tokens", "3"],
                         capsys)
    assert code == 0, err


def test_compare_quick(home, tmp_path, capsys):
    code, out, err = run(["compare", "--quick", "--methods", "lora-qv,bitfit", "--steps", "1", "--out",
                          str(tmp_path), "--no-plot"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["base", "lora-qv", "bitfit"]
    assert "LoRA r=8 q,v" in out and "BitFit" in out


@pytest.mark.parametrize("argv", [
    [],
    ["bogus"],
    ["finetune", "--method", "lora", "--out", "o"],
    ["finetune", "--method", "lora-all"],
    ["finetune", "--method", "bitfit", "--data", "no_such_file.jsonl", "--out", "o"],
    ["finetune", "--method", "lora-all", "--out", "o", "--lr", "-1"],
    ["finetune", "--method", "lora-all", "--out", "o", "--steps", "two"],
    ["compare", "--steps", "0"],
    ["compare", "--methods", "lora-qv,lora"],
    ["generate"],
    ["generate", "--prompt", "hi", "--adapter", "no_such_folder"],
    ["merge", "--adapter", "no_such_folder", "--out", "o"],
], ids=lambda a: " ".join(a) or "nothing")
def test_bad_arguments_exit_2_with_a_message(argv, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and "error:" in err


def test_a_failed_run_exits_1_with_one_line(home, tmp_path, capsys):
    code, _, err = run(["finetune", "--method", "houlsby", "--out", str(tmp_path / "h"), *TINY], capsys)
    assert code == 0, err
    code, _, err = run(["merge", "--adapter", str(tmp_path / "h"), "--out", str(tmp_path / "m")], capsys)
    assert code == 1 and "cannot be merged" in err and len(err.strip().splitlines()) == 1
    assert f"generate --adapter {tmp_path / 'h'}" in err and not (tmp_path / "m").exists()
    code, _, err = run(["generate", "--model", str(tmp_path / "h"), "--prompt", "Hi"], capsys)
    assert code == 1 and "is an adapter folder" in err and "--adapter" in err
    with pytest.raises(ValueError, match="is an adapter folder"):     # --debug after the command: the traceback
        main(["generate", "--model", str(tmp_path / "h"), "--prompt", "Hi", "--debug"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no label here"}\n')
    code, _, err = run(["finetune", "--method", "bitfit", "--data", str(bad), "--out", str(tmp_path / "b"),
                        "--quick"], capsys)
    assert code == 1 and "fit no task" in err and len(err.strip().splitlines()) == 1


def test_the_run_record_is_written_in_the_adapters_own_unit(home, tmp_path, capsys, monkeypatch):
    """One crash-safe unit holds the adapter and its record, so a kill cannot pair a new adapter with an old record."""
    from minipeft import io_utils
    from minipeft.peft import save_load

    units, real = [], io_utils.write_files_as_unit

    def spy(directory, files):
        units.append(sorted(files))
        return real(directory, files)

    monkeypatch.setattr(save_load, "write_files_as_unit", spy)
    code, _, err = run(["finetune", "--method", "lora-qv", "--out", str(tmp_path / "a"), *TINY], capsys)
    assert code == 0, err
    assert units == [sorted(["adapter_config.json", "adapter_model.safetensors", RUN_FILE])]


def test_a_failed_save_leaves_the_earlier_adapter_and_its_record_usable(home, tmp_path, capsys, monkeypatch):
    """The adapter folder is replaced as a unit, so a save that fails keeps the earlier adapter whole; its run record
    (which says to load a QLoRA adapter on the 4-bit base) must stay beside it for generate to load it."""
    from minipeft.peft import PeftModel

    out = tmp_path / "a"
    code, _, err = run(["finetune", "--method", "qlora", "--out", str(out), *TINY], capsys)
    assert code == 0, err

    def crash(self, directory, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(PeftModel, "save_pretrained", crash)
        code, _, err = run(["finetune", "--method", "lora-qv", "--out", str(out), *TINY], capsys)
    assert code == 1 and "disk full" in err
    assert json.loads((out / RUN_FILE).read_text())["method"] == "qlora"
    code, _, err = run(["generate", "--adapter", str(out), "--prompt", "Hi", "--max-new-tokens", "2"], capsys)
    assert code == 0, err


def strict_json(path):
    """The file's JSON, refusing NaN and Infinity, which JSON does not have (Python writes them unless told not to)."""
    def refuse(token):
        raise ValueError(f"{path} holds {token}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def rows_file(tmp_path, n=12):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Repeat {i}: ", "completion": f"{i} {i}."}) + "\n"
                            for i in range(n)))
    return data


@pytest.mark.parametrize("metric, keys", [(None, {"rouge1", "rouge2", "rougeL"}), ("exact", {"exact_match"}),
                                          ("accuracy", {"accuracy"})])
def test_your_own_data_is_scored_by_its_metric_not_the_dialogue_one(home, tmp_path, capsys, metric, keys):
    argv = ["finetune", "--method", "bitfit", "--data", str(rows_file(tmp_path)), "--out", str(tmp_path / "a"),
            "--quick", "--steps", "2", "--batch-size", "4", "--n-test", "2"]
    code, out, err = run([*argv, *(["--metric", metric] if metric else [])], capsys)
    assert code == 0, err
    record = strict_json(tmp_path / "a" / RUN_FILE)          # was: "fact_recall": NaN, which no JSON reader takes
    assert set(record["scores"]) == keys and "fact_recall" not in out
    assert record["metric"] == {"exact": "exact_match"}.get(metric, metric or "rouge")


def test_the_run_record_keeps_the_loss_of_every_step(home, tmp_path, capsys):
    code, _, err = run(["finetune", "--method", "lora-qv", "--out", str(tmp_path / "a"), *TINY, "--steps", "3"], capsys)
    assert code == 0, err
    losses = strict_json(tmp_path / "a" / RUN_FILE)["losses"]
    assert len(losses) == 3 and all(isinstance(v, float) and v > 0 for v in losses)


def test_r_alpha_and_targets_set_the_adapters_config(home, tmp_path, capsys):
    code, out, err = run(["finetune", "--method", "lora-all", "--r", "2", "--alpha", "6", "--targets", "q_proj,fc1",
                          "--out", str(tmp_path / "a"), *TINY], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (2, 6, ["fc1", "q_proj"])
    code, _, err = run(["finetune", "--method", "ia3", "--r", "2", "--out", str(tmp_path / "b"), *TINY], capsys)
    assert code == 2 and "--r sets r, which IA3Config (--method ia3) does not have" in err


def test_config_file_gives_any_registered_methods_config(home, tmp_path, capsys):
    cfg = tmp_path / "lora.json"
    cfg.write_text(json.dumps({"peft_type": "LORA", "r": 3, "lora_alpha": 3, "target_modules": "all-linear"}))
    code, _, err = run(["finetune", "--config", str(cfg), "--lr", "1e-2", "--out", str(tmp_path / "a"), *TINY], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"]) == ("LORA", 3)
    assert strict_json(tmp_path / "a" / RUN_FILE)["method"] == "lora"
    code, _, err = run(["finetune", "--method", "lora", "--config", str(cfg), "--out", str(tmp_path / "b"), *TINY],
                       capsys)
    assert code == 2 and "--method lora has no recipe with a learning rate; pass --lr" in err


def test_a_method_registered_outside_the_package_reaches_the_cli_not_the_table(home, tmp_path, capsys):
    """A student's method (registered by tests/example_method.py) trains, saves and generates through the command
    line with --import and --config, and the comparison table's recipes stay as they were."""
    from minipeft.workshop.compare import METHOD_RECIPES

    cfg = tmp_path / "parallel.json"
    cfg.write_text(json.dumps({"peft_type": "EXAMPLE_PARALLEL", "bottleneck": 2, "target_modules": ["fc1"]}))
    plugin = str(Path(__file__).with_name("example_method.py"))
    code, out, err = run(["finetune", "--import", plugin, "--method", "example_parallel", "--config", str(cfg),
                          "--lr", "1e-2", "--out", str(tmp_path / "a"), *TINY], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["peft_type"] == "EXAMPLE_PARALLEL"
    code, out, err = run(["generate", "--adapter", str(tmp_path / "a"), "--prompt", "Hi", "--max-new-tokens", "2"],
                         capsys)
    assert code == 0, err
    assert "example_parallel" not in METHOD_RECIPES
    code, _, err = run(["finetune", "--method", "nope", "--out", str(tmp_path / "b"), *TINY], capsys)
    assert code == 2 and "--import your_module.py" in err


def test_finetune_without_progress_prints_nothing(home, capsys):
    from minipeft.peft import LoraConfig, get_peft_model
    from minipeft.workshop.finetune import finetune
    from minipeft.workshop.pretrain import load_base_model

    base = load_base_model(quick=True, progress=False)
    rows = make_splits("dialogsum", 4, 0, 0, seed=0)["train"]
    capsys.readouterr()
    finetune(get_peft_model(base.model, LoraConfig(r=2)), base.tokenizer, "dialogsum", rows, steps=10, batch_size=2,
             progress=False, measure_memory=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""                   # was: "finetune step 10/10: loss ..."


@pytest.mark.parametrize("env, built", [(None, "small"), ("tiny", "tiny"), ("small", "small")])
def test_quick_means_the_small_base_unless_told_tiny(env, built, tmp_path, capsys, monkeypatch):
    """--quick builds the small base, which learns a toy task in a short fine-tune (the README's figures); the suite
    keeps the tiny one with MINIPEFT_QUICK_BASE=tiny."""
    from minipeft.workshop import pretrain

    seen = []

    def stop(cfg=None, **kwargs):
        seen.append(cfg)
        raise RuntimeError("stopped before building")

    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path))
    if env is None:
        monkeypatch.delenv("MINIPEFT_QUICK_BASE", raising=False)
    else:
        monkeypatch.setenv("MINIPEFT_QUICK_BASE", env)
    monkeypatch.setattr(pretrain, "load_base_model", stop)
    code, _, err = run(["pretrain", "--quick"], capsys)
    assert code == 1 and "stopped before building" in err
    assert seen == [pretrain.BASES[built]] and pretrain.SMALL != pretrain.QUICK
    monkeypatch.setenv("MINIPEFT_QUICK_BASE", "huge")
    code, _, err = run(["pretrain", "--quick"], capsys)
    assert code == 2 and "MINIPEFT_QUICK_BASE='huge'" in err and len(seen) == 1


def test_a_record_without_base_name_loads_on_the_tiny_base_its_quick_meant(home, tmp_path, capsys, monkeypatch):
    code, _, err = run(["finetune", "--method", "lora-qv", "--out", str(tmp_path / "a"), *TINY], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "a" / RUN_FILE).read_text())
    assert record.pop("base_name") == "tiny"
    (tmp_path / "a" / RUN_FILE).write_text(json.dumps(record))
    monkeypatch.delenv("MINIPEFT_QUICK_BASE")        # --quick now means the small base, which is not built here
    code, out, err = run(["generate", "--adapter", str(tmp_path / "a"), "--prompt", "Hi", "--max-new-tokens", "2"],
                         capsys)
    assert code == 0 and "building" not in out, err


# ---- a pretrained LLM as the base (--base): a tiny random Llama written as a GGUF file -----------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from minipeft.workshop.llm.tiny import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny.gguf", seed=1)


def test_finetune_generate_merge_chat_on_a_pretrained_base(home, tiny_llama, tmp_path, capsys, monkeypatch):
    """--base runs every command on the Llama: the record names the base, generate and merge find it there, the
    merged model is a Hugging Face folder that generate --model reads back, and chat streams a reply."""
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    code, _, err = run(["finetune", "--base", str(tiny_llama), "--method", "lora-qv", "--lr", "1e-3", "--steps", "2",
                        "--batch-size", "2", "--n-train", "4", "--n-test", "1", "--max-new-tokens", "4",
                        "--out", str(adapter)], capsys)
    assert code == 0, err
    record = json.loads((adapter / RUN_FILE).read_text())
    assert record["pretrained"] == str(tiny_llama)
    code, out_adapter, err = run(["generate", "--adapter", str(adapter), "--prompt", "hi", "--max-new-tokens", "5"],
                                 capsys)
    assert code == 0, err
    code, _, err = run(["merge", "--adapter", str(adapter), "--out", str(merged)], capsys)
    assert code == 0, err
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in merged.iterdir()}
    code, out_merged, err = run(["generate", "--model", str(merged), "--prompt", "hi", "--max-new-tokens", "5"],
                                capsys)
    assert code == 0, err
    assert out_merged.splitlines()[-1] == out_adapter.splitlines()[-1]    # merged = adapter, greedily
    code, _, err = run(["generate", "--adapter", str(adapter), "--base", "smollm2-135m-instruct", "--prompt", "hi"],
                       capsys)
    assert code == 1 and "leave --base out" in err
    answers = iter(["hello there", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    code, out, err = run(["chat", "--base", str(tiny_llama), "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    assert "model> " in out


def test_chat_needs_a_chat_model(home, capsys, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda prompt="": "hello")
    code, _, err = run(["chat", "--quick"], capsys)
    assert code == 1 and "has no chat template" in err


def test_compare_quick_on_an_llm_base(home, tmp_path, capsys):
    code, out, err = run(["compare", "--quick", "--base", "smollm2-135m-instruct", "--methods", "lora-qv",
                          "--steps", "1", "--out", str(tmp_path), "--no-plot"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["base", "lora-qv"]
    assert all(0 <= float(r["knowledge"]) <= 1 for r in rows) and "knows" in out


def test_finetune_on_a_named_llm_takes_the_rate_measured_on_it(tmp_path, monkeypatch):
    """--method without --lr: the recipe's rate measured on the named LLM (LLM_RATES), the mini GPT's without
    --base, and --lr over both."""
    from minipeft.workshop.cli import build_parser  # noqa: PLC0415
    from minipeft.workshop.cli_method import plan_method  # noqa: PLC0415
    from minipeft.workshop.compare import LLM_RATES, METHOD_RECIPES  # noqa: PLC0415

    monkeypatch.setitem(LLM_RATES, "smollm2-135m-instruct", {"lora-qv": (2e-3, "a probe")})
    out = ["--out", str(tmp_path / "a")]

    def lr(*argv):
        return plan_method(build_parser().parse_args(["finetune", "--method", "lora-qv", *out, *argv])).lr
    assert lr("--base", "smollm2-135m-instruct") == 2e-3
    assert lr() == METHOD_RECIPES["lora-qv"].lr != 2e-3
    assert lr("--base", "smollm2-135m-instruct", "--lr", "5e-4") == 5e-4
