#!/usr/bin/env bash
# Everything a GPU machine can tell us, in one command:
#   build (CUDA extension included) -> glam-fast info -> the whole test suite (GPU tests enabled)
#   -> Triton compile report -> GPU runner -> scoring benchmark (bench/bench_scoring_gpu.py) -> report,
# with every log and result collected into OUTDIR and a short summary printed last.
#
#   bench/gpu_check.sh [--quick] [--dry-run] [--stages build,info,tests,compile,bench,scoring,report] OUTDIR
#   (stage "tests" is the two passes "tests-cpu" and "tests-gpu", which can also be named alone)
#
#   --quick    the GPU runner's quick profile (~3 min instead of ~11)
#   --dry-run  the GPU runner in dry-run mode on the CPU (checks this script on a machine without a GPU)
#   --stages   run only these stages (default: all, in the order above)
#
# Needs python with torch, triton, pybind11, CMake and pytest; no network. Tests that need an
# optional package the machine lacks (soundfile, librosa, soxr, safetensors, pytest-benchmark,
# matplotlib) skip; `pytest -rs` lists them in the tests log. Wheels for missing pure-Python packages can be supplied in a folder
# named by GLAM_FAST_WHEELS: they are installed with `pip --no-index --no-deps` into a temporary
# folder put on PYTHONPATH. Other settings: PYTHON (default python3), GLAM_FAST_CUDA_ARCHS (default:
# the GPU's own architecture), GLAM_FAST_GPU_ARGS (extra arguments for `python -m bench.gpu`),
# GLAM_FAST_BENCH_COMMIT (the commit to record when the tree has no .git), GLAM_FAST_LIMIT_<STAGE>
# (a stage's time limit in seconds). pytest options such as `-n 8` (pytest-xdist) go in PYTEST_ADDOPTS;
# with many workers set OMP_NUM_THREADS=1 too (the CPU pass on 16 cores: `-n 15` with one thread
# each took 222 s, `-n 8` with torch's default 16 each had not finished after 195 s).
#
# Each stage runs under a time limit and a failing stage does not stop the later ones. OUTDIR
# receives at most 8 plain files: summary.txt, junit-cpu.xml and junit-gpu.xml, logs.tar.gz (every log), report.tar.gz
# (README.md + plots regenerated with the new results) and the GPU runner's result JSON.

set -u -o pipefail

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

QUICK="" DRY_RUN="" STAGES="build,info,tests,compile,bench,scoring,report" OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --stages) STAGES="$2"; shift ;;
    --stages=*) STAGES="${1#--stages=}" ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [ -z "$OUTDIR" ] || usage; OUTDIR="$1" ;;
  esac
  shift
done
[ -n "$OUTDIR" ] || usage

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 1
mkdir -p "$OUTDIR" || exit 1
OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/glam_fast_check.XXXXXX")"
LOGS="$WORK/logs"
RESULTS="$WORK/results"
mkdir -p "$LOGS" "$RESULTS"
: > "$LOGS/stages.tsv"
export PYTHONUNBUFFERED=1

# Time limits per stage, in seconds; GLAM_FAST_LIMIT_<STAGE> overrides one (e.g. to fit a job slot).
T_BUILD=${GLAM_FAST_LIMIT_BUILD:-900} T_INFO=${GLAM_FAST_LIMIT_INFO:-120} T_TESTS=${GLAM_FAST_LIMIT_TESTS:-900}
T_COMPILE=${GLAM_FAST_LIMIT_COMPILE:-600} T_REPORT=${GLAM_FAST_LIMIT_REPORT:-300} T_SCORING=${GLAM_FAST_LIMIT_SCORING:-300}
if [ -n "$DRY_RUN" ]; then T_BENCH=900; elif [ -n "$QUICK" ]; then T_BENCH=420; else T_BENCH=1000; fi
T_BENCH=${GLAM_FAST_LIMIT_BENCH:-$T_BENCH}

wanted() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# run_stage NAME LIMIT COMMAND...: output to $LOGS/NAME.log, one line per stage to the terminal.
run_stage() {
  local name="$1" limit="$2" start rc
  shift 2
  start=$(date +%s)
  echo "[$(date +%H:%M:%S)] $name: starting (limit ${limit} s)"
  { echo "+ $*"; timeout --kill-after=30 "$limit" "$@"; } > "$LOGS/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$LOGS/stages.tsv"
  echo "[$(date +%H:%M:%S)] $name: exit $rc after $(( $(date +%s) - start )) s"
  return 0
}

{
  echo "glam_fast GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "stages: $STAGES; quick: ${QUICK:-no}; dry run: ${DRY_RUN:-no}"
  git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null || echo "commit: ${GLAM_FAST_BENCH_COMMIT:-unknown} (no git)"
  command -v nvidia-smi > /dev/null && nvidia-smi
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  "$PY" -m pip list 2>/dev/null
} > "$LOGS/machine.log" 2>&1

if [ -n "${GLAM_FAST_WHEELS:-}" ]; then
  run_stage wheels 300 "$PY" -m pip install --no-index --no-deps --no-compile --target "$WORK/site" "$GLAM_FAST_WHEELS"/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# The architectures to build for; exported so the tests know what the build was asked for.
