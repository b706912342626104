# Test-only stand-in for python:3.11-slim, on a host that reaches no image registry: Debian bookworm's
# python3 (3.11) from a debootstrap root file system (imported as STANDIN_ROOTFS), with `python` and `pip` on
# the PATH as in the official image (a venv, since Debian's own python refuses `pip install`). The host's CA
# bundle comes in so pip reaches PyPI through this machine's TLS proxy: a test image's concern only, never
# the project's Dockerfile's.
ARG STANDIN_ROOTFS
FROM ${STANDIN_ROOTFS}
RUN python3 -m venv /usr/local/python && ln -s /usr/local/python/bin/python /usr/local/bin/python \
    && ln -s /usr/local/python/bin/pip /usr/local/bin/pip
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    LANG=C.UTF-8
CMD ["python3"]
