# syntax=docker/dockerfile:1
# One image for the four services; the argument names the one to run:
#   docker run IMAGE services.fetcher        (services.ingest | fetcher | classifier | sink)
# Built from pyproject.toml with the pins of constraints.txt, runtime dependencies only
# (not the `local` and `dev` extras). Every dependency ships a manylinux wheel for
# CPython 3.11, so the build needs no compiler. Runs as an unprivileged user and works
# with a read-only root filesystem (no bytecode written at run time, /tmp for scratch).
# Pin the base image by digest (`python:3.11-slim-bookworm@sha256:...`) in a release build.
# Without a registry, `make image` (scripts/image.sh) builds with buildah on a stand-in of
# this base made from Debian bookworm's own python3 and tagged with this name.
FROM python:3.11-slim-bookworm AS build
# pip trusts the system's CA bundle (the one scripts/image.sh mounts for the build, where a
# proxy needs it), not the copy it carries; this stage's settings stay out of the image.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python -m venv /opt/tagstream
WORKDIR /src
# The dependencies first, in a layer of their own: a change to the code reinstalls none.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        >requirements.txt \
    && /opt/tagstream/bin/pip install --constraint constraints.txt --requirement requirements.txt
COPY services ./services
RUN /opt/tagstream/bin/pip install --no-deps --constraint constraints.txt . \
    && /opt/tagstream/bin/pip check \
    && /opt/tagstream/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim-bookworm
ENV PATH=/opt/tagstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 tagstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tagstream
COPY --from=build /opt/tagstream /opt/tagstream
WORKDIR /app
USER 10001:10001
# health and metrics: ingest 9101, fetcher 9102, classifier 9103, sink 9104; sink API 8080
EXPOSE 8080 9101 9102 9103 9104
# The service's own /healthz, on whichever of the four health ports this container listens.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, socket, urllib.request as u; ports = [int(os.environ.get(f'{s}_METRICS_PORT', d)) for s, d in (('INGEST', 9101), ('FETCHER', 9102), ('CLASSIFIER', 9103), ('SINK', 9104))]; port = next(p for p in ports if socket.socket().connect_ex(('127.0.0.1', p)) == 0); u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m"]
CMD ["services.sink"]
