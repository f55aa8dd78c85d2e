#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): install and run the same command on every worker.
# jax.distributed.initialize() finds the coordinator and process ids on TPU VMs by itself.
#   REPO=<git url> TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh \
#     configs/imagenet2012.py /mnt/runs/vit_b16
# The dataset must be prepared as array_record files readable from every worker
# (--config.data.data_dir=/mnt/tensorflow_datasets), and the workdir must be one shared
# directory (a bucket mounted with gcsfuse, or NFS): workdirs are paths, not gs:// URLs.
set -euo pipefail
config=${1:?config file}
workdir=${2:?workdir (a directory shared by all workers)}
shift 2
repo=${REPO:?git URL of the vit_jax repository to clone on the workers}
gcloud compute tpus tpu-vm ssh "${TPU:?TPU name}" --zone="${ZONE:?zone}" --worker=all --command="
  set -e
  [ -d vit_jax ] || git clone $repo vit_jax
  cd vit_jax && pip install -q -e . 'jax[tpu]' &&
  python -m vit_jax.main --config=$config --workdir=$workdir --distributed $*
"
