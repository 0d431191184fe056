#!/usr/bin/env bash
# Lint, render and validate the Helm chart offline: no cluster, no helm binary, no network but
# PyPI for the first set-up. Helm's own Go library comes through PyPI's helm-python-sdk,
# Kubernetes' OpenAPI schemas through kubernetes-validate. Details: scripts/chart_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/chart-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null; then
  echo "==> preparing $VENV (helm-python-sdk, kubernetes-validate, PyYAML from PyPI)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check --timeout 60 --retries 3 \
    helm-python-sdk kubernetes-validate PyYAML
fi
exec timeout 300 "$VENV/bin/python" scripts/chart_check.py
