#!/usr/bin/env bash
# Several "hosts" on one machine: N local processes joined by jax.distributed on localhost.
# Each process sees DEVICES_PER_PROCESS (default 2) simulated CPU devices and reads its own data
# shard; PORT (default: random in 20000-39999) is the coordinator's port.
#   launch/local_multiprocess.sh 2 configs/digits.py /tmp/digits_2proc [--config.x=y ...]
# --dry-run (first argument) prints the commands, shell-quoted, one per line, and runs nothing:
#   launch/local_multiprocess.sh --dry-run 2 configs/digits.py /tmp/digits_2proc
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
dry_run_flag "$@"
shift "$dry_run_shift"
num_processes=${1:?number of processes}
config=${2:?config file}
workdir=${3:?workdir}
shift 3
port=${PORT:-$((20000 + RANDOM % 20000))}
devices=${DEVICES_PER_PROCESS:-2}

for ((i = 0; i < num_processes; i++)); do
  command=(env JAX_NUM_CPU_DEVICES="$devices" python -m vit_jax.main --config="$config"
    --workdir="$workdir" --coordinator="localhost:$port" --num_processes="$num_processes"
    --process_id="$i" "$@")
  run_background "${command[@]}"
done
wait_all
