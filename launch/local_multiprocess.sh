#!/usr/bin/env bash
# Several "hosts" on one machine: N local processes joined by jax.distributed on localhost.
# Each process sees DEVICES_PER_PROCESS (default 2) simulated CPU devices and reads its own data
# shard; PORT (default: random in 20000-39999) is the coordinator's port.
#   launch/local_multiprocess.sh 2 configs/digits.py /tmp/digits_2proc [--config.x=y ...]
# --dry-run (first argument) prints the commands, shell-quoted, one per line, and runs nothing:
#   launch/local_multiprocess.sh --dry-run 2 configs/digits.py /tmp/digits_2proc
set -euo pipefail
dry_run=0
if [[ ${1:-} == --dry-run ]]; then
  dry_run=1
  shift
fi
num_processes=${1:?number of processes}
config=${2:?config file}
workdir=${3:?workdir}
shift 3
port=${PORT:-$((20000 + RANDOM % 20000))}
devices=${DEVICES_PER_PROCESS:-2}

# One command line that bash reads back as these words: a word of plain characters as it is,
# any other in single quotes.
quote() {
  local words=() word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      words+=("$word")
    else
      words+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${words[*]}"
}

pids=()
for ((i = 0; i < num_processes; i++)); do
  command=(env JAX_NUM_CPU_DEVICES="$devices" python -m vit_jax.main --config="$config"
    --workdir="$workdir" --coordinator="localhost:$port" --num_processes="$num_processes"
    --process_id="$i" "$@")
  if ((dry_run)); then
    printf '%s &\n' "$(quote "${command[@]}")"
  else
    "${command[@]}" &
    pids+=($!)
  fi
done
if ((dry_run)); then
  echo wait
  exit
fi
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
