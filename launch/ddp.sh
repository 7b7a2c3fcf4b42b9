#!/usr/bin/env bash
# data parallel on all GPUs of this machine. Extra arguments go to train_grpo.py, e.g. --set max_steps 10
exec "$(dirname "$0")/launch.sh" ddp --config "$(dirname "$0")/configs/qwen2.5-3b-countdown.yaml" "$@"
