#!/usr/bin/env bash
# Multi-node GPU launcher for SLURM. One file, two roles:
#   outside a job (no SLURM_JOB_ID): submits itself with sbatch (nodes x GPUs per node tasks);
#   inside a job (sbatch, salloc): srun launch/run.sh ... on every task, one task per GPU.
# jax.distributed.initialize() (run.sh passes --distributed) reads the SLURM variables: process
# id = SLURM_PROCID, count = SLURM_NTASKS, coordinator = the first node of the step, and on GPUs
# it uses the one GPU numbered SLURM_LOCALID (jax/_src/clusters/cluster.py sets
# local_device_ids=[SLURM_LOCALID] when none are given). Hence one task per GPU, and no per-task
# GPU binding (--gpus-per-task/--gpu-bind would leave each task one visible GPU, numbered 0).
#SBATCH --job-name=muse
#SBATCH --output=muse-%j.out
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/slurm.sh --config=CONFIG --workdir=WORKDIR [options] [--] [EXTRA...]

Outside a SLURM job, submits itself:
  sbatch --nodes=N --ntasks-per-node=G --gpus-per-node=G ... launch/slurm.sh ARGS
Inside a job (SLURM_JOB_ID set: the batch script, or a shell from salloc), runs
  srun --ntasks-per-node=G --kill-on-bad-exit=1 launch/run.sh --config=... --workdir=... EXTRA
i.e. one process per GPU; each process's jax.distributed.initialize() finds the others from the
SLURM environment. A job that ends (time limit, preemption) saves on SIGTERM and exits 0;
submitting the same command again (or --requeue) resumes from the latest checkpoint.

required:
  --config=CONFIG       e.g. configs/base.py:size=3b
  --workdir=WORKDIR     shared by all nodes (shared filesystem or gs://...)
options:
  --nodes=N             nodes (default 1)
  --gpus-per-node=G     GPUs per node = tasks per node (default 8)
  --partition=P  --account=A  --time=T  --qos=Q     passed to sbatch
  --job-name=NAME       default: muse
  --log-dir=DIR         sbatch output file (DIR/NAME-JOBID.out) and run.sh --log-dir
                        (default: $MUSE_LOG_DIR, else $HOME/muse_logs)
  --signal-grace=S      ask SLURM to send SIGTERM S seconds before the time limit, so the run
                        saves a checkpoint (default 300; 0 for no --signal)
  --requeue             let SLURM requeue the job after preemption / node failure
  --dry-run             print the commands ('+ ' prefix), run nothing
  -h, --help            this text
EXTRA (after '--', or any unknown --flag): passed to launch/run.sh and muse_jax.main.
EOF
}

die() { echo "launch/slurm.sh: error: $1" >&2; exit "${2:-2}"; }
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
join_quoted() { local out="" w; for w in "$@"; do out+="${out:+ }$(quote "$w")"; done; echo "$out"; }

config="" workdir="" nodes=1 gpus=8 job_name=muse grace=300 requeue=0 dry_run=0
log_dir="${MUSE_LOG_DIR:-${HOME:-/tmp}/muse_logs}"
sbatch_opts=() extra=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --nodes=*) nodes="${1#*=}" ;;
    --gpus-per-node=*) gpus="${1#*=}" ;;
    --partition=*|--account=*|--time=*|--qos=*) sbatch_opts+=("$1") ;;
    --job-name=*) job_name="${1#*=}" ;;
    --log-dir=*) log_dir="${1#*=}" ;;
    --signal-grace=*) grace="${1#*=}" ;;
    --requeue) requeue=1 ;;
    --dry-run) dry_run=1 ;;
    --config|--workdir|--nodes|--gpus-per-node|--partition|--account|--time|--qos|--job-name|\
--log-dir|--signal-grace)
      (($# >= 2)) || die "$1 needs a value"; set -- "$1=$2" "${@:3}"; continue ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1") ;;
  esac
  shift
done
[[ -n "$config" ]] || die "missing required flag --config (e.g. --config=configs/base.py:size=3b)"
[[ -n "$workdir" ]] || die "missing required flag --workdir (a path every node can reach)"
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes wants a positive integer, got '$nodes'"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node wants a positive integer, got '$gpus'"
[[ "$grace" =~ ^[0-9]+$ ]] || die "--signal-grace wants seconds, got '$grace'"

# Under sbatch this file runs from a copy in SLURM's spool directory: find the checkout from
# MUSE_REPO (exported at submission), else from this file's location.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="${MUSE_REPO:-$(dirname "$here")}"
[[ -x "$repo/launch/run.sh" ]] || die "no launch/run.sh under $repo; set MUSE_REPO to the \
muse_jax checkout" 1

run_args=(--config="$config" --workdir="$workdir" --log-dir="$log_dir")
((${#extra[@]})) && run_args+=(-- "${extra[@]}")

if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  step=(srun --nodes="${SLURM_JOB_NUM_NODES:-$nodes}" --ntasks-per-node="$gpus"
        --kill-on-bad-exit=1 "$repo/launch/run.sh" "${run_args[@]}")
  echo "+ $(join_quoted "${step[@]}")"
  ((dry_run)) && exit 0
  exec "${step[@]}"
fi

# Outside a job: submit this script. --signal=TERM@S reaches every task of the step (no 'B:').
submit=(sbatch --job-name="$job_name" --nodes="$nodes" --ntasks-per-node="$gpus"
        --gpus-per-node="$gpus" --output="$log_dir/%x-%j.out"
        --export=ALL,MUSE_REPO="$repo" "${sbatch_opts[@]}")
((grace > 0)) && submit+=(--signal=TERM@"$grace")
((requeue)) && submit+=(--requeue)
submit+=("$repo/launch/slurm.sh" --nodes="$nodes" --gpus-per-node="$gpus" "${run_args[@]}")
if ((dry_run)); then
  echo "+ mkdir -p $(quote "$log_dir")"
  echo "+ $(join_quoted "${submit[@]}")"
  echo "# the job then runs on its first node: + $(join_quoted srun \
--nodes="$nodes" --ntasks-per-node="$gpus" --kill-on-bad-exit=1 "$repo/launch/run.sh" \
"${run_args[@]}")"
  exit 0
fi
mkdir -p "$log_dir"
exec "${submit[@]}"
