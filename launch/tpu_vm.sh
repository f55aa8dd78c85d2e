#!/usr/bin/env bash
# Cloud TPU VM (single host, pod slice, or several slices): install and run the same command on
# every worker. jax.distributed.initialize() finds the coordinator and process ids on TPU VMs
# by itself.
#   REPO=<git url> TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh \
#     configs/imagenet2012.py /mnt/runs/vit_b16 [--config.x=y ...]
# Several slices (multislice, over the data-center network): name one TPU per slice, comma
# separated; all slices must be of the same type, in the same zone.
#   REPO=... TPU=slice-a,slice-b ZONE=... launch/tpu_vm.sh configs/imagenet2012.py /mnt/runs/x
# The number of slices is the number of names. Each slice's workers then get
# MEGASCALE_NUM_SLICES, their MEGASCALE_SLICE_ID (0, 1, ... in the order named) and
# MEGASCALE_COORDINATOR_ADDRESS=<worker 0 of the first slice>:MEGASCALE_PORT (8081 unless
# MEGASCALE_PORT is set), which JAX and the TPU runtime read; the ssh commands run at the same
# time and the script waits for all of them. The coordinator's internal IP is looked up with
# `gcloud compute tpus tpu-vm describe` unless MEGASCALE_COORDINATOR_ADDRESS=IP is given.
# --dry-run (first argument) prints the commands, shell-quoted, one per line, and runs nothing:
#   REPO=... TPU=a,b ZONE=... launch/tpu_vm.sh --dry-run configs/imagenet2012.py /mnt/runs/x
# (without MEGASCALE_COORDINATOR_ADDRESS, a dry run prints the lookup and writes the address
# it would find as COORDINATOR_IP).
# The dataset must be prepared as array_record files readable from every worker
# (--config.data.data_dir=/mnt/tensorflow_datasets), and the workdir must be one shared
# directory (a bucket mounted with gcsfuse, or NFS): workdirs are paths, not gs:// URLs.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
dry_run_flag "$@"
shift "$dry_run_shift"
config=${1:?config file}
workdir=${2:?workdir (a directory shared by all workers)}
shift 2
repo=${REPO:?git URL of the vit_jax repository to clone on the workers}
zone=${ZONE:?zone}
IFS=, read -ra tpus <<<"${TPU:?TPU name, or one name per slice separated by commas}"
num_slices=${#tpus[@]}
port=${MEGASCALE_PORT:-8081}

# The command each worker runs (clone once, install, train), as one line for the worker's
# shell; every word is quoted, so that paths and flags arrive as they were given here.
# Arguments: environment assignments NAME=VALUE for the training process.
remote() {
  printf 'set -e; [ -d vit_jax ] || git clone %s vit_jax; ' "$(quote "$repo")"
  printf '%s' "cd vit_jax && pip install -q -e . 'jax[tpu]' && "
  quote ${1+env} "$@" python -m vit_jax.main --config="$config" --workdir="$workdir" \
    --distributed "${flags[@]}"
}
flags=("$@")

# gcloud's ssh with --worker=all runs the command on every worker of one TPU and waits.
ssh_command=(gcloud compute tpus tpu-vm ssh)

if ((num_slices == 1)); then
  run "${ssh_command[@]}" "${tpus[0]}" --zone="$zone" --worker=all --command="$(remote)"
  exit
fi

lookup=(gcloud compute tpus tpu-vm describe "${tpus[0]}" --zone="$zone"
  --format='value(networkEndpoints[0].ipAddress)')
if [[ -n ${MEGASCALE_COORDINATOR_ADDRESS:-} ]]; then
  coordinator=${MEGASCALE_COORDINATOR_ADDRESS%:*}
elif ((dry_run)); then
  quote "${lookup[@]}"
  coordinator=COORDINATOR_IP
else
  coordinator=$("${lookup[@]}")
fi
for ((slice = 0; slice < num_slices; slice++)); do
  env=(MEGASCALE_COORDINATOR_ADDRESS="$coordinator:$port" MEGASCALE_NUM_SLICES="$num_slices"
    MEGASCALE_SLICE_ID="$slice" MEGASCALE_PORT="$port")
  command=("${ssh_command[@]}" "${tpus[slice]}" --zone="$zone" --worker=all
    --command="$(remote "${env[@]}")")
  run_background "${command[@]}"
done
wait_all
