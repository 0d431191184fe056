#!/usr/bin/env bash
# Lint, render and validate the Helm chart offline (no cluster, no helm binary): Helm's own
# Go SDK through PyPI's helm-python-sdk, Kubernetes schemas through kubernetes-validate.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/chart-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null; then
  echo "==> preparing $VENV (helm-python-sdk, kubernetes-validate, PyYAML)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check helm-python-sdk kubernetes-validate PyYAML
fi
exec "$VENV/bin/python" scripts/chart_check.py
