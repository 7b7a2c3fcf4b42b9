#!/usr/bin/env bash
# Two "machines" on this host, one CPU process each, started as a cluster's scheduler starts them: the same command
# on every machine with its MACHINE_RANK and the main machine's address. Extra arguments go to train_grpo.py, e.g.
# --set max_steps 10. If one machine fails, the other is stopped; the exit status is the first failure's.
here="$(cd "$(dirname "$0")" && pwd)"
export MAIN_PROCESS_IP=127.0.0.1 MAIN_PROCESS_PORT="${MAIN_PROCESS_PORT:-29520}"
machine() { MACHINE_RANK="$1" exec "$here/launch.sh" cpu_2node --cpu --config "$here/configs/cpu.yaml" "${@:2}"; }
machine 1 "$@" & machine_1=$!
machine 0 "$@" & machine_0=$!
trap 'kill -TERM $machine_0 $machine_1 2>/dev/null' INT TERM
wait -n $machine_0 $machine_1; first=$?
if [ "$first" -ne 0 ]; then
  echo "cpu_2node: a machine exited with status $first; stopping the other" >&2
  kill -TERM $machine_0 $machine_1 2>/dev/null
fi
wait $machine_0; status_0=$?
wait $machine_1; status_1=$?
[ "$first" -ne 0 ] && exit "$first"
[ "$status_0" -ne 0 ] && exit "$status_0"
exit "$status_1"
