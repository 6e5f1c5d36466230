# One image for every SigDL stage; the command picks the stage (`sigdl serve training`, ...).
# Build: docker build -t sigdl:dev .   (skaffold.yaml builds the same file)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SIGDL_HOME=/var/lib/sigdl \
    SIGDL_PROGRESS=0

WORKDIR /opt/sigdl
# torch first, from the CPU-only index, pinned like pyproject.toml: the default index would
# pull a multi-GB CUDA build into an image that trains on CPU (GPU nodes use the gpu extra).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY sigdl ./sigdl
COPY services ./services
COPY pipelines ./pipelines
COPY kernels ./kernels
COPY targets ./targets
RUN pip install . && useradd --uid 10001 --create-home sigdl \
    && mkdir -p /var/lib/sigdl && chown sigdl /var/lib/sigdl

USER 10001
ENTRYPOINT ["sigdl"]
CMD ["--help"]
