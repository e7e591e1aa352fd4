#!/usr/bin/env bash
# Installs the Debian packages the test suite and benchmarks need: redis-server and redis-tools (the Redis
# store's contract and failure tests start real servers, and a Redis Cluster with redis-cli), wordnet-base
# (the test that rebuilds the lexical watermark's table from WordNet, /usr/share/wordnet), chromium (the alert
# dashboard's headless-browser tests), wrk (make bench) and prometheus (its promtool checks and unit-tests the
# alerting rules in deploy/).
# The gateway itself needs none of them. Needs root or sudo; does nothing when all are present.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)  # builds the test Redis Cluster
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool: checks and unit-tests deploy/'s alert rules
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
