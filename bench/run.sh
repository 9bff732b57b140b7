#!/usr/bin/env bash
# ocicache against its peers: the benchmark is the Rust bench target in bench/compare/ (see
# bench/README.md); this only runs it. Options go to the tool, e.g.
#   bench/run.sh --quick                      # smoke run, well under a minute once built
#   bench/run.sh --only warm,manifests -n 5
#   bench/run.sh --blob-size 1GiB
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo bench --bench compare -- "$@"
