# dockyard-local/postgres:15-bookworm: Debian bookworm's postgresql-15 with an entrypoint
# (postgres-entrypoint.sh) that follows the official postgres image's environment contract:
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA, /docker-entrypoint-initdb.d.
# Built by images.sh.
ARG BASE_IMAGE=dockyard-local/debian:bookworm
FROM ${BASE_IMAGE}
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
# Versions are not pinned: the image follows bookworm and its updates, like the official ones.
# hadolint ignore=DL3008
RUN set -eux; \
    echo "deb ${DEBIAN_MIRROR} bookworm main" > /etc/apt/sources.list; \
    # The package must not create Debian's own cluster (/var/lib/postgresql/15/main): the
    # entrypoint runs initdb on PGDATA.
    mkdir -p /etc/postgresql-common; \
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /var/run/postgresql /var/lib/postgresql/data /docker-entrypoint-initdb.d; \
    chown postgres:postgres /var/run/postgresql /var/lib/postgresql /var/lib/postgresql/data; \
    chmod 3777 /var/run/postgresql; \
    chmod 700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
COPY --chmod=755 postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
# SIGINT is PostgreSQL's "fast" shutdown (as in the official image): connected clients do not
# hold `docker stop` up until its SIGKILL.
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
