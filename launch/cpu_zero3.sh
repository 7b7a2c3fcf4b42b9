#!/usr/bin/env bash
# DeepSpeed ZeRO-3 on 2 CPU processes over gloo: weights, gradients and optimizer states sharded; rollouts gather the
# weights once per step (CI tests it). Extra arguments go to train_grpo.py, e.g. --set max_steps 10
exec "$(dirname "$0")/launch.sh" cpu_zero3 --cpu --config "$(dirname "$0")/configs/cpu.yaml" "$@"
