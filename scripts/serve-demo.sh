#!/usr/bin/env bash
# Serve the demo reward model, building it first if it is missing (cached in checkpoints/demo).
#
#   bash scripts/serve-demo.sh [--quick] [extra `python -m service` flags, e.g. --port 8001 --log-level debug]
#
# The demo model is a small Qwen2-VL that `python -m training.demo` trains here, from scratch, on synthetic
# clips of a coloured shape moving over a grey background (about 12 minutes on 2 CPU cores the first time;
# --quick builds a weaker one in a few minutes). It is NOT VideoReward: /v1/model says "demo": true and the
# service logs a warning. To serve real weights: python -m service --checkpoint DIR.
#
# Environment: VIDEOREWARD_DEMO_DIR (default checkpoints/demo), VIDEOREWARD_HOST (127.0.0.1),
# VIDEOREWARD_PORT (8000), PYTHON (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
demo_dir=${VIDEOREWARD_DEMO_DIR:-checkpoints/demo}
host=${VIDEOREWARD_HOST:-127.0.0.1}
port=${VIDEOREWARD_PORT:-8000}
build_flags=()
if [[ ${1:-} == --quick ]]; then
    build_flags+=(--quick)
    shift
fi

# demo.json is written last by the build: without it the build did not finish.
if [[ -f $demo_dir/checkpoint/reward_config.json && -f $demo_dir/checkpoint/demo.json ]]; then
    echo "serve-demo: using the demo model built earlier in $demo_dir/checkpoint (delete it to rebuild)" >&2
else
    echo "serve-demo: building the demo model into $demo_dir (first run only; ~12 min on 2 CPU cores, --quick: ~4)" >&2
    "$python" -m training.demo --out "$demo_dir" "${build_flags[@]}"
fi

url="http://$host:$port"
fixtures=../shared/fixtures/videoalign-examples/videos
examples=$demo_dir/examples
cat >&2 <<MSG

serve-demo: starting the service on $url with the DEMO model (synthetic shapes, NOT VideoReward).
Once it logs "ready", try from another shell:

  # a clean synthetic clip vs the same clip with heavy noise (A should win on VQ)
  $python -m service.client compare --url $url --prompt "a red circle moving right" $examples/clean_VQ.mp4 $examples/degraded_VQ.mp4
  # the same for motion (MQ) and for a clip that shows the wrong scene (TA)
  $python -m service.client compare --url $url --prompt "a red circle moving right" $examples/clean_MQ.mp4 $examples/degraded_MQ.mp4
  $python -m service.client compare --url $url --prompt "a red circle moving right" $examples/clean_TA.mp4 $examples/degraded_TA.mp4
  # all three at once, with a pass/fail verdict
  bash scripts/smoke.sh $url
  # the real example videos (the demo model never saw real footage: these scores only show the plumbing)
  $python -m service.client score --url $url --prompt "a girl in a pink dress sits on a chair" $fixtures/example_1_A.mp4 $fixtures/example_1_B.mp4
  curl -s -X POST $url/compare -F prompt="a girl in a pink dress sits on a chair" -F video_a=@$fixtures/example_1_A.mp4 -F video_b=@$fixtures/example_1_B.mp4
  curl -s $url/v1/model

MSG
export VIDEOREWARD_HOST=$host VIDEOREWARD_PORT=$port
exec "$python" -m service --checkpoint "$demo_dir/checkpoint" "$@"
