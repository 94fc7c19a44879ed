#!/usr/bin/env bash
# Container entrypoint of the VideoReward scoring service (see Dockerfile and deploy/README.md).
#
#   entrypoint.sh [extra `python -m service` flags]     # serve
#   entrypoint.sh COMMAND [ARGS...]                    # run another command, e.g. python -m training.bulk ...
#
# Which checkpoint is served:
#   VIDEOREWARD_CHECKPOINT set, and a directory        -> that directory (it must hold config.json and
#                                                          reward_config.json; anything else exits 2)
#   VIDEOREWARD_CHECKPOINT set but missing             -> exit 2 when VIDEOREWARD_DEMO=0, else the demo (with a warning)
#   VIDEOREWARD_CHECKPOINT unset or empty              -> the demo when VIDEOREWARD_DEMO=1 (the default), else exit 2
# The demo checkpoint is built once, at first start, into VIDEOREWARD_DEMO_DIR (default /cache/demo, a volume),
# with `python -m training.demo --out DIR --quick`, and served from DIR/checkpoint; later starts reuse it.
#
# VIDEOREWARD_TP=N > 1 runs the tensor-parallel service, one process per device:
#   torchrun --standalone --nnodes 1 --nproc-per-node N -m service --checkpoint DIR --tp N
# Otherwise: python -m service --checkpoint DIR. Either way the service is exec'd, so it receives SIGTERM itself
# and drains (VIDEOREWARD_DRAIN_TIMEOUT_S) before exiting.
set -euo pipefail

log() { printf '%s entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() {
    log "error: $*"
    exit 2
}

# Any first argument that is not a flag is a command to run instead of the service.
if [[ $# -gt 0 && $1 != -* ]]; then
    exec "$@"
fi

# Ascend images: the CANN toolkit's environment (a no-op on CPU and CUDA images).
for env_script in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann/set_env.sh; do
    if [[ -f $env_script ]]; then
        set +u # CANN's scripts read unset variables
        # shellcheck disable=SC1090
        source "$env_script"
        set -u
        break
    fi
done

is_checkpoint() { [[ -f $1/config.json && -f $1/reward_config.json ]]; }

build_demo() {
    local demo_dir=$1 tmp
    mkdir -p "$demo_dir" || die "cannot create $demo_dir: mount a writable volume there (compose: the 'cache' volume; k8s: an emptyDir at /cache)"
    tmp=$(mktemp -d "$demo_dir/.build.XXXXXX") || die "$demo_dir is not writable by uid $(id -u): fix the volume's owner or mount options"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    if python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("training.demo") is None)'; then
        log "building the demo checkpoint into $demo_dir (first start only; later starts reuse it)"
        python -m training.demo --out "$tmp" --quick
    else
        log "WARNING: training.demo is not installed in this image; building a TINY RANDOM checkpoint instead" \
            "(python -m model.tiny). Its scores are meaningless: it only proves the plumbing. Mount a real checkpoint" \
            "and set VIDEOREWARD_CHECKPOINT."
        python -m model.tiny "$tmp/checkpoint"
    fi
    is_checkpoint "$tmp/checkpoint" || die "the demo build wrote no serving checkpoint at $tmp/checkpoint"
    # Atomic publish: a concurrent start (another replica on the same volume) either wins or finds ours.
    if ! mv -T "$tmp/checkpoint" "$demo_dir/checkpoint" 2>/dev/null; then
        log "another process published $demo_dir/checkpoint first; using it"
    fi
    rm -rf "$tmp"
    trap - EXIT
}

checkpoint=${VIDEOREWARD_CHECKPOINT:-}
demo=${VIDEOREWARD_DEMO:-1}
demo_dir=${VIDEOREWARD_DEMO_DIR:-/cache/demo}
[[ $demo == 0 || $demo == 1 ]] || die "VIDEOREWARD_DEMO must be 0 or 1, got '$demo'"

if [[ -n $checkpoint && -d $checkpoint ]]; then
    is_checkpoint "$checkpoint" ||
        die "VIDEOREWARD_CHECKPOINT=$checkpoint is not a serving checkpoint (it needs config.json and reward_config.json; it holds: $(find "$checkpoint" -mindepth 1 -maxdepth 1 -printf '%f ' | head -c 400))"
elif [[ $demo == 0 ]]; then
    if [[ -n $checkpoint ]]; then
        die "VIDEOREWARD_CHECKPOINT=$checkpoint does not exist in the container: mount the checkpoint directory there (docker: -v /host/ckpt:$checkpoint:ro; k8s: the 'models' volume), or set VIDEOREWARD_DEMO=1 to serve the demo checkpoint"
    fi
    die "no checkpoint: set VIDEOREWARD_CHECKPOINT to a mounted serving checkpoint directory, or VIDEOREWARD_DEMO=1 to serve the demo checkpoint"
else
    if [[ -n $checkpoint ]]; then
        log "WARNING: VIDEOREWARD_CHECKPOINT=$checkpoint does not exist; serving the DEMO checkpoint instead (set VIDEOREWARD_DEMO=0 to fail instead)"
    fi
    if is_checkpoint "$demo_dir/checkpoint"; then
        log "using the demo checkpoint built earlier at $demo_dir/checkpoint"
    else
        build_demo "$demo_dir"
    fi
    checkpoint=$demo_dir/checkpoint
fi

tp=${VIDEOREWARD_TP:-1}
[[ $tp =~ ^[1-9][0-9]*$ ]] || die "VIDEOREWARD_TP must be a positive integer (the number of devices per replica), got '$tp'"
if ((tp > 1)); then
    cmd=(torchrun --standalone --nnodes 1 --nproc-per-node "$tp" -m service --checkpoint "$checkpoint" --tp "$tp")
else
    cmd=(python -m service --checkpoint "$checkpoint")
fi
log "exec: ${cmd[*]} $*"
exec "${cmd[@]}" "$@"
