# dockyard-local/prometheus:2.42-bookworm: Debian bookworm's prometheus package (2.42, without
# its recommends), run as the prometheus user; no service is started, the binary is the
# entrypoint. The default command mirrors prom/prometheus (config in /etc/prometheus, data in
# /prometheus); Debian's sample /etc/prometheus/prometheus.yml scrapes localhost:9090.
# Built by images.sh.
ARG BASE_IMAGE=dockyard-local/debian:bookworm
FROM ${BASE_IMAGE}
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
# Versions are not pinned: the image follows bookworm and its updates, like the official ones.
# hadolint ignore=DL3008
RUN set -eux; \
    echo "deb ${DEBIAN_MIRROR} bookworm main" > /etc/apt/sources.list; \
    # The web UI loads only moment-timezone-with-data.min.js from libjs-moment-timezone (a
    # dependency): its 212 MB data/ tree (raw zone data) is never written.
    echo 'path-exclude=/usr/share/javascript/moment-timezone/data/*' \
        > /etc/dpkg/dpkg.cfg.d/prometheus-no-tzdata-js; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
    test -f /usr/share/javascript/moment-timezone/moment-timezone-with-data.min.js; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /prometheus; \
    chown prometheus:prometheus /prometheus; \
    /usr/bin/prometheus --version
# The package's own system user (its uid is assigned when the package is installed).
# hadolint ignore=DL3066
USER prometheus
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", \
     "--storage.tsdb.path=/prometheus", \
     "--web.console.libraries=/etc/prometheus/console_libraries", \
     "--web.console.templates=/etc/prometheus/consoles"]
