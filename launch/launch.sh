#!/usr/bin/env bash
# launch/launch.sh <accelerate config name> [train_grpo.py arguments...]
# Prints the exact command, then runs it. ACCELERATE overrides which `accelerate` is used (default: the project's
# .venv if present, else the one on PATH).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name="${1:?usage: launch/launch.sh <single_gpu|ddp|zero2|zero3|cpu_2proc> [--config FILE] [--set FIELD VALUE ...]}"
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
cmd=("$ACCELERATE" launch --config_file "$config" "$root/launch/train_grpo.py" "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
