# GPU container for alctl: CUDA PyTorch base, the package installed, runs as a non-root user.
# Usage: docker run --gpus all -v $PWD/runs:/work/runs -v $PWD/data:/work/data alctl cycle manifests/cifar10.yaml
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/alctl
COPY pyproject.toml README.md ./
COPY alctl ./alctl
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 1000 --user-group alctl \
    && mkdir -p /work/runs /work/data \
    && chown -R alctl:alctl /work
COPY --chown=alctl:alctl manifests /work/manifests

# numeric uid:gid of the alctl user created above (resolvable without the image's /etc/passwd)
USER 1000:1000
WORKDIR /work
VOLUME ["/work/runs", "/work/data"]
ENTRYPOINT ["alctl"]
CMD ["--help"]
