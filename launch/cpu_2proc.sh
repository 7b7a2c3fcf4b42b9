#!/usr/bin/env bash
# 2 CPU processes over gloo (works anywhere; what CI tests). Extra arguments go to train_grpo.py, e.g. --set max_steps 10
exec "$(dirname "$0")/launch.sh" cpu_2proc --cpu --config "$(dirname "$0")/configs/cpu.yaml" "$@"
