#!/usr/bin/env bash
# drift-fs against its backing directory: 1 GiB sequential write/read and
# 10,000 small files, medians of several runs, printed as speed ratios.
# Usage: bench/fs.sh [--runs N] [--size-mib N] [--files N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 bench/fs_bench.py --drift target/release/drift "$@"
