#!/usr/bin/env bash
# Entrypoint of dockyard-local/rabbitmq:3.10-bookworm (Debian's rabbitmq-server 3.10.8).
# RABBITMQ_DEFAULT_USER, RABBITMQ_DEFAULT_PASS and RABBITMQ_DEFAULT_VHOST need nothing here:
# the 3.10 server reads them itself when it initialises an empty database (it logs
# "Created user '<name>'"), and the official image no longer handles them either. Setting
# RABBITMQ_DEFAULT_USER without RABBITMQ_DEFAULT_PASS is refused: the server would keep the
# default password "guest". The server listens for AMQP on [::]:5672 (all interfaces, IPv4
# too) and the loopback-only restriction applies to the user "guest" alone.
# The server runs in the foreground as the rabbitmq user (the image's USER; started as root,
# e.g. `--user 0`, this fixes the ownership of /var/lib/rabbitmq and drops to rabbitmq).
set -euo pipefail

if [[ "${1:-}" != rabbitmq-server ]]; then
  exec "$@"
fi

if [[ -n "${RABBITMQ_DEFAULT_USER:-}" && -z "${RABBITMQ_DEFAULT_PASS:-}" ]]; then
  echo "error: RABBITMQ_DEFAULT_USER is set but RABBITMQ_DEFAULT_PASS is not" >&2
  exit 1
fi

if [[ "$(id -u)" == 0 ]]; then
  mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq
  export HOME=/var/lib/rabbitmq
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "${BASH_SOURCE[0]}" "$@"
fi

# The script of the rabbitmq package itself (/usr/lib/rabbitmq/bin first on PATH), not
# Debian's /usr/sbin wrapper (meant for root): it starts beam in the foreground and turns
# SIGTERM into a clean `rabbitmqctl stop`.
exec "$@"
