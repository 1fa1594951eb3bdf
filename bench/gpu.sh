#!/usr/bin/env bash
# GPU benchmarks in one go, on a machine with one CUDA GPU:
#   1. the GPU's measured bf16 matmul rate (beside the datasheet peak the trainer uses for MFU);
#   2. GPT-2 124M training (block 1024, bf16 autocast, torch.compile, flash attention through SDPA,
#      fused AdamW): tokens/s and MFU from the trainer's own log;
#   3. sampling tokens/s with and without the KV cache;
#   4. time for configs/shakespeare_char.toml to reach val loss 1.47 (the "quality" stage).
# Usage: GPT2_TOKENIZER_DIR=path/to/gpt2 bash bench/gpu.sh [throughput|quality|all]
# Results: bench/results/*.json (and copies under $OUT when that is set).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STAGE="${1:-all}"
RUN_DIR="$(mktemp -d)"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"

if [[ "$STAGE" == throughput || "$STAGE" == all ]]; then
  python3 bench/peak.py --device cuda --sizes 4096,8192 --repeats 5
  # 124M parameters, 32 x 1024 tokens per micro-batch (as configs/gpt2_124m.toml), 2 micro-batches per step;
  # stdlib with GPT-2 tokens.
  python3 train.py configs/gpt2_124m.toml --out_dir="$RUN_DIR/gpt2" --data_dir="$RUN_DIR/data" \
      --batch_size=32 --gradient_accumulation_steps=2 --max_iters=60 --eval_interval=1000 --eval_iters=1 \
      --log_interval=5 --warmup_iters=10 --lr_decay_iters=60 --plot=false --progress=false
  python3 - "$RUN_DIR/gpt2/log.jsonl" <<'PY'
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1]) if '"tok_per_s"' in line]
steady = [r for r in records if r["step"] >= 20]  # after compilation and warm-up
tps = statistics.median(r["tok_per_s"] for r in steady)
mfu = statistics.median(r["mfu"] for r in steady)
print(f"GPT-2 124M training: {tps:,.0f} tok/s (median of {len(steady)} log windows, "
      f"min {min(r['tok_per_s'] for r in steady):,.0f}, max {max(r['tok_per_s'] for r in steady):,.0f}), "
      f"MFU {mfu:.1%} of the datasheet bf16 peak")
PY
  python3 bench/sample.py --device cuda --repeats 2
fi

if [[ "$STAGE" == quality || "$STAGE" == all ]]; then
  python3 bench/time_to_loss.py configs/shakespeare_char.toml --target 1.47 --device=cuda
fi

if [[ -n "${OUT:-}" ]]; then cp bench/results/*.json "$OUT"/ 2>/dev/null || true; fi
