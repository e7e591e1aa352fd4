#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (redis-server for the Redis store's contract tests,
# wordnet-base only for rebuilding the substitution table, chromium for the alert dashboard's headless browser
# test). Needs root or sudo; does nothing when present.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
