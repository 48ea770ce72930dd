#!/usr/bin/env bash
# Cloud TPU VM launcher: fit check (muse-fit, locally) -> create the TPU VM or queued resource ->
# copy the code to every worker and install it -> run launch/run.sh on every worker.
# See launch/README.md for the stage-by-stage example. Every command it runs is a gcloud, git,
# tar or muse-fit command printed with --dry-run.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh COMMAND --name=NAME --zone=ZONE [options] [-- EXTRA...]

commands:
  create   muse-fit the config on the pod's topology (locally; stops if it does not fit), then
           create the TPU VM (or, with --queued, a queued resource and wait until it is ACTIVE)
  setup    copy the code to every worker (scp of this checkout, or --git-url/--git-ref) and
           pip install it with the tpu extra
  run      on every worker (--worker=all): launch/run.sh --config=... --workdir=... EXTRA...
  up       create, setup, run
  exec     run the shell command given after '--' on every worker (mounts, copies, tail a log)
  status   describe the TPU VM (and the queued resource with --queued)
  delete   delete the TPU VM (with --queued: the queued resource and its TPU VM)

required:
  --name=NAME               TPU VM name (also the queued resource's id with --queued)
  --zone=ZONE               e.g. us-central2-b (v4)
  --accelerator-type=TYPE   create/up: e.g. v4-512, v4-32, v5p-128, v5litepod-16, v6e-64
  --config=CONFIG           run/up, and create unless --skip-fit: e.g. configs/base.py:size=3b
  --workdir=WORKDIR         run/up: e.g. gs://BUCKET/muse/base
options:
  --project=PROJECT         gcloud --project (default: gcloud's configured project)
  --runtime-version=V       TPU software version (default from the accelerator type:
                            v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v5litepod
                            v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
  --topology=T              muse-fit topology; default derived from the accelerator type
                            (v4-512 -> v4:4x8x8, v4-32 -> v4:2x2x4, ...)
  --skip-fit                create without the muse-fit check
  --queued                  create through a queued resource (waits for capacity)
  --spot                    spot capacity (can be preempted: SIGTERM saves, 'run' resumes)
  --wait-timeout=SECONDS    how long create --queued waits for ACTIVE (default 86400)
  --git-url=URL --git-ref=REF   setup: git clone URL and check out REF on every worker instead
                            of copying this checkout (tracked + untracked, non-ignored files)
  --remote-dir=DIR          code directory on the workers (default: muse_jax, in the home dir)
  --python=BIN              setup: the interpreter for the workers' venv (default python3.11:
                            jax 0.10 needs Python >= 3.11; installed with apt when missing)
  --venv=DIR                venv on the workers (default ~/muse_venv); run.sh runs its python
  --before="SHELL"          run: a command each worker runs first (e.g. a gcsfuse mount)
  --pip-extra="PKGS"        more pip packages to install (default: gcsfs and
                            google-cloud-storage, for gs:// workdirs); "" for none
  --env=KEY=VALUE           environment for run.sh on the workers (repeatable)
  --log-dir=DIR             run.sh --log-dir on the workers
  --detach                  run: start run.sh under nohup/setsid and return (output in the
                            log dir); without it the ssh session must stay open for the run
  --dry-run                 print the commands ('+ ' prefix), run nothing
  -h, --help                this text
EXTRA (after '--'): run/up: passed to launch/run.sh and so to muse_jax.main (e.g.
--config.init_from=gs://...); '--config.*' overrides also go to the muse-fit check.
exec: the command line to run on every worker.
EOF
}

die() { echo "launch/tpu_vm.sh: error: $1" >&2; exit "${2:-2}"; }

quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
join_quoted() { local out="" w; for w in "$@"; do out+="${out:+ }$(quote "$w")"; done; echo "$out"; }

dry_run=0
# Runs a command, or with --dry-run prints it ('+ ' and the words, shell-quoted where needed).
run() {
  echo "+ $(join_quoted "$@")"
  ((dry_run)) && return 0
  "$@"
}

# --- topology ----------------------------------------------------------------------------------
# v4-N and v5p-N count TensorCores: N/2 chips (megacore), a 3-D torus. v5litepod-N and v6e-N count
# chips, a 2-D torus. The shapes are the slices' default topologies.
topology_for() {
  local type="$1" gen count
  gen="${type%-*}" count="${type##*-}"
  [[ "$type" == *-* && "$count" =~ ^[0-9]+$ ]] || return 1
  case "$gen" in
    v4|v5p)
      case "$count" in
        8) echo "$gen:2x2x1" ;; 16) echo "$gen:2x2x2" ;; 32) echo "$gen:2x2x4" ;;
        64) echo "$gen:2x4x4" ;; 128) echo "$gen:4x4x4" ;; 256) echo "$gen:4x4x8" ;;
        512) echo "$gen:4x8x8" ;; 1024) echo "$gen:8x8x8" ;; 2048) echo "$gen:8x8x16" ;;
        4096) echo "$gen:8x16x16" ;; *) return 1 ;;
      esac ;;
    v5litepod|v5e|v6e)
      local name="${gen/v5litepod/v5e}"
      case "$count" in
        1) echo "$name:1x1" ;; 4) echo "$name:2x2" ;; 8) echo "$name:2x4" ;;
        16) echo "$name:4x4" ;; 32) echo "$name:4x8" ;; 64) echo "$name:8x8" ;;
        128) echo "$name:8x16" ;; 256) echo "$name:16x16" ;; *) return 1 ;;
      esac ;;
    *) return 1 ;;
  esac
}

