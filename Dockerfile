# syntax=docker/dockerfile:1
# prefect-dr container image: the CLI and the PostgreSQL 14-18 client tools, run as uid 10001.
#
#   scripts/build-image            (docker or buildah; tags prefect-dr:<package version>)
#   docker build -t prefect-dr:dev --build-arg VERSION="$(python3 -c 'import prefect_dr; print(prefect_dr.__version__)')" .
#   docker run --rm prefect-dr:dev --version
#
# Kubernetes manifests: deploy/kubernetes (docs/deploy.md). Linted by hadolint (tests/test_deploy.py).
#
# PostgreSQL clients: every major from 14 to 18, side by side in /usr/lib/postgresql/NN/bin
# (Bookworm ships 15; the others come from the PostgreSQL project's apt repository, PGDG, set up
# with the key postgresql-common ships). prefect-dr picks per operation (docs/deploy.md,
# "PostgreSQL versions"): pg_dump of the server's major, pg_restore that reads the archive and
# suits the target (a 17+ one into 14-16 runs through psql without SET transaction_timeout).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: wheels of the locked dependencies and of the project ---------------------------
# requirements.lock (scripts/lock-requirements) pins every dependency with its hashes: nothing
# is resolved here, and a file that changed on the index fails the build. Compilers and build
# backends an sdist may need stay in this stage.
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY requirements.lock ./
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock
COPY pyproject.toml README.md ./
COPY prefect_dr ./prefect_dr
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=dev

LABEL org.opencontainers.image.title="prefect-dr" \
      org.opencontainers.image.description="Disaster recovery for self-hosted Prefect servers: encrypted, verified backups to S3 and undoable restores." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/prefect-dr/prefect-dr" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# pg_dump, pg_restore, psql of PostgreSQL 14 to 18. "=NN.*" pins each major and still takes
# security updates (an exact version disappears from the mirror when the next one is published).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends \
       postgresql-client-14=14.* postgresql-client-15=15.* postgresql-client-16=16.* \
       postgresql-client-17=17.* postgresql-client-18=18.* \
    && rm -rf /var/lib/apt/lists/*

# Numeric uid/gid (USER below): Kubernetes' runAsNonRoot can check a number, not a name.
RUN groupadd --system --gid 10001 prefect-dr \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin prefect-dr

# The wheels only (no index, no resolution: the lock decided), then the packaging tools the
# base image ships go: the running image installs nothing.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
    && pip uninstall --no-cache-dir -y setuptools wheel \
    && pip uninstall --no-cache-dir -y pip

# HOME=/tmp: with readOnlyRootFilesystem the only writable place is the /tmp emptyDir; nothing
# is staged on disk (backups stream), but libraries that cache in $HOME find somewhere to go.
# No PREFECT_DR_PG_BIN_DIR: every client is in /usr/lib/postgresql/*/bin, searched by default.
ENV HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

USER 10001:10001
WORKDIR /tmp

# A batch job: its health is its exit code (docs/exit-codes.md), and there is no long-running
# process to probe. Kubernetes ignores Docker health checks anyway; NONE also disables any
# check inherited from the base image.
HEALTHCHECK NONE

# The tool is PID 1, no shell in between: it installs its own SIGTERM/SIGINT handlers (a
# Kubernetes deadline or eviction aborts the uploads and leaves a *failed* record), and it
# waits for every child (pg_dump, pg_restore) it starts.
ENTRYPOINT ["prefect-dr"]
CMD ["--help"]
