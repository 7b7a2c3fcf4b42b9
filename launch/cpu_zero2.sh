#!/usr/bin/env bash
# DeepSpeed ZeRO-2 on 2 CPU processes over gloo (works anywhere; CI tests it). Extra arguments go to train_grpo.py,
# e.g. --set max_steps 10
exec "$(dirname "$0")/launch.sh" cpu_zero2 --cpu --config "$(dirname "$0")/configs/cpu.yaml" "$@"
