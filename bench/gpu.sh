#!/usr/bin/env bash
# GPU figures for bench/RESULTS.md, on a Qwen2.5-3B-shaped model (bench/model_configs: the hub's config.json, random
# weights, bf16, nothing downloaded):
#   1. the standard job of bench/step_time.py (2 prompts x G=4, 64 new tokens);
#   2. the gpu-qwen2.5-3b preset's shape (4 prompts x G=12, 1024 new tokens, activation checkpointing);
#   3. the same shape without checkpointing: one completion per backward pass over the prompt's cached keys.
# Usage: bash bench/gpu.sh OUT_DIR [TOKENIZER [JOB ...]]   (TOKENIZER: hub id or folder; offline, any local tokenizer
# folder; JOB: standard, preset, preset-no-checkpointing; all three when none is named)
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUT_DIR [TOKENIZER [JOB ...]]}
tokenizer=${2:-Qwen/Qwen2.5-3B}
jobs=" ${*:3} "
[[ $jobs == "  " ]] && jobs=" standard preset preset-no-checkpointing "
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
python3 -c "import torch, transformers, peft, accelerate, importlib.util as u; print('torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__,
'flash_attn', bool(u.find_spec('flash_attn')))" | tee -a "$out/machine.txt"
bench=(python3 bench/step_time.py --model random:bench/model_configs/Qwen2.5-3B --tokenizer "$tokenizer"
       --device cuda --threads 8)
preset=(--set num_prompts 4 --set group_size 12 --set max_new_tokens 1024 --set temperature 1.0 --set lr 5.0e-7)
status=0
run() {  # name, limit in seconds, arguments
  local name=$1 limit=$2; shift 2
  [[ $jobs == *" $name "* ]] || return 0
  echo "== $name"
  timeout "$limit" "${bench[@]}" "$@" > "$out/$name.json" || { echo "$name failed or ran out of time"; status=1; }
  cat "$out/$name.json"
}
run standard 180 --steps 3 --warmup 1
run preset 270 --steps 2 --warmup 1 "${preset[@]}" --set gradient_checkpointing true
run preset-no-checkpointing 200 --steps 2 --warmup 1 "${preset[@]}"
exit $status
