# syntax=docker/dockerfile:1
# ortserve images. GPU (default): docker build -t ortserve:0.1.0-gpu .
#                  CPU:           docker build --target cpu -t ortserve:0.1.0 .
# Both serve the Triton model repository mounted at /models.

FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY exporters ./exporters
COPY loadtest ./loadtest
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Serving needs neither torch nor the exporters' tools: only the wheel and its runtime extra.
FROM python:3.11-slim-bookworm AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --no-create-home ortserve
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/ortserve-*.whl)[cpu]" && rm -rf /wheels
USER 10001
EXPOSE 8000 8001 8002
VOLUME ["/models"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["ortserve"]
CMD ["serve", "--model-repository", "/models"]

# CUDA 12 runtime with cuDNN 9, which onnxruntime-gpu's CUDA 12 build loads.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11=3.11.* python3-pip=22.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home ortserve
COPY --from=wheel /wheels /wheels
RUN python3.11 -m pip install --no-cache-dir "$(ls /wheels/ortserve-*.whl)[gpu]" && rm -rf /wheels
USER 10001
EXPOSE 8000 8001 8002
VOLUME ["/models"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python3.11", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["ortserve"]
CMD ["serve", "--model-repository", "/models"]
