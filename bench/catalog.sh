#!/usr/bin/env bash
# The catalog's read path against its ceiling, in one run: GET /products/{id} on one catalog
# instance (release, 2 HTTP workers) with wrk, and pgbench -S on the same PostgreSQL, at the
# same concurrency. Needs wrk and pgbench (Debian packages), PostgreSQL and RabbitMQ.
#
#   bash bench/catalog.sh                      # 10 s per pass, 32 connections
#   SECONDS_PER_PASS=20 bash bench/catalog.sh
#   bash bench/catalog.sh --bin-dir /tmp/old   # the same against other binaries
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p catalog -p order -p gateway
cargo xtask catalog-bench --seconds "${SECONDS_PER_PASS:-10}" --connections "${CONNECTIONS:-32}" "$@"
