#!/usr/bin/env bash
# The engine's GPU checks in one go, on a bare GPU machine (python3 with torch, numpy,
# safetensors, pytest; no pydantic, nothing downloadable), inside 8 minutes:
#   1. install pydantic & co from wheels brought along (--wheels DIR) and the project, --no-deps
#   2. the CUDA tests (tests/engine/test_cuda.py, test_fused_adam.py)
#   3. bench/sweep_gpu.py packs: nanda2023 packs at E = 1, 64, 256 against the eager single run
#   4. bench/sweep_gpu.py sweep: 256 members x 10k steps through Trainer.run, end to end
#   5. bench/sweep_gpu.py compile: torch.compile of the model at E = 256, if time is left
#   6. the table of figures against the goals (last in the output)
# Files in the output folder ($OUT, or --out DIR): gpu_check.log, env.txt, tests.txt,
# packs.json, profile.txt, sweep.json, compile.json (if time was left), table.txt.
# --only-sweep runs 1, 4 and 6 alone (gpu_check.log, env.txt, sweep.json, table.txt); --compile
# trains the sweep with the model's forward compiled (Trainer's compile_model).
#
#   bash bench/gpu_check.sh --wheels .whl             # on the GPU machine
#   bash bench/gpu_check.sh --wheels .whl --only-sweep --compile   # the compiled sweep alone
#   bash bench/gpu_check.sh --dry-run --out /tmp/gc   # tiny sizes on a CPU: checks this script
# PYTHON names the interpreter (default python3); GPU_CHECK_SECONDS the time for everything (400).
# A stage that fails or runs out of its time
# is reported and the next one runs; the exit status is that of the first failed stage.
set -uo pipefail

DRY=""
ONLY_SWEEP=""
COMPILE=""
WHEELS=""
OUT_DIR="${OUT:-}"
PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --only-sweep) ONLY_SWEEP=1 ;;
    --compile) COMPILE="--compile" ;;
    --wheels) WHEELS="$2"; shift ;;
    --out) OUT_DIR="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument '$1' (allowed: --dry-run, --only-sweep, --compile, --wheels DIR, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$OUT_DIR" ]; then
  echo "gpu_check.sh: no output folder: set OUT or pass --out DIR" >&2
  exit 2
fi
[ -n "$WHEELS" ] && WHEELS="$(cd "$WHEELS" && pwd)"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
TOTAL="${GPU_CHECK_SECONDS:-400}"  # everything, the table included
STARTED=$SECONDS
STATUS=0

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, note how it ended
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s, at $((SECONDS - STARTED))s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - STARTED))s"
  [ $rc -ne 0 ] && [ $STATUS -eq 0 ] && STATUS=$rc
  return 0
}

checks() {
  if [ -n "$WHEELS" ]; then
    SITE="$(mktemp -d)/site"
    stage install 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # The project itself, without its server dependencies (the tree stays first on the path,
    # so a failure here costs nothing but the note).
    timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
      --disable-pip-version-check --target "$SITE" . || echo "== install-project: failed (the tree is on PYTHONPATH)"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

  [ -z "$DRY" ] && {
    date -u
    nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
    "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
    "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|numpy|pydantic|pydantic.core|safetensors|pytest) '
  } >"$OUT_DIR/env.txt" 2>&1 && cat "$OUT_DIR/env.txt"

  if [ -n "$ONLY_SWEEP" ]; then
    echo "== tests, packs: not with --only-sweep"
  elif [ -n "$DRY" ]; then  # on a CPU they skip; the test suite runs them where it runs
    echo "== tests: not in a dry run" | tee "$OUT_DIR/tests.txt"
  else
    stage tests 100 bash -o pipefail -c "'$PY' -m pytest -q -rA -p no:cacheprovider \
      tests/engine/test_cuda.py tests/engine/test_fused_adam.py 2>&1 | tee '$OUT_DIR/tests.txt'"
  fi
  [ -z "$ONLY_SWEEP" ] && stage packs 120 "$PY" bench/sweep_gpu.py packs --out "$OUT_DIR" $DRY
  # the sweep gets what is left but the table's 20 s; it stops itself 30 s before its limit
  local left=$((TOTAL - (SECONDS - STARTED) - 20))
  [ $left -lt 60 ] && left=60
  stage sweep $left "$PY" bench/sweep_gpu.py sweep --out "$OUT_DIR" --budget-s $((left - 30)) $DRY $COMPILE
  # what torch.compile would add, in whatever time is left (never in a dry run: it compiles C)
  left=$((TOTAL - (SECONDS - STARTED) - 20))
  if [ -z "$DRY" ] && [ -z "$ONLY_SWEEP" ] && [ $left -ge 45 ]; then
    stage compile $left "$PY" bench/sweep_gpu.py compile --out "$OUT_DIR"
  else
    echo "== compile: skipped (${left}s left${DRY:+, dry run}${ONLY_SWEEP:+, --only-sweep})"
  fi
  stage table 20 "$PY" bench/sweep_gpu.py table --out "$OUT_DIR" $DRY
  echo "gpu_check: $((SECONDS - STARTED))s, exit $STATUS"
  return $STATUS
}

checks 2>&1 | tee "$OUT_DIR/gpu_check.log"
