# CUDA image for GPU workers (the gpu profile of docker-compose.yml): docker build --target cuda .
# PyTorch's CUDA wheel carries the CUDA libraries; the host needs only the NVIDIA driver and the
# NVIDIA container toolkit. TORCH_CUDA_INDEX picks the CUDA version of the wheel.
FROM python:3.11-slim AS cuda
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu130
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RNNLAB_HOME=/data RNNLAB_HOST=0.0.0.0
WORKDIR /app
RUN pip install --index-url "$TORCH_CUDA_INDEX" "torch==2.13.0"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY rnnlab ./rnnlab
COPY migrations ./migrations
RUN pip install -e . && useradd --create-home rnnlab && mkdir -p /data && chown rnnlab /data
USER rnnlab
VOLUME ["/data"]
CMD ["rnnlab", "worker", "--queues", "gpu"]

# CPU image for the api, the migrations and the workers (one image, three commands). The default
# target (the last stage).
FROM python:3.11-slim AS cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RNNLAB_HOME=/data RNNLAB_HOST=0.0.0.0
WORKDIR /app

# CPU torch first, from PyTorch's CPU index, so the torch>=2.4 range never pulls a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY rnnlab ./rnnlab
COPY migrations ./migrations
RUN pip install -e . && useradd --create-home rnnlab && mkdir -p /data && chown rnnlab /data
USER rnnlab
VOLUME ["/data"]
EXPOSE 8000
CMD ["rnnlab", "api"]
