# GPU worker image: vLLM's official image plus this project, running a Prefect worker of the
# `gpu` pool (one job at a time; give the container tensor_parallel_size GPUs).
#   docker build -t persona-icm-gpu .
# Volumes for the model hub cache and vLLM's compile cache: docs/gpus.md ("Docker image").
# Not built in this project's CI: its machines have no Docker engine and no GPU.
# VLLM_VERSION must equal the vllm pin of pyproject.toml and constraints/gpu.txt (a test checks).
ARG VLLM_VERSION=0.32.0
FROM vllm/vllm-openai:v${VLLM_VERSION}
ARG VLLM_VERSION

WORKDIR /opt/persona-icm
COPY pyproject.toml README.md prefect.yaml ./
COPY constraints ./constraints
COPY persona_icm ./persona_icm
COPY tasks ./tasks
COPY flows ./flows
COPY warehouse ./warehouse
# scripts/gpu_check.sh, the acceptance check of a GPU box (docs/gpus.md), runs in the image too
COPY scripts ./scripts
COPY benchmarks ./benchmarks
# Every package at its constraints/gpu.txt pin: the image's vLLM and torch already are, so pip
# keeps them; anything the image holds at another version (fastapi, prefect's deps) is replaced.
RUN pip install --no-cache-dir -c constraints/gpu.txt -e '.[gpu,storage]'
RUN python -c "import vllm, prefect; assert vllm.__version__ == '${VLLM_VERSION}', vllm.__version__; print('vllm', vllm.__version__, 'prefect', prefect.__version__)"

ENV PERSONA_ICM_ROOT=/opt/persona-icm \
    VLLM_WORKER_MULTIPROC_METHOD=spawn \
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 \
    HF_HOME=/cache/huggingface \
    VLLM_CACHE_ROOT=/cache/vllm
VOLUME ["/cache"]
ENTRYPOINT ["prefect", "worker", "start", "--pool", "gpu", "--limit", "1"]
