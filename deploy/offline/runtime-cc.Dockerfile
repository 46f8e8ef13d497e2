# dockyard-local/runtime-cc:bookworm: a distroless-cc-like runtime (no shell, no apt) made of
# files from Debian bookworm packages: libc6, libgcc-s1, tzdata, netbase, the CA bundle from
# ca-certificates, plus passwd/group (root, nonroot 65532), nsswitch.conf, /tmp. Built by
# images.sh.
ARG BASE_IMAGE=dockyard-local/debian:bookworm
FROM ${BASE_IMAGE} AS fetch
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
WORKDIR /debs
# Versions are not pinned: the image follows bookworm and its updates, like the official ones.
# DL4006: the one pipe (`find … | grep .`) fails the build when grep finds a shell; a failing
# find would only let it pass with no shell found.
# hadolint ignore=DL3008,DL4006
RUN set -eux; \
    echo "deb ${DEBIAN_MIRROR} bookworm main" > /etc/apt/sources.list; \
    apt-get update; \
    # For update-ca-certificates below (this stage only).
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates; \
    apt-get download libc6 libgcc-s1 tzdata netbase ca-certificates base-files; \
    mkdir -p /rootfs; \
    for deb in libc6_*.deb libgcc-s1_*.deb tzdata_*.deb netbase_*.deb; do dpkg-deb -x "$deb" /rootfs; done; \
    # base-files: only os-release (as distroless does).
    mkdir -p /tmp/base-files /rootfs/etc /rootfs/usr/lib; \
    dpkg-deb -x base-files_*.deb /tmp/base-files; \
    cp -a /tmp/base-files/usr/lib/os-release /rootfs/usr/lib/os-release; \
    ln -s ../usr/lib/os-release /rootfs/etc/os-release; \
    # The CA bundle, as update-ca-certificates writes it from the package's certificates.
    update-ca-certificates; \
    mkdir -p /rootfs/etc/ssl/certs; \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt; \
    # Keep it small: no docs, man pages, translations, lintian overrides, character-set
    # converters (gconv: only for iconv, which a Rust binary does not use), tzdata's
    # duplicate right/ and posix/ trees, nor package scripts.
    rm -rf /rootfs/usr/share/doc /rootfs/usr/share/man /rootfs/usr/share/locale \
        /rootfs/usr/share/lintian /rootfs/usr/share/info \
        /rootfs/usr/lib/x86_64-linux-gnu/gconv \
        /rootfs/usr/share/zoneinfo/right /rootfs/usr/share/zoneinfo/posix \
        /rootfs/usr/share/debconf /rootfs/usr/sbin /rootfs/usr/bin; \
    ln -s Etc/UTC /rootfs/usr/share/zoneinfo/UTC 2>/dev/null || true; \
    ln -sf /usr/share/zoneinfo/Etc/UTC /rootfs/etc/localtime; \
    echo "Etc/UTC" > /rootfs/etc/timezone; \
    printf '%s\n' \
        'root:x:0:0:root:/root:/sbin/nologin' \
        'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > /rootfs/etc/passwd; \
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' 'nonroot:x:65532:' > /rootfs/etc/group; \
    printf '%s\n' \
        'passwd:         files' \
        'group:          files' \
        'shadow:         files' \
        'hosts:          files dns' \
        'networks:       files' \
        'protocols:      files' \
        'services:       files' \
        'ethers:         files' \
        'rpc:            files' > /rootfs/etc/nsswitch.conf; \
    mkdir -p /rootfs/tmp /rootfs/root /rootfs/home/nonroot; \
    chmod 1777 /rootfs/tmp; \
    chmod 700 /rootfs/root; \
    chown 65532:65532 /rootfs/home/nonroot; \
    chmod 700 /rootfs/home/nonroot; \
    # A shell-less image: make sure nothing in it is one.
    if find /rootfs \( -name sh -o -name bash -o -name dash \) | grep .; then exit 1; fi; \
    du -sh /rootfs

FROM scratch
COPY --from=fetch /rootfs /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /home/nonroot
