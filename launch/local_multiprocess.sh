#!/usr/bin/env bash
# Several "hosts" on one machine: N local processes joined by jax.distributed on localhost.
# Each process sees DEVICES_PER_PROCESS simulated CPU devices and reads its own data shard.
#   launch/local_multiprocess.sh 2 configs/digits.py /tmp/digits_2proc [--config.x=y ...]
set -euo pipefail
num_processes=${1:?number of processes}
config=${2:?config file}
workdir=${3:?workdir}
shift 3
port=${PORT:-$((20000 + RANDOM % 20000))}
export JAX_NUM_CPU_DEVICES=${DEVICES_PER_PROCESS:-2}
pids=()
for ((i = 0; i < num_processes; i++)); do
  python -m vit_jax.main --config="$config" --workdir="$workdir" \
    --coordinator="localhost:$port" --num_processes="$num_processes" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