runtime_for() {
  case "${1%-*}" in
    v4) echo tpu-ubuntu2204-base ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v5litepod|v5e) echo v2-alpha-tpuv5-lite ;;
    v6e) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# --- arguments ---------------------------------------------------------------------------------
(($#)) || { usage >&2; exit 2; }
case "$1" in
  -h|--help) usage; exit 0 ;;
  create|setup|run|up|exec|status|delete) cmd="$1"; shift ;;
  *) die "unknown command '$1'; expected create, setup, run, up, exec, status or delete" ;;
esac

name="" zone="" accel="" runtime="" topology="" project="" config="" workdir=""
skip_fit=0 queued=0 spot=0 detach=0 wait_timeout=86400 git_url="" git_ref=""
remote_dir="muse_jax" log_dir="" python="python3.11" venv="~/muse_venv" before="" pip_extra="gcsfs==2026.10.1 google-cloud-storage==3.17.1"
envs=() extra=()
value() {  # value FLAG "$@": the flag's value from --flag=V or --flag V (sets `shifts`)
  local flag="$1"; shift
  if [[ "$1" == *=* ]]; then val="${1#*=}"; shifts=1
  else (($# >= 2)) || die "$flag needs a value"; val="$2"; shifts=2; fi
}
while (($#)); do
  shifts=1
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name|--name=*) value --name "$@"; name="$val" ;;
    --zone|--zone=*) value --zone "$@"; zone="$val" ;;
    --accelerator-type|--accelerator-type=*) value --accelerator-type "$@"; accel="$val" ;;
    --runtime-version|--runtime-version=*) value --runtime-version "$@"; runtime="$val" ;;
    --topology|--topology=*) value --topology "$@"; topology="$val" ;;
    --project|--project=*) value --project "$@"; project="$val" ;;
    --config|--config=*) value --config "$@"; config="$val" ;;
    --workdir|--workdir=*) value --workdir "$@"; workdir="$val" ;;
    --git-url|--git-url=*) value --git-url "$@"; git_url="$val" ;;
    --git-ref|--git-ref=*) value --git-ref "$@"; git_ref="$val" ;;
    --remote-dir|--remote-dir=*) value --remote-dir "$@"; remote_dir="$val" ;;
    --python|--python=*) value --python "$@"; python="$val" ;;
    --venv|--venv=*) value --venv "$@"; venv="$val" ;;
    --before|--before=*) value --before "$@"; before="$val" ;;
    --pip-extra|--pip-extra=*) value --pip-extra "$@"; pip_extra="$val" ;;
    --env|--env=*) value --env "$@"
      [[ "$val" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$val'"
      envs+=("$val") ;;
    --log-dir|--log-dir=*) value --log-dir "$@"; log_dir="$val" ;;
    --wait-timeout|--wait-timeout=*) value --wait-timeout "$@"; wait_timeout="$val"
      [[ "$wait_timeout" =~ ^[0-9]+$ ]] || die "--wait-timeout wants seconds, got '$val'" ;;
    --skip-fit) skip_fit=1 ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --detach) detach=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown flag '$1' (arguments for run.sh / muse_jax.main go after '--'; see --help)" ;;
  esac
  shift "$shifts"
done

need() { [[ -n "$2" ]] || die "missing required flag $1 (command '$cmd'; see --help)"; }
need --name "$name"
need --zone "$zone"
case "$cmd" in
  create|up)
    need --accelerator-type "$accel"
    if [[ -z "$runtime" ]]; then
      runtime="$(runtime_for "$accel")" || die "no default --runtime-version for \
--accelerator-type=$accel; pass --runtime-version"
    fi
    if ((!skip_fit)); then
      need --config "$config"
      if [[ -z "$topology" ]]; then
        topology="$(topology_for "$accel")" || die "cannot derive the muse-fit topology of \
--accelerator-type=$accel; pass --topology (e.g. v4:4x8x8) or --skip-fit"
      fi
    fi ;;