export GLAM_FAST_CUDA_ARCHS="${GLAM_FAST_CUDA_ARCHS:-$("$PY" -c 'import torch; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else None; print(f"{c[0]}{c[1]}" if c else "80;90")' 2>/dev/null || echo "80;90")}"
if wanted build; then
  if [ -n "$DRY_RUN" ]; then CUDA_MODE=auto; else CUDA_MODE=1; fi
  run_stage build "$T_BUILD" env GLAM_FAST_REQUIRE_EXTENSION=1 GLAM_FAST_CUDA="$CUDA_MODE" \
    "$PY" setup.py build_ext --inplace
fi

if wanted info; then
  run_stage info "$T_INFO" "$PY" -m glam_fast info
  timeout "$T_INFO" "$PY" -m glam_fast info --json > "$LOGS/info.json" 2>> "$LOGS/info.log"
fi

# Two test passes (tests/conftest.py): the CPU suite under the Triton interpreter, then the GPU
# tests compiled. Stage "tests" runs both; "tests-cpu" / "tests-gpu" one.
if wanted tests || wanted tests-cpu; then
  run_stage tests-cpu "$T_TESTS" env TRITON_INTERPRET=1 "$PY" -m pytest -q -rsfE --tb=short -p no:cacheprovider \
    -m "not gpu" --junitxml="$LOGS/junit-cpu.xml"
fi
if wanted tests || wanted tests-gpu; then
  run_stage tests-gpu "$T_TESTS" env -u TRITON_INTERPRET "$PY" -m pytest -q -rsfE --tb=short -p no:cacheprovider \
    -m gpu --junitxml="$LOGS/junit-gpu.xml"
fi

if wanted compile; then
  run_stage compile "$T_COMPILE" "$PY" -c '
import json, sys
from glam_fast.kernels import compile_report, format_report
rows = []
for arch in (80, 90):
    rows += compile_report(arch)
print(format_report(rows))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
failed = [r for r in rows if not r["ok"] or not r.get("shared_fits", True)]
print(f"{len(rows)} kernel configs compiled, {len(failed)} failed or over the shared-memory limit")
sys.exit(1 if failed else 0)
' "$LOGS/compile_report.json"
fi

if wanted bench; then
  BENCH_ARGS=(--out "$RESULTS")
  [ -n "$QUICK" ] && BENCH_ARGS+=(--quick)
  [ -n "$DRY_RUN" ] && BENCH_ARGS+=(--dry-run)
  # shellcheck disable=SC2206 # word splitting of the extra arguments is intended
  BENCH_ARGS+=(${GLAM_FAST_GPU_ARGS:-})
  run_stage bench "$T_BENCH" "$PY" -m bench.gpu "${BENCH_ARGS[@]}"
fi

if wanted scoring; then
  # Not under PYTEST_ADDOPTS: pytest-xdist (-n) switches pytest-benchmark off.
  SCORING_ENV=(-u PYTEST_ADDOPTS)
  [ -n "$DRY_RUN" ] && SCORING_ENV+=(GLAM_FAST_BENCH_DEVICE=cpu)
  run_stage scoring "$T_SCORING" env "${SCORING_ENV[@]}" "$PY" -m pytest bench/bench_scoring_gpu.py -q -p no:cacheprovider \
    --benchmark-json "$RESULTS/gpu-scoring-$(date -u +%Y%m%d-%H%M%S).json"
fi

if wanted report; then
  mkdir -p "$WORK/report"
  cp -p bench/results/*.json "$WORK/report/" 2>/dev/null
  cp -p "$RESULTS"/*.json "$WORK/report/" 2>/dev/null
  run_stage report "$T_REPORT" "$PY" -m bench.report --results "$WORK/report" --out "$WORK/report/README.md" --plots "$WORK/report/plots"
fi

# Collect: a few plain files, no deeper than OUTDIR itself.
JUNITS=()  # the test passes that were asked for (a missing file: that pass did not finish)
if wanted tests || wanted tests-cpu; then JUNITS+=("$LOGS/junit-cpu.xml"); fi
if wanted tests || wanted tests-gpu; then JUNITS+=("$LOGS/junit-gpu.xml"); fi
"$PY" -m bench.summary --stages "$LOGS/stages.tsv" --junit ${JUNITS[@]+"${JUNITS[@]}"} --results "$RESULTS" > "$LOGS/summary.txt" 2>&1 \
  || cat "$LOGS/stages.tsv" > "$LOGS/summary.txt"
cp "$LOGS/summary.txt" "$OUTDIR/summary.txt"
cp "$LOGS"/junit-*.xml "$OUTDIR/" 2>/dev/null
cp "$RESULTS"/*.json "$OUTDIR/" 2>/dev/null
tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" logs
[ -f "$WORK/report/README.md" ] && tar -czf "$OUTDIR/report.tar.gz" -C "$WORK/report" README.md $(cd "$WORK/report" && ls -d plots 2>/dev/null)
rm -rf "$WORK"

echo
echo "== glam_fast GPU check: files in $OUTDIR =="
ls -1 "$OUTDIR"
echo
cat "$OUTDIR/summary.txt"
