#!/usr/bin/env bash
# Builds the OpenVINO export tool environment (src/private_finetuning/models/openvino_ir.py):
#   scripts/make-openvino-export-env.sh PYTHON DEST
# PYTHON is the interpreter that has the private-fine-tuning package; DEST (by default
# <its prefix>/tools/openvino-export, where the package looks) gets a venv that sees PYTHON's
# packages after its own, and installs only optimum-intel and the versions it needs over them; nncf
# (int8 weights of the served model) goes into DEST/nncf, a folder only the compression puts on its path.
set -euo pipefail
python=${1:?usage: $0 PYTHON [DEST]}
dest=${2:-$("$python" -c 'import sys; print(sys.prefix)')/tools/openvino-export}
component="$(cd "$(dirname "$0")/.." && pwd)/components/openvino-model-conversion-server"
requirements="$component/requirements.txt"
base_python=$("$python" -c 'import sys; print(sys._base_executable)')
rm -rf "$dest"
# No pip inside (a distribution's Python may lack ensurepip): PYTHON's pip installs into its folder.
"$base_python" -m venv --without-pip "$dest"
site=$("$dest/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# A .pth line appends the package's site-packages to the tool's path, after the tool's own.
"$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz-private-fine-tuning.pth"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes --target "$site" \
  -r "$requirements"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes --target "$dest/nncf" \
  -r "$component/nncf-requirements.txt"
"$dest/bin/python" -c 'import optimum.exporters.openvino, openvino_tokenizers' \
  || { echo "the OpenVINO export environment at $dest does not import optimum-intel" >&2; exit 1; }
PYTHONPATH="$dest/nncf" "$dest/bin/python" -c 'import nncf' \
  || { echo "the OpenVINO export environment at $dest does not import nncf" >&2; exit 1; }
echo "OpenVINO export environment ready: $dest/bin/python"
