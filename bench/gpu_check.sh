#!/usr/bin/env bash
# The checks that need a CUDA machine, as one script (a lent GPU machine has minutes, not hours):
# the GPU tests (budgets with the pinned host tier, a model spread over GPU and CPU), then peak
# GPU memory against the planner on SmolLM2's shape and on Llama-2-7B's shape with the paper's
# calibration (256 x 128, bf16), from randomly initialised weights (memory depends on the shape
# only). Results go to $OUT (or ./gpu-check). The engine's Python packages must be importable;
# HF hub access is not needed.
#   TOKENIZER=dir-with-tokenizer.json bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
py=${PYTHON:-python3}
tok=${TOKENIZER:-.gpu/tok}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/pytest.txt"

$py bench/random_model.py --shape llama-2-7b --tokenizer "$tok" --out /tmp/llama-2-7b-shape
timeout 300 $py bench/memory.py --model /tmp/llama-2-7b-shape --device cuda:0 --dtype bfloat16 \
  --samples 256 --seq-len 128 --iterations 1 --budgets "all+held,1/4" 2>&1 | tee "$out/memory-7b.txt"
$py -m blockprune plan --model /tmp/llama-2-7b-shape --device cuda:0 --dtype bfloat16 \
  --samples 256 --seq-len 128 2>&1 | tee "$out/plan-7b.txt"

$py bench/random_model.py --shape smollm2-135m --tokenizer "$tok" --out /tmp/smollm2-shape --dtype float32
timeout 120 $py bench/memory.py --model /tmp/smollm2-shape --device cuda:0 --samples 16 --seq-len 128 \
  --iterations 1 --budgets "all+held,all,one position,none" 2>&1 | tee "$out/memory-smollm2.txt"
