# syntax=docker/dockerfile:1
#
# One image, several entry points: `nvsentinel <command>` (docs/operations.md).
#
#   docker build -t nvsentinel:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#   docker run --rm nvsentinel:0.1.0                     # prints `nvsentinel --help`
#   docker run --rm nvsentinel:0.1.0 xid explain 79
#
# The build stage compiles the Cython core, the fake NVML library and the protobuf modules into the
# nvsentinel wheel and collects every dependency as a wheel. The runtime stage installs those wheels
# and nothing else: no compiler, no index, nothing built there.
#
# The image runs as uid 65532 by default, and the controllers keep it. The chart runs the
# node-side containers as root instead: their socket directory is a root-owned host path,
# kmsg-monitor reads /dev/kmsg privileged, and nvml-provider can be made privileged for GPU
# resets. See docs/operations.md, "What runs as root".

# A tag, not a digest: security fixes of the base arrive with a rebuild. Both stages use the same
# base, so the compiled wheel matches the runtime's Python and glibc.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# gcc and the libc headers build the Cython extensions and the fake libnvidia-ml (setup.py); the
# base image already has the Python headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (see setup.py and MANIFEST.in), so a change to docs, charts or
# tests does not rebuild it. .dockerignore keeps in-place builds and generated files out of these.
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY protos protos
COPY csrc csrc
COPY daemons daemons
COPY nvsentinel nvsentinel
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="nvsentinel" \
      org.opencontainers.image.description="Kubernetes-native GPU health monitoring and automated remediation" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# The wheels are bind-mounted from the build stage, not copied: they never land in a layer.
# --no-index --only-binary: only those wheels, and pip refuses rather than compiles anything.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --only-binary=:all: --find-links=/wheels nvsentinel \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot \
      --shell /usr/sbin/nologin nonroot
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["nvsentinel"]
CMD ["--help"]
