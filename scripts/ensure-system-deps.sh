#!/usr/bin/env bash
# System packages the test suite needs beyond the virtual environment: a headless Chromium for the
# browser check of the MLflow UI. Installed once per machine (CI machines start bare).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed; the browser check will be skipped" >&2
  fi
fi
