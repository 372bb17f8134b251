#!/usr/bin/env bash
# The GPU check, prepared to run in one call on a GPU machine where CuPy and a CUDA build of
# PyTorch are installed but minipeft is not (nothing can be downloaded there, so it runs from this tree):
#
#     bash bench/gpu_check.sh                               # ~9 minutes at most; logs under $OUT (./gpu_check_out)
#     GPU_CHECK_PARTS=tests PYTEST_LIMIT=540 bash bench/gpu_check.sh   # the tests again, with more time
#
# 1. minipeft against PyTorch on the same GPU (bench/vs_pytorch.py: ms/step, tokens/s, inference), the
#    tutorials' model and the largest shape;
# 2. bench/bench_train_step.py on the GPU (LoRA / full step time, the GPU's float32 matmul rate);
# 3. the real model, SmolLM2-135M-Instruct, against PyTorch + transformers on the same GPU (bench/vs_pytorch.py
#    --model: training steps per method and shape with their memory, decoding tokens/s, load time), when its GGUF
#    file is cached under $MINIPEFT_HOME (default ~/.cache/minipeft)/smollm2-135m-instruct/: this machine cannot
#    download it, so copy the file there first; without it the step says so and is skipped (up to
#    ${LLM_LIMIT:-300} s more when it runs; alone: GPU_CHECK_PARTS=llm bash bench/gpu_check.sh);
# 4. the test suite with MINIPEFT_DEVICE=cuda (stopping after 25 failures; the 15 slowest tests listed).
#    tests/test_metrics.py is left out: it checks ROUGE against the rouge-score package, a dev extra that such a
#    machine may lack (host code; it runs on every CPU run).
# Each step has its own time limit, so a slow one cannot eat the next one's; each prints its exit status.
# A dry run of the tests part without a GPU, on the test suite's CuPy stand-in:
#     MINIPEFT_DEVICE=cpu MINIPEFT_TEST_DEVICE=strict GPU_CHECK_PARTS=tests bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
export MINIPEFT_DEVICE=${MINIPEFT_DEVICE:-cuda} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=$(command -v python3 || command -v python)

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output to the screen and $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$py" -c "import numpy, sys; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"
    "$py" -c "import cupy; print('cupy', cupy.__version__)" 2>/dev/null || echo "no cupy"
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>/dev/null \
        || echo "no torch"
    echo "MINIPEFT_DEVICE=$MINIPEFT_DEVICE"
} | tee "$out/summary.txt"

parts=${GPU_CHECK_PARTS:-bench llm tests}
if [[ " $parts " == *" bench "* ]]; then
    # shellcheck disable=SC2086  # VS_PYTORCH_ARGS is a list of arguments
    step vs_pytorch 180 "$py" bench/vs_pytorch.py ${VS_PYTORCH_ARGS:---shapes mini large --rounds 5}
    step bench_train_step 90 "$py" bench/bench_train_step.py
fi
if [[ " $parts " == *" llm "* ]]; then
    gguf=${MINIPEFT_HOME:-$HOME/.cache/minipeft}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
    if [[ -f "$gguf" ]]; then
        # shellcheck disable=SC2086  # VS_PYTORCH_LLM_ARGS is a list of arguments
        step vs_pytorch_llm "${LLM_LIMIT:-300}" "$py" bench/vs_pytorch.py --model smollm2-135m-instruct \
            --json "$out/vs_pytorch_llm.json" ${VS_PYTORCH_LLM_ARGS:---rounds 1 --steps 3}
    else
        echo "=== vs_pytorch_llm: skipped, the real model's file is not cached at $gguf (this machine cannot" \
            "download it: copy SmolLM2-135M-Instruct.Q4_1.gguf there, or set MINIPEFT_HOME)" | tee -a "$out/summary.txt"
    fi
fi
if [[ " $parts " == *" tests "* ]]; then
    step pytest "${PYTEST_LIMIT:-300}" "$py" -m pytest -q -p no:cacheprovider --maxfail=25 --durations=15 \
    --ignore=tests/test_metrics.py
fi
cat "$out/summary.txt"
