#!/usr/bin/env bash
# Installs what the end-to-end tests need: kcat (apt) and .venv with the
# pinned Kafka clients of tests/e2e/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
missing=()
command -v kcat >/dev/null || missing+=(kcat)
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! cmp -s tests/e2e/requirements.txt .venv/requirements.installed; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt
    cp tests/e2e/requirements.txt .venv/requirements.installed
fi
