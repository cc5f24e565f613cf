#!/usr/bin/env bash
# Installs Detectron2 (the detection engine `coco.engine: detectron2`) into the active Python
# environment. `make venv` runs it for .venv; `snakemake --use-conda` runs it after creating the
# environment of envs/frozenrep.yaml (Snakemake's post-deploy script of that file).
#
# The package registry has no Detectron2 for Python 3.11 with its sources. sal-detectron2 0.7.2 is a
# wheel of Detectron2's 2024 source (FAIR's code and Apache-2.0 licence) tagged cp310, and its Python
# code runs on 3.11. pip refuses the tag, so the wheel is downloaded (its hash checked, from
# envs/detectron2.txt) and installed by `installer`, which does not check tags. Its compiled
# extension (a 3.10 build) does not load: Mask R-CNN, Cascade Mask R-CNN and the FPN do not use it
# (rotated boxes and deformable convolutions would). It declares numpy<2; its dependencies are
# installed from envs/requirements.txt instead, and it runs on the numpy pinned there.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python}
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 --require-hashes \
    -r "$here/detectron2.txt" -d "$wheels"
"$python" -m pip uninstall --quiet --yes sal-detectron2 2>/dev/null || true
"$python" -m installer "$wheels"/sal_detectron2-*.whl
"$python" -c "import detectron2.modeling, detectron2.evaluation; print('detectron2', detectron2.__version__, 'installed')"