esac
case "$cmd" in run|up) need --config "$config"; need --workdir "$workdir" ;; esac
[[ "$cmd" != exec ]] || ((${#extra[@]})) || die "exec needs the command after '--'"
[[ -z "$git_ref" || -n "$git_url" ]] || die "--git-ref needs --git-url"
[[ -z "$git_url" || -n "$git_ref" ]] || die "--git-url needs --git-ref"

gflags=(--zone="$zone")
[[ -n "$project" ]] && gflags+=(--project="$project")
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# --- steps -------------------------------------------------------------------------------------
on_all_workers() {  # on_all_workers 'shell command': the same command on every worker, in parallel
  run gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" --worker=all --command="$1"
}

fit_check() {
  ((skip_fit)) && { echo "# --skip-fit: no muse-fit check for $accel"; return 0; }
  local overrides=() a
  for a in "${extra[@]}"; do [[ "$a" == --config.* ]] && overrides+=("$a"); done
  if ! run muse-fit --config="$config" --topology="$topology" "${overrides[@]}"; then
    die "muse-fit failed: $config does not fit $topology ($accel), or the check itself \
failed (see its output above); not creating $name. Fix the config, pick a larger \
--accelerator-type, or pass --skip-fit" 1
  fi
}

create() {
  fit_check
  local spot_flag=()
  ((spot)) && spot_flag=(--spot)
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${gflags[@]}" \
      --accelerator-type="$accel" --runtime-version="$runtime" "${spot_flag[@]}"
    wait_active
  else
    run gcloud compute tpus tpu-vm create "$name" "${gflags[@]}" --accelerator-type="$accel" \
      --version="$runtime" "${spot_flag[@]}"
  fi
}

wait_active() {  # a queued resource is usable once its state is ACTIVE
  local describe=(gcloud compute tpus queued-resources describe "$name" "${gflags[@]}"
                  --format='value(state.state)')
  echo "# wait until the queued resource is ACTIVE (every 60 s, at most ${wait_timeout} s):"
  echo "+ $(join_quoted "${describe[@]}")"
  ((dry_run)) && return 0
  local start=$SECONDS state
  while :; do
    state="$("${describe[@]}")"
    echo "queued resource $name: $state"
    case "$state" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED) die "queued resource $name is $state; see: launch/tpu_vm.sh status \
--name=$name --zone=$zone --queued" 1 ;;
    esac
    ((SECONDS - start < wait_timeout)) || die "queued resource $name not ACTIVE after \
${wait_timeout} s (still $state)" 1
    sleep 60
  done
}

setup() {
  # The TPU images' system Python may be older than jax's minimum (3.11): a venv from $python,
  # installed with apt when it (or its venv module) is missing.
  local py pip install
  py="$(quote "$python")" pip="$(quote "$venv")/bin/pip"
  install="cd $(quote "$remote_dir") && { $py -c 'import venv, ensurepip' 2>/dev/null || \
{ sudo apt-get update -q && sudo apt-get install -y $py $py-venv; }; } && $py -m venv \
$(quote "$venv") && $pip install -U pip && $pip install -e '.[tpu]'"
  [[ -n "$pip_extra" ]] && install+=" $pip_extra"
  if [[ -n "$git_url" ]]; then
    on_all_workers "rm -rf $(quote "$remote_dir") && git clone $(quote "$git_url") \
$(quote "$remote_dir") && git -C $(quote "$remote_dir") checkout $(quote "$git_ref") && $install"
    return
  fi
  # This checkout as it is: tracked and untracked files, no ignored ones (no venvs, no outputs).
  local archive
  archive="${TMPDIR:-/tmp}/muse_jax-$name.tar.gz"
  echo "+ git -C $(quote "$repo") ls-files -z --cached --others --exclude-standard | tar -C \
$(quote "$repo") --null --ignore-failed-read -T - -czf $(quote "$archive")"
  if ((!dry_run)); then
    git -C "$repo" ls-files -z --cached --others --exclude-standard |
      tar -C "$repo" --null --ignore-failed-read -T - -czf "$archive"
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$name:muse_jax.tar.gz" "${gflags[@]}" --worker=all
  on_all_workers "rm -rf $(quote "$remote_dir") && mkdir -p $(quote "$remote_dir") && tar -xzf \
muse_jax.tar.gz -C $(quote "$remote_dir") && $install"
}

run_stage() {
  local line="" e
  [[ -n "$before" ]] && line+="{ $before; } && "
  line+="cd $(quote "$remote_dir") && MUSE_PYTHON=$(quote "$venv")/bin/python"
  for e in "${envs[@]}"; do line+=" $(quote "$e")"; done
  local args=(--config="$config" --workdir="$workdir")
  [[ -n "$log_dir" ]] && args+=(--log-dir="$log_dir")
  ((${#extra[@]})) && args+=(-- "${extra[@]}")
  if ((detach)); then
    # run.sh appends to its own log file; nohup/setsid keep it alive when ssh disconnects.
    line+=" setsid nohup launch/run.sh $(join_quoted "${args[@]}") > /dev/null 2>&1 < /dev/null &"
  else
    line+=" launch/run.sh $(join_quoted "${args[@]}")"
  fi
  on_all_workers "$line"
}

status() {
  ((queued)) && run gcloud compute tpus queued-resources describe "$name" "${gflags[@]}"
  run gcloud compute tpus tpu-vm describe "$name" "${gflags[@]}"
}

delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${gflags[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${gflags[@]}" --quiet
  fi
}

case "$cmd" in
  create) create ;;
  setup) setup ;;
  run) run_stage ;;
  up) create; setup; run_stage ;;
  exec) on_all_workers "${extra[*]}" ;;  # joined with spaces, as ssh joins its arguments
  status) status ;;
  delete) delete ;;
esac
