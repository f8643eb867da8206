#!/usr/bin/env bash
# Wheels of the Python packages capsbench needs that the lent GPU machine lacks (Python 3.12, x86-64,
# its own torch and Triton, no internet): omegaconf and jsonschema with its three dependencies.
# Run where pip reaches PyPI, from anywhere:
#   bash benchmarks/gpu_wheels.sh            # -> .whl/ in the checkout (ignored by git)
# then carry .whl to the GPU machine (the device tool: carry [".whl"]); benchmarks/gpu_check.sh
# installs them there into a private folder on PYTHONPATH. torch and its stack are never touched.
# Versions are the ones installed beside capsbench here (the project's .venv, else python3), so the
# GPU check runs what the tests ran; a package not installed here is fetched at its newest version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi
DEST=${1:-.whl}
# What the machine lacks (its image, as the device notes describe it, has pyyaml, attrs, rich,
# numpy, scikit-learn, matplotlib, timm, torchvision, pytest, hypothesis, pytest-xdist as present).
PACKAGES=(omegaconf jsonschema jsonschema-specifications referencing rpds-py)
wanted=()
for name in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null || true)
  wanted+=("$name${version:+==$version}")
done
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the install there
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${wanted[@]}"
ls -l "$DEST"
