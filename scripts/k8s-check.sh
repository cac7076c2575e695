#!/usr/bin/env bash
# Renders deploy/kubernetes with `kubectl kustomize` and validates the output
# offline: Kubernetes JSON schemas (PyPI kubernetes-validate, strict), the
# committed CRD schemas, and consistency with the server's own config and
# routes. No cluster is contacted. Details: scripts/k8s-check.py.
#
# Needs kubectl (with its built-in kustomize, v5 or newer: Debian's
# kubernetes-client 1.20 is too old for kustomize components) and python3;
# creates .venv-k8s on first run (PyPI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
VENV=.venv-k8s

if ! command -v kubectl >/dev/null 2>&1; then
    echo "k8s-check: kubectl is not installed (it renders the kustomizations)" >&2
    exit 1
fi
kustomize_version=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}\([0-9]*\).*/\1/p')
if [ -z "$kustomize_version" ] || [ "$kustomize_version" -lt 5 ]; then
    echo "k8s-check: kubectl's kustomize is '${kustomize_version:-unknown}'; v5 or newer is needed" >&2
    kubectl version --client >&2 || true
    exit 1
fi

if [ ! -x "$VENV/bin/python" ] \
    || ! "$VENV/bin/python" -c "import kubernetes_validate, sys; sys.exit(kubernetes_validate.__version__ != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "tomli; python_version < '3.11'"
fi

exec "$VENV/bin/python" scripts/k8s-check.py "$@"
