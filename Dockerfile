# GPU worker image: vLLM's official image plus this project, running a Prefect worker of the
# `gpu` pool (one job at a time; give the container tensor_parallel_size GPUs).
#   docker build -t persona-icm-gpu .
# Not built in this project's CI: its machines have no Docker engine and no GPU.
ARG VLLM_VERSION=0.32.0
FROM vllm/vllm-openai:v${VLLM_VERSION}

WORKDIR /opt/persona-icm
COPY pyproject.toml README.md prefect.yaml ./
COPY persona_icm ./persona_icm
COPY tasks ./tasks
COPY flows ./flows
COPY warehouse ./warehouse
# vLLM (and the torch it was built with) come from the base image; pip keeps them.
RUN pip install --no-cache-dir -e '.[gpu]'

ENV PERSONA_ICM_ROOT=/opt/persona-icm \
    VLLM_WORKER_MULTIPROC_METHOD=spawn \
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30
ENTRYPOINT ["prefect", "worker", "start", "--pool", "gpu", "--limit", "1"]
