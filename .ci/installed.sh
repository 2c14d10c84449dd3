#!/usr/bin/env bash
# Installs shardsearch the way users do, into a fresh venv, and checks what they touch first (.ci/smoke.py).
#   .ci/installed.sh wheel    the built wheel with the [cpu] extra, newest dependencies
#   .ci/installed.sh floors   the source with every dependency at the floor pyproject.toml declares
#   .ci/installed.sh client   the built wheel alone (the client library), driven against a cluster run by .venv
set -euo pipefail
cd "$(dirname "$0")/.."
kind="$1"
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
pip=("$venv/bin/pip" install -q --disable-pip-version-check)
case "$kind" in
  wheel)
    rm -rf dist && .venv/bin/python -m build --wheel --outdir dist . >/dev/null
    "${pip[@]}" "$(ls dist/shardsearch-*.whl)[cpu]" ;;
  client)
    rm -rf dist && .venv/bin/python -m build --wheel --outdir dist . >/dev/null
    "${pip[@]}" "$(ls dist/shardsearch-*.whl)" ;;
  floors)
    python3 .ci/floors.py > "$venv/floors.txt"
    "${pip[@]}" -c "$venv/floors.txt" '.[cpu]' ;;
  *) echo "usage: $0 wheel|floors|client" >&2; exit 2 ;;
esac 2>&1 | { grep -v "is ignored: it is neither" || true; }
if [ "$kind" = client ]; then
  echo "== installed (client): $("$venv/bin/pip" list 2>/dev/null | tail -n +3 | awk '{print $1}' | paste -sd ' ')"
  "$venv/bin/pip" check
  (cd / && "$venv/bin/python" "$OLDPWD/.ci/client_smoke.py" "$OLDPWD/.venv/bin/shardsearch")
  rm -rf "$(dirname "$venv")"
  exit 0
fi
echo "== installed ($kind): $("$venv/bin/shardsearch" --version); $("$venv/bin/pip" list 2>/dev/null | grep -iE '^(grpcio|protobuf|numpy|faiss-cpu) ' | tr -s ' ' | paste -sd ';')"
"$venv/bin/pip" check
(cd / && "$venv/bin/python" "$OLDPWD/.ci/smoke.py")
rm -rf "$(dirname "$venv")"
