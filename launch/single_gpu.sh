#!/usr/bin/env bash
# one GPU. Extra arguments go to train_grpo.py, e.g. --set max_steps 10
exec "$(dirname "$0")/launch.sh" single_gpu --config "$(dirname "$0")/configs/qwen2.5-3b-countdown.yaml" "$@"
