#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a GPU node without internet, with the bundle gpu_bundle.sh built.
#
#   benchmarks/gpu_node.sh OUT_DIR                    # every stage; the JSON and all logs land in OUT_DIR
#   benchmarks/gpu_node.sh OUT_DIR --skip-tests       # further arguments go to gpu_check.py
#   DRY_RUN=1 benchmarks/gpu_node.sh /tmp/out         # unpack and check, print the command, run nothing
#   PACK_ONLY=1 benchmarks/gpu_node.sh OUT_DIR        # only pack OUT_DIR's logs (after gpu_check.py --out)
#   SWEEP_SPLIT=3 benchmarks/gpu_node.sh OUT_DIR      # then also split the seed sweep's wall time 3 times
#
# Unpacks gpu_bundle/gpu-bundle-cp312.tar.xz (or $BUNDLE) into one folder ($UNPACK_DIR, default
# /tmp/instrument-sweep-bundle; again only when the bundle is newer), puts this checkout and the
# bundle's site/ on PYTHONPATH, points the built-in dataset cache at the bundle's cache/, checks that
# $PYTHON (default python3) is the bundle's version and has torch, tries importing Ray, Zeus and
# librosa (a failure is only reported), then runs `python3 -m benchmarks.gpu_check --out OUT_DIR` (about
# 6 minutes: its --budget-s 360 and the tests' --tests-min-s 150). The JSON records the commit: git's, or
# $INSTRUMENT_SWEEP_COMMIT where this copy has no .git (set it where the copy was made:
# INSTRUMENT_SWEEP_COMMIT=<git rev-parse HEAD there> benchmarks/gpu_node.sh OUT_DIR).
# The run leaves four files in OUT_DIR (a device machine hands back only a few): gpu-check-<gpu>.json,
# its progress log gpu-check-<gpu>.log, gpu_node.log (all output) and gpu-check-<gpu>-logs.tar.gz
# (the run's other logs, the sweeps' analysis folders with report.md, Ray's session logs; other files
# in OUT_DIR are left alone). Exit code: gpu_check's (2: no CUDA), or 2 when the Python does not fit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: benchmarks/gpu_node.sh OUT_DIR [gpu_check.py arguments]}
shift
bundle=${BUNDLE:-$repo/gpu_bundle/gpu-bundle-cp312.tar.xz}
unpack=${UNPACK_DIR:-/tmp/instrument-sweep-bundle}
python=${PYTHON:-python3}
dry_run=${DRY_RUN:-}

pack_logs() {
    # This run's other files (gpu-check-<gpu>-*: logs, the sweep's analysis) and Ray's session logs
    # into one archive; gpu-check-<gpu>.json, gpu-check-<gpu>.log and gpu_node.log stay as they are.
    local json stem packed=() ray_logs=()
    json=$(ls -t "$out"/gpu-check-*.json 2> /dev/null | head -n 1 || true)
    stem=$(basename "${json:-$out/gpu-check-unknown.json}" .json)
    cd "$out"
    mapfile -t packed < <(ls -d "$stem"-* 2> /dev/null | grep -v -x -e "$stem-logs.tar.gz" || true)
    if [ -d /tmp/ray ]; then
        ln -sfn /tmp/ray ray-sessions
        mapfile -t ray_logs < <(cd /tmp/ray && ls -d session_*/logs 2> /dev/null | sed 's|^|ray-sessions/|' || true)
    fi
    if [ $(( ${#packed[@]} + ${#ray_logs[@]} )) -gt 0 ]; then
        tar -czhf "$stem-logs.tar.gz" "${packed[@]}" "${ray_logs[@]}" || true
        if [ "$(stat -c %s "$stem-logs.tar.gz" 2> /dev/null || echo 0)" -gt 15000000 ]; then  # too big to hand back
            tar -czhf "$stem-logs.tar.gz" "${packed[@]}" || true                              # without Ray's logs
        fi
        rm -rf "${packed[@]}"
    fi
    rm -f ray-sessions
    ls -la "$out"
}

if [ -n "${PACK_ONLY:-}" ]; then mkdir -p "$out" && out=$(cd "$out" && pwd) && pack_logs && exit 0; fi
[ -f "$bundle" ] || { echo "error: no bundle at $bundle (build it with benchmarks/gpu_bundle.sh)" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ ! -d "$unpack/site" ] || [ "$bundle" -nt "$unpack/site" ]; then
    echo "unpacking $bundle -> $unpack"
    rm -rf "$unpack" && mkdir -p "$unpack"
    tar -xJf "$bundle" -C "$unpack"
    touch "$unpack/site"
fi
export PYTHONPATH="$repo:$unpack/site${PYTHONPATH:+:$PYTHONPATH}"
INSTRUMENT_SWEEP_COMMIT=${INSTRUMENT_SWEEP_COMMIT:-$(git -C "$repo" rev-parse HEAD 2> /dev/null || true)}
export INSTRUMENT_SWEEP_COMMIT
export INSTRUMENT_SWEEP_CACHE="$unpack/cache"

want=$(basename "$bundle" | sed -n 's/.*-cp\([0-9]\)\([0-9]*\)\.tar\.xz$/\1.\2/p')
set +e
preflight=$("$python" - "$want" 2>&1 <<'EOF'
import importlib.util, sys
want, have = sys.argv[1], "%d.%d" % sys.version_info[:2]
if want and have != want:
    sys.exit(f"error: the bundle is for Python {want}, {sys.executable} is {have}")
if importlib.util.find_spec("torch") is None:
    sys.exit(f"error: {sys.executable} has no torch (the node's Python is expected to bring it)")
try:
    from importlib.metadata import version
    import librosa, ray, ray.tune, zeus.monitor  # noqa: E401,F401 - what the bundle brings, on the node's numba
    print(", ".join(f"{p} {version(p)}" for p in ("ray", "zeus", "librosa", "numba", "numpy")))
except Exception as exc:  # the stages that need them will say so too
    print(f"warning: {type(exc).__name__}: {exc}")
EOF
)
fits=$?
set -e
echo "$preflight"
[ "$fits" = 0 ] || [ -n "$dry_run" ] || exit 2

cmd=("$python" -m benchmarks.gpu_check --out "$out" "$@")
echo "PYTHONPATH=$PYTHONPATH"
echo "INSTRUMENT_SWEEP_CACHE=$INSTRUMENT_SWEEP_CACHE"
echo "INSTRUMENT_SWEEP_COMMIT=$INSTRUMENT_SWEEP_COMMIT"
echo "\$ (cd $repo && ${cmd[*]})"
[ -z "$dry_run" ] || exit 0

cd "$repo"
set +e
"${cmd[@]}" 2>&1 | tee "$out/gpu_node.log"
rc=${PIPESTATUS[0]}
if [ -n "${SWEEP_SPLIT:-}" ]; then  # benchmarks/bench_sweep.py: OUT_DIR/sweep-split.json and its log
    "$python" -m benchmarks.bench_sweep --analyze --runs "$SWEEP_SPLIT" --out "$out/sweep-split.json" \
        > "$out/sweep-split.log" 2>&1 || echo "bench_sweep failed: see $out/sweep-split.log"
fi
set -e

pack_logs
echo "gpu_check exit code $rc; results in $out"
exit "$rc"
