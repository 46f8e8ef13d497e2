# dockyard-local/rabbitmq:3.10-bookworm: Debian bookworm's rabbitmq-server (3.10) with an
# entrypoint (rabbitmq-entrypoint.sh) that honours RABBITMQ_DEFAULT_USER/_PASS/_VHOST and runs
# the server in the foreground as the rabbitmq user. Built by images.sh.
ARG BASE_IMAGE=dockyard-local/debian:bookworm
FROM ${BASE_IMAGE}
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
# Versions are not pinned: the image follows bookworm and its updates, like the official ones.
# hadolint ignore=DL3008
RUN set -eux; \
    echo "deb ${DEBIAN_MIRROR} bookworm main" > /etc/apt/sources.list; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq; \
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq; \
    chmod 770 /var/lib/rabbitmq
ENV PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    HOME=/var/lib/rabbitmq \
    RABBITMQ_LOGS=-
COPY --chmod=755 rabbitmq-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/rabbitmq
# The package's own system user (its uid is assigned when the package is installed).
# hadolint ignore=DL3066
USER rabbitmq
ENTRYPOINT ["docker-entrypoint.sh"]
EXPOSE 5672
CMD ["rabbitmq-server"]
