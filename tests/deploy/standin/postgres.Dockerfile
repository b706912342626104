# Test-only stand-in for postgres:16-alpine, on a host that reaches no image registry: Debian bookworm's
# PostgreSQL 15 from a debootstrap root file system (imported as STANDIN_ROOTFS), started by an entrypoint
# that honours what docker-compose.yml uses of the official image: POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD, the data folder /var/lib/postgresql/data, pg_isready, password logins over TCP.
ARG STANDIN_ROOTFS
FROM ${STANDIN_ROOTFS}
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data LANG=C.UTF-8 PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "/usr/local/bin/docker-entrypoint.sh"]
