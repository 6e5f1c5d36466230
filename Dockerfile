# syntax=docker/dockerfile:1
# One image for every SigDL process: the four stage services (`sigdl serve training`, ...), the
# pipeline's components (they run `python` with the image's packages), the MLflow server the
# chart starts (`mlflow server`), and the chart's `helm test` pod.
#
#   docker build -t sigdl:0.1.0 .                                # CPU (the default)
#   docker build --build-arg VARIANT=cuda -t sigdl:0.1.0-cuda .  # CUDA PyTorch + CuPy (gpu extra)
#
# Two stages: `build` resolves and builds every wheel (pip, compilers if a wheel needs them);
# the final stage installs those wheels only, with no index, no compiler, no cache, no secret,
# and runs as the non-root user 10001 that the Helm chart's securityContext names.

# An exact tag, not a moving one (python:3.11-slim would change under a rebuild).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
# torch pinned like pyproject.toml, from the index of the variant: the default index would pull
# a multi-GB CUDA build into the CPU image; the CUDA image takes cu128 wheels and the gpu extra.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sigdl ./sigdl
COPY services ./services
COPY pipelines ./pipelines
COPY kernels ./kernels
COPY targets ./targets
RUN set -eu; \
    case "$VARIANT" in \
      cpu) index="$TORCH_CPU_INDEX"; extras="" ;; \
      cuda) index="$TORCH_CUDA_INDEX"; extras="[gpu]" ;; \
      *) echo "VARIANT=$VARIANT: expected cpu or cuda" >&2; exit 2 ;; \
    esac; \
    pip wheel --wheel-dir /wheels --index-url "$index" torch==2.13.0; \
    pip wheel --wheel-dir /wheels --find-links /wheels ".$extras"; \
    echo "sigdl$extras" > /wheels/REQUIREMENT

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SIGDL_HOME=/var/lib/sigdl \
    SIGDL_PROGRESS=0
WORKDIR /opt/sigdl
# the wheels are bind-mounted from the build stage, so none of them stays in a layer
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "$(cat /wheels/REQUIREMENT)" \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/sigdl sigdl \
    && mkdir -p /var/lib/sigdl \
    && chown 10001:10001 /var/lib/sigdl

USER 10001
ENTRYPOINT ["sigdl"]
CMD ["--help"]
