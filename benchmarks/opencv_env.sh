#!/usr/bin/env bash
# The benchmark's own environment for benchmarks/detectors.py: the project's interpreter and packages,
# plus OpenCV 4.x (whose DNN module reads darknet cfgs; 5.x dropped the darknet importer) and
# scikit-image (its bundled sample photos). Neither is a dependency of cspnet.
#
#     bash benchmarks/opencv_env.sh              # creates benchmarks/.venv-opencv (about 100 MB)
#     benchmarks/.venv-opencv/bin/python benchmarks/detectors.py
#
# PYTHON: the project's interpreter (default: .venv/bin/python of this checkout). The new venv sees
# that interpreter's site-packages through a .pth file, so torch, onnxruntime and OpenVINO are the
# very ones the project runs with; only OpenCV and scikit-image (and what scikit-image needs that the
# project lacks) are installed into it.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$HERE/../.venv/bin/python}"
VENV="$HERE/.venv-opencv"
OPENCV="${OPENCV:-opencv-python-headless==4.14.0.94}"  # the newest 4.x on PyPI when written
SKIMAGE="${SKIMAGE:-scikit-image==0.26.0}"

"$PYTHON" -m venv "$VENV"
SITE="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
OWN="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$SITE" > "$OWN/cspnet-project.pth"
# --no-deps for OpenCV: its only dependency, numpy, must stay the project's (a second copy would shadow it).
"$VENV/bin/python" -m pip install -q --no-deps "$OPENCV"
"$VENV/bin/python" -m pip install -q "$SKIMAGE"
"$VENV/bin/python" -c 'import cv2, numpy, skimage, torch; print("cv2", cv2.__version__, "numpy", numpy.__version__, "skimage", skimage.__version__, "torch", torch.__version__)'
