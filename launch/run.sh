#!/usr/bin/env bash
# On-host entry for every training stage: one process per host (TPU VM worker) or per GPU (SLURM
# task). Sets the environment, then execs
#   python -m muse_jax.main --config=CONFIG --workdir=WORKDIR --distributed [EXTRA...]
# so the train loop itself receives signals and its exit code is this script's.
#
# Runs once; it never loops. On SIGTERM (preemption, maintenance, SLURM time limit) the train loop
# saves a checkpoint and exits 0; running the same command again resumes from the latest complete
# checkpoint in WORKDIR.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/run.sh --config=CONFIG --workdir=WORKDIR [options] [--] [EXTRA...]

On-host entry: sets the environment and runs
  python -m muse_jax.main --config=CONFIG --workdir=WORKDIR --distributed EXTRA...
once, propagating its exit code. A relaunch with the same arguments resumes from the latest
checkpoint in WORKDIR (SIGTERM saves one and exits 0).

required:
  --config=CONFIG       config file[:args], e.g. configs/base.py:size=3b
  --workdir=WORKDIR     checkpoints, tensorboard/, metrics.jsonl (local path or gs://...)
options:
  --log-dir=DIR         also append stdout+stderr to DIR/HOST.log (HOST-taskI.log under SLURM); libtpu logs go to DIR/tpu
                        (default: $MUSE_LOG_DIR, else $HOME/muse_logs)
  --no-log-file         do not write DIR/HOST.log (output goes to the terminal only)
  --no-distributed      single process, no jax.distributed.initialize() (one GPU box, debugging)
  --dry-run             print the commands ('+ ' prefix), run nothing
  -h, --help            this text
Any other argument (e.g. --config.optim.lr=3e-4, --config.init_from=gs://...) is passed to
muse_jax.main unchanged; so is everything after '--'.
environment:
  MUSE_PYTHON           the interpreter (default: python)
  JAX_*, XLA_FLAGS, LIBTPU_INIT_ARGS, TPU_* are passed through as set.
EOF
}

die() { echo "launch/run.sh: error: $1" >&2; exit "${2:-2}"; }

# Shell-quotes one word only when needed, so a printed line can be pasted back (shlex-compatible).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() { local out="+" w; for w in "$@"; do out+=" $(quote "$w")"; done; echo "$out"; }

config="" workdir="" dry_run=0 distributed=1 log_file=1
log_dir="${MUSE_LOG_DIR:-${HOME:-/tmp}/muse_logs}"
extra=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config=*) config="${1#*=}" ;;
    --config) (($# >= 2)) || die "--config needs a value"; config="$2"; shift ;;
    --workdir=*) workdir="${1#*=}" ;;
    --workdir) (($# >= 2)) || die "--workdir needs a value"; workdir="$2"; shift ;;
    --log-dir=*) log_dir="${1#*=}" ;;
    --log-dir) (($# >= 2)) || die "--log-dir needs a value"; log_dir="$2"; shift ;;
    --no-log-file) log_file=0 ;;
    --no-distributed) distributed=0 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1") ;;
  esac
  shift
done
[[ -n "$config" ]] || die "missing required flag --config (e.g. --config=configs/base.py:size=3b)"
[[ -n "$workdir" ]] || die "missing required flag --workdir (e.g. --workdir=gs://BUCKET/muse/base)"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${MUSE_PYTHON:-python}"
cmd=("$python" -m muse_jax.main "--config=$config" "--workdir=$workdir")
((distributed)) && cmd+=(--distributed)
cmd+=("${extra[@]}")

# The environment. PYTHONUNBUFFERED: logs reach the terminal / log file as they are written.
# TPU_LOG_DIR: where libtpu writes its own logs (default /tmp/tpu_logs). Both only set if unset.
export PYTHONUNBUFFERED="${PYTHONUNBUFFERED:-1}"
export TPU_LOG_DIR="${TPU_LOG_DIR:-$log_dir/tpu}"
host="$(hostname 2>/dev/null || echo host)"
log="$log_dir/$host${SLURM_PROCID:+-task$SLURM_PROCID}.log"  # one per SLURM task

if ((dry_run)); then
  show cd "$repo"
  for v in PYTHONUNBUFFERED TPU_LOG_DIR; do show export "$v=${!v}"; done
  while IFS='=' read -r name _; do  # user settings that change JAX/XLA/libtpu, shown as in force
    [[ "$name" =~ ^(JAX_|XLA_|LIBTPU_|TPU_|NCCL_|CUDA_VISIBLE) ]] || continue
    [[ "$name" == TPU_LOG_DIR ]] && continue
    show export "$name=${!name}"
  done < <(env | LC_ALL=C sort)
  show mkdir -p "$log_dir" "$TPU_LOG_DIR"
  ((log_file)) && echo "# stdout and stderr also appended to $(quote "$log")"
  show "${cmd[@]}"
  exit 0
fi

cd "$repo"
mkdir -p "$log_dir" "$TPU_LOG_DIR"
if ((log_file)); then
  # tee ignores SIGTERM/SIGINT: on preemption the train loop is still writing while it saves, and
  # a dead tee would break its stdout. tee exits when the pipe closes, i.e. when python exits.
  exec > >(trap '' TERM INT; exec tee -a "$log") 2>&1
fi
echo "launch/run.sh: $(date -u +%FT%TZ) on $host: ${cmd[*]}"
exec "${cmd[@]}"
