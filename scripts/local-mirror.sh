#!/usr/bin/env bash
# A package mirror on 127.0.0.1 holding exactly what the images install, for building them where the
# build containers cannot reach (or verify) the public index: `pip download` runs on this machine,
# with its own pip configuration and certificates, and the builds read the mirror over loopback.
#
#   scripts/local-mirror.sh DIR PORT     downloads into DIR, writes DIR/simple/ (PEP 503), serves it
#                                        in the background on http://127.0.0.1:PORT/simple and prints
#                                        the server's pid.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1 port=$2
python=${PYTHON:-python3}
mkdir -p "$dir/files"
deps=$("$python" -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))")
build=$("$python" -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))")
# shellcheck disable=SC2086  # the requirement lists are meant to split
download() { "$python" -m pip download -q -d "$dir/files" "$@" >>"$dir/download.log" 2>&1 || { tail -20 "$dir/download.log" >&2; exit 1; }; }
download -c constraints.txt $deps $build
for req in components/*/requirements.txt components/*/nncf-requirements.txt; do
  # The gpu overlay's vLLM image is not built from this mirror (scripts/build-images.sh --with-vllm).
  [ "$req" = components/model-inference-vllm-server/requirements.txt ] && continue
  if grep -qv '^#' "$req"; then download --no-deps --require-hashes -r "$req"; fi
done
"$python" - "$dir" <<'PY'
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
projects: dict[str, list[str]] = {}
for f in sorted((root / "files").iterdir()):
    name = f.name.split("-")[0] if f.suffix == ".whl" else f.name.rsplit("-", 1)[0]
    projects.setdefault(re.sub(r"[-_.]+", "-", name).lower(), []).append(f.name)
for project, files in projects.items():
    folder = root / "simple" / project
    folder.mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="../../files/{f}">{f}</a><br>\n' for f in files)
    (folder / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
(root / "simple" / "index.html").write_text("".join(f'<a href="{p}/">{p}</a><br>\n' for p in projects))
PY
nohup "$python" -m http.server "$port" --bind 127.0.0.1 --directory "$dir" >"$dir/server.log" 2>&1 &
echo $!
