#!/usr/bin/env bash
# Build, on a machine with internet, what a GPU node without it needs to run benchmarks/gpu_check.py.
#
#   benchmarks/gpu_bundle.sh                           # -> gpu_bundle/gpu-bundle-cp312.tar.xz
#   PYTHON=.venv/bin/python PY_VERSION=3.12 benchmarks/gpu_bundle.sh
#   benchmarks/gpu_node.sh OUT_DIR                     # then, on the node, from a checkout holding the bundle
#
# The node is taken to have Python $PY_VERSION (default 3.12) with $NODE_HAS installed (default: torch
# numpy pandas pyarrow matplotlib nvidia-ml-py scikit-learn grpcio aiohttp prometheus-client pytest)
# and $NODE_ALSO (default: numba llvmlite, which this project's GPU machines' image holds; llvmlite
# alone would add 36 MB packed: set NODE_ALSO= for a node without them).
# The bundle holds the rest of what the project and its tests need (ray[default,tune], zeus without
# amdsmi, librosa, soundfile, pyyaml, tqdm, the test extras' trackers and notebook runner, pytest-xdist,
# ... and their dependencies: 119 packages on 2026-12-03), but not moto's S3 server (the S3 tests skip):
# manylinux x86_64 wheels for that Python, resolved with `pip install --dry-run --report` for both sets
# (the node's set with its dependencies is left out), unpacked into one `pip install --target` folder
# (site/), trimmed (no ray/jars, seed wheels, source maps or compiled files; ELF symbols stripped);
# plus the built-in dataset (cache/), so the node need not generate it. Packed with xz: 57 MB (the Ray
# wheel alone is 79 MB; wandb, a test extra, is 14 MB of the 57), in 2.3 minutes on 2 cores.
# Needs Python >= 3.11 here (tomllib) with the project importable (for the dataset), and pip.
# Work files stay in gpu_bundle/work/ (ignored by git, like the bundle).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/gpu_bundle}
work=$out/work
python=${PYTHON:-python3}
pyver=${PY_VERSION:-3.12}
tag=cp${pyver/./}
node_has=${NODE_HAS:-torch numpy pandas pyarrow matplotlib nvidia-ml-py scikit-learn grpcio aiohttp prometheus-client pytest}
node_also=${NODE_ALSO-numba llvmlite}
bundle=$out/gpu-bundle-$tag.tar.xz

# pip matches --platform tags literally: name every manylinux x86_64 tag up to glibc 2.28.
target=(--python-version "$pyver" --only-binary=:all: --platform manylinux2014_x86_64
        --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 28 -1 5); do target+=(--platform "manylinux_2_${minor}_x86_64"); done

mkdir -p "$work"
cd "$repo"
echo "== requirements: the project's and its test extras' (torch left to the node; moto's S3 server left out:"
echo "   the S3 tests skip without it, and its wheels with boto3's are 25 MB), plus pytest-xdist"
"$python" - > "$work/requirements.txt" <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["test"] + ["pytest-xdist"]
left_out = {"torch", "moto", "flask", "flask-cors"}
print("\n".join(d for d in wanted if re.match(r"[A-Za-z0-9_.-]+", d.strip()).group(0).lower() not in left_out))
EOF
cat "$work/requirements.txt"

echo "== resolving for Python $pyver: the node's set ($node_has $node_also), then the project's"
# shellcheck disable=SC2086  # lists of names
"$python" -m pip install --quiet --dry-run --ignore-installed --report "$work/node.json" "${target[@]}" \
    $node_has $node_also
"$python" -m pip install --quiet --dry-run --ignore-installed --report "$work/project.json" "${target[@]}" \
    -r "$work/requirements.txt"
"$python" - "$work" <<'EOF' > "$work/bundle.txt"
import json, re, sys
work = sys.argv[1]
name = lambda item: re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
node = {name(i) for i in json.load(open(f"{work}/node.json"))["install"]} | {"amdsmi"}  # zeus runs without it
for item in json.load(open(f"{work}/project.json"))["install"]:
    if name(item) not in node:
        print(f"{name(item)}=={item['metadata']['version']}")
EOF
echo "$(wc -l < "$work/bundle.txt") packages to bundle"

echo "== downloading and unpacking into one folder"
rm -rf "$work/wheels" "$work/site" "$work/cache"
"$python" -m pip download --quiet --no-deps --dest "$work/wheels" "${target[@]}" -r "$work/bundle.txt"
"$python" -m pip install --quiet --no-deps --no-index --no-compile --target "$work/site" "${target[@]}" \
    "$work"/wheels/*.whl
echo "== trimming: ray/jars (Java workers), virtualenv's seed wheels (Ray's pip runtime envs only),"
echo "   source maps, SBOMs, compiled files; symbol tables stripped from ELF files (a third of Ray's binaries)"
rm -rf "$work/site/ray/jars" "$work/site/bin" "$work"/site/virtualenv/seed/wheels/embed/*.whl
find "$work/site" \( -name __pycache__ -o -name sboms \) -type d -prune -exec rm -rf {} +
find "$work/site" -name "*.js.map" -delete
if command -v strip > /dev/null; then  # not an ELF file: strip says so and leaves it alone
    find "$work/site" -type f \( -name "*.so" -o -name "*.so.*" -o -perm -u+x \) \
        -exec strip --strip-unneeded {} + 2> /dev/null || true
fi

echo "== the built-in dataset"
if dataset=$("$python" -m tune_jobs data info synthetic | sed -n 's/^dataset: *//p') && [ -n "$dataset" ]; then
    mkdir -p "$work/cache" && cp -r "$dataset" "$work/cache/"
else
    echo "warning: no built-in dataset bundled: the node will generate it (about a minute)" >&2
    mkdir -p "$work/cache"
fi

echo "== packing"
rm -f "$bundle"
XZ_OPT=${XZ_OPT:--T0 --x86 --lzma2=preset=9} tar -C "$work" -cJf "$bundle" site cache
du -sh "$work/wheels" "$work/site" "$work/cache" "$bundle"
echo "bundle: $bundle"
