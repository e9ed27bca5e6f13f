#!/usr/bin/env bash
# Runs jaxclap on every worker of a Cloud TPU VM pod slice (v4-16, v5p-32, v5litepod-16...).
#
#   export TPU_NAME=my-pod ZONE=us-central2-b [PROJECT=my-project]
#   launch/tpu_vm.sh copy     # this checkout -> ~/jaxclap on every worker
#   launch/tpu_vm.sh setup    # a venv there with jaxclap and jax[tpu]
#   launch/tpu_vm.sh run -- python -m jaxclap.main --config=configs/clap.py \
#       --workdir=/mnt/runs/clap
#   launch/tpu_vm.sh logs     # each worker's log -> logs/$TPU_NAME/worker_<i>.log
#   launch/tpu_vm.sh stop     # SIGTERM to the run on every worker
#   launch/tpu_vm.sh exec -- 'nvidia-smi || ls /dev/accel*'   # any shell command on all
#
# Every step is one `gcloud compute tpus tpu-vm ssh|scp --worker=all`: every worker gets
# the same files and runs the same command. `run` first frees the TPU of a previous run
# (processes holding /dev/accel* or /dev/vfio/*, and a stale /tmp/libtpu_lockfile, which
# make the next start fail with "TPU in use"), then starts the command with its output
# in ~/jaxclap/logs/worker_<i>.log on worker i (i = the metadata's agent-worker-number,
# JAX's process index there) and streamed here, all workers interleaved, into
# logs/$TPU_NAME/run.log.
#
# No flag tells jaxclap it is on a pod: JAX's GceTpuCluster finds the coordinator, the
# process count and each worker's rank through the TPU VM metadata server, and
# jaxclap/distributed.py initialises when it reports more than one process.
#
# --workdir must be one folder all workers see (Orbax writes each process's shards of a
# checkpoint into it): a Cloud Storage bucket mounted with gcsfuse on every worker (e.g.
# `launch/tpu_vm.sh exec -- 'mkdir -p /mnt/runs && gcsfuse --implicit-dirs BUCKET
# /mnt/runs'`) or a Filestore / NFS mount; a worker's local disk is not enough.
#
# Multi-slice (several slices over DCN, e.g. `gcloud compute tpus queued-resources create
# ... --node-count=2`): the queued resource sets MEGASCALE_COORDINATOR_ADDRESS,
# MEGASCALE_NUM_SLICES and MEGASCALE_SLICE_ID on each slice's workers and JAX's
# GceTpuCluster reads them (the coordinator is slice 0's worker 0); run this script once per
# slice node (TPU_NAME=<queued resource>-0, -1, ...) with the same command, and give the
# mesh a data axis of at least the slice count (e.g. --config.mesh.data=2
# --config.mesh.fsdp=-1 on two slices), since only data parallelism should cross DCN.
# Not tested here: no TPU was available (the README's "Running on a pod / cluster"
# says how this script was checked).
#
# Environment: TPU_NAME, ZONE (required), PROJECT (default: gcloud's), REMOTE_DIR
# (default jaxclap, relative to the home folder on the workers), JAX_VERSION (default:
# the newest jax[tpu]).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit "${1:-2}"
}

[[ $# -ge 1 ]] || usage
step=$1
shift
if [[ $step == -h || $step == --help ]]; then usage 0; fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM (pod slice) name}"
: "${ZONE:?set ZONE to the zone of the TPU, e.g. us-central2-b}"
REMOTE_DIR=${REMOTE_DIR:-jaxclap}
LOCAL_LOGS="logs/$TPU_NAME"
HERE=$(cd "$(dirname "$0")/.." && pwd)

gcloud_args=(--zone="$ZONE")
if [[ -n ${PROJECT:-} ]]; then gcloud_args+=(--project="$PROJECT"); fi

# on_all CMD: CMD in a login shell on every worker.
on_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all \
    --command="$1"
}

# Worker i's rank, as JAX's GceTpuCluster reads it (expanded on the worker).
# shellcheck disable=SC2016
WORKER_ID='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'

case $step in
  copy)
    # The tracked and untracked-but-not-ignored files: no .venv, workdirs or caches.
    archive=$(mktemp /tmp/jaxclap-XXXXXX.tar.gz)
    (cd "$HERE" && git ls-files -z --cached --others --exclude-standard |
      tar --null -czf "$archive" -T -)
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:jaxclap.tar.gz" \
      "${gcloud_args[@]}" --worker=all
    rm -f "$archive"
    on_all "mkdir -p $REMOTE_DIR && tar -xzf jaxclap.tar.gz -C $REMOTE_DIR && rm jaxclap.tar.gz"
    ;;
  setup)
    jax_spec="jax[tpu]${JAX_VERSION:+==$JAX_VERSION}"
    on_all "cd $REMOTE_DIR && python3 -m venv .venv && . .venv/bin/activate &&
      pip install -q --upgrade pip && pip install -q -e . '$jax_spec' &&
      python -c 'import jax; print(jax.process_count(), jax.device_count(), jax.devices()[0])'"
    ;;
  run)
    [[ ${1:-} == -- ]] && shift
    [[ $# -ge 1 ]] || { echo "tpu_vm.sh run: give the command after --" >&2; exit 2; }
    printf -v command '%q ' "$@"
    mkdir -p "$LOCAL_LOGS"
    # A run killed without cleanup leaves the TPU held (and libtpu's lock file behind).
    on_all "sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | xargs -r sudo kill -9;
      sudo rm -f /tmp/libtpu_lockfile; true"
    on_all "cd $REMOTE_DIR && . .venv/bin/activate && mkdir -p logs &&
      $command 2>&1 | tee logs/worker_$WORKER_ID.log; exit \${PIPESTATUS[0]}" \
      2>&1 | tee "$LOCAL_LOGS/run.log"
    ;;
  exec)
    [[ ${1:-} == -- ]] && shift
    [[ $# -ge 1 ]] || { echo "tpu_vm.sh exec: give the shell command after --" >&2; exit 2; }
    on_all "$*"
    ;;
  logs)
    mkdir -p "$LOCAL_LOGS"
    workers=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_args[@]}" \
      --format='value(networkEndpoints.len())')
    for ((i = 0; i < workers; i++)); do
      gcloud compute tpus tpu-vm scp "$TPU_NAME:$REMOTE_DIR/logs/worker_$i.log" \
        "$LOCAL_LOGS/worker_$i.log" "${gcloud_args[@]}" --worker="$i"
    done
    echo "logs of $workers workers in $LOCAL_LOGS/"
    ;;
  stop)
    # SIGTERM to what holds the TPU: the run's processes, nothing else.
    on_all "sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | xargs -r sudo kill -TERM; true"
    ;;
  *)
    echo "tpu_vm.sh: unknown step '$step'" >&2
    usage
    ;;
esac
