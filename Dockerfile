# syntax=docker/dockerfile:1
#
# One image, several entry points: `nvsentinel <command>` (docs/operations.md).
#
#   docker build -t nvsentinel:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#   docker run --rm nvsentinel:0.1.0                     # prints `nvsentinel --help`
#   docker run --rm nvsentinel:0.1.0 xid explain 79
#
# Without Docker or a registry: `bash tools/build-image.sh` builds this file with podman on a base made
# from Debian packages (PYTHON_IMAGE below); tests/k8s/test_image.py runs the result as the chart does.
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
# base, so the compiled wheel matches the runtime's Python and glibc. Any Debian-based image with
# python3 >= 3.11 and pip will do (the stages call `python3 -m pip`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# gcc and the libc headers build the Cython extensions and the fake libnvidia-ml (setup.py). The
# python images carry the Python headers; a plain Debian base with python3 (tools/build-image.sh)
# gets them from python3-dev. This stage is thrown away, so what it installs never ships.
RUN headers="$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" \
 && extra="" && { [ -e "$headers" ] || extra=python3-dev; } \
 && apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev $extra \
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
# wheels.sha256 names every wheel the runtime installs (see the runtime stage for why it is copied)
RUN python3 -m pip wheel --wheel-dir /wheels . \
 && cd /wheels && sha256sum *.whl > /wheels.sha256

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# The wheels are bind-mounted from the build stage, not copied: they never land in a layer. Their
# checksums are copied, for two reasons: the image records what it holds, and the copy makes the
# install step's cache depend on the wheels (buildah, unlike BuildKit, does not hash a RUN's mounts, so
# without it a source change would rebuild the wheel and then reuse the old install). The install
# checks the mounted wheels against that record.
# --no-index --only-binary: only those wheels, and pip refuses rather than compiles anything.
COPY --from=build /wheels.sha256 /usr/local/share/nvsentinel/wheels.sha256
# kubernetes.aio is the client's asyncio copy of itself (68 MB with its bytecode); nothing imports it
# (tests/k8s/test_image.py checks, with every daemon loaded), so it goes in the same layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    cd /wheels && sha256sum --check --quiet /usr/local/share/nvsentinel/wheels.sha256 && cd / \
 && python3 -m pip install --no-index --only-binary=:all: --find-links=/wheels nvsentinel \
 && rm -rf "$(python3 -c 'import kubernetes, os; print(os.path.dirname(kubernetes.__file__))')/aio" \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot \
      --shell /usr/sbin/nologin nonroot
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["nvsentinel"]
CMD ["--help"]
# Last, so that a new revision changes only the image's metadata, not a layer.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="nvsentinel" \
      org.opencontainers.image.description="Kubernetes-native GPU health monitoring and automated remediation" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
