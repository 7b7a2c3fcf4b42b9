#!/usr/bin/env bash
# launch/launch.sh <accelerate config name> [train_grpo.py arguments...]
# Prints the exact command, then runs it. ACCELERATE overrides which `accelerate` is used (default: the project's
# .venv if present, else the one on PATH). On a cluster, run it on every machine with what the scheduler knows:
# MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT, NUM_MACHINES and NUM_PROCESSES (all machines' processes) become
# accelerate launch's --machine_rank, --main_process_ip, ... (e.g. under Slurm: MACHINE_RANK=$SLURM_PROCID).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name="${1:?usage: launch/launch.sh <single_gpu|ddp|zero2|zero3|cpu_2proc|cpu_zero2|cpu_zero3|cpu_2node> [--config FILE] [--set FIELD VALUE ...]}"
shift
config="$root/launch/accelerate/$name.yaml"
[ -f "$config" ] || { echo "no accelerate config '$name': choose one of $(cd "$root/launch/accelerate" && ls *.yaml | sed 's/.yaml//' | tr '\n' ' ')" >&2; exit 2; }
if [ -z "${ACCELERATE:-}" ]; then
  if [ -x "$root/.venv/bin/accelerate" ]; then ACCELERATE="$root/.venv/bin/accelerate"; else ACCELERATE=accelerate; fi
fi
# Relative paths (--config, --import, --task, output_dir) mean what they mean where you stand, as in any command.
# The settings are checked once, in one process, before any rank starts: a typo is one line, not every rank's traceback.
python="$(dirname "$ACCELERATE")/python"
[ -x "$python" ] || python=python3
"$python" "$root/launch/train_grpo.py" --check "$@" || exit 2
cluster=()
[ -n "${NUM_MACHINES:-}" ] && cluster+=(--num_machines "$NUM_MACHINES")
[ -n "${NUM_PROCESSES:-}" ] && cluster+=(--num_processes "$NUM_PROCESSES")
[ -n "${MACHINE_RANK:-}" ] && cluster+=(--machine_rank "$MACHINE_RANK")
[ -n "${MAIN_PROCESS_IP:-}" ] && cluster+=(--main_process_ip "$MAIN_PROCESS_IP")
[ -n "${MAIN_PROCESS_PORT:-}" ] && cluster+=(--main_process_port "$MAIN_PROCESS_PORT")
cmd=("$ACCELERATE" launch --config_file "$config" "${cluster[@]}" "$root/launch/train_grpo.py" "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
