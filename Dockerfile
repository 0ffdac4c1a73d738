# One image for every `fraud` command: worker, api, produce, train, evaluate, broker, demo.
#   docker build -t fraudstream .
#   docker run --rm fraudstream --help
# Everything is installed at build time; nothing is downloaded when a container runs.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a virtualenv -------------------------
FROM ${PYTHON_IMAGE} AS build

# pip byte-compiles what it installs: the runtime venv is read-only to the app user.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a source change does not reinstall them.
# On x86_64 every dependency comes as a wheel (no compiler needed); on arm64 faust-streaming has
# only an sdist, which falls back to pure Python when its Cython extensions cannot be compiled.
# EXTRAS: optional dependency groups too, comma-separated (the compose `mlflow` service: ui).
ARG EXTRAS=""
COPY pyproject.toml ./
RUN EXTRAS="${EXTRAS}" python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; deps = p['dependencies'] + [d for e in filter(None, os.environ['EXTRAS'].split(',')) for d in p['optional-dependencies'][e]]; open('/tmp/requirements.txt', 'w').write(chr(10).join(deps) + chr(10))" \
 && pip install --prefer-binary -r /tmp/requirements.txt

# Then the package itself (.dockerignore lets only pyproject.toml, README.md and the packages in).
COPY . .
RUN pip install --no-deps . \
 && pip check \
 && fraud --help > /dev/null

# --- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG UID=10001
ARG GID=10001

RUN groupadd --system --gid "${GID}" fraud \
 && useradd --system --uid "${UID}" --gid fraud --home-dir /home/fraud --create-home --shell /usr/sbin/nologin fraud \
 && mkdir -p /models /data /var/lib/fraudstream /mlflow \
 && chown fraud:fraud /models /data /var/lib/fraudstream /mlflow

COPY --from=build /opt/venv /opt/venv

# Container defaults: listen on all interfaces, model and state in the directories above
# (named volumes mounted there start out owned by the fraud user). MLflow (client and server)
# sends no usage telemetry from these containers.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/home/fraud/.cache/matplotlib \
    FRAUD_MODEL_DIR=/models/current \
    FRAUD_DATA_DIR=/var/lib/fraudstream \
    FRAUD_HOST=0.0.0.0 \
    FRAUD_WEB_BIND=0.0.0.0 \
    MLFLOW_DISABLE_TELEMETRY=true

USER ${UID}:${GID}
WORKDIR /home/fraud

# Build matplotlib's font cache now rather than in the first `fraud train`.
RUN python -c "import matplotlib.pyplot"

# api, worker state view, worker metrics, producer metrics, MLflow (the `ui` image)
EXPOSE 8000 6066 9101 9102 5000

# Every command stops cleanly on SIGINT (KeyboardInterrupt): the producer flushes, uvicorn and
# Faust shut down gracefully. (`fraud produce` has no SIGTERM handler, and as PID 1 without an
# init it would ignore SIGTERM until killed.)
STOPSIGNAL SIGINT

ENTRYPOINT ["fraud"]
CMD ["--help"]
