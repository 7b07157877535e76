# One image for the API, the workers and the reaper. CUDA comes from the base image's
# PyTorch; pick the tag that matches the cluster's driver.
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE}

WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md alembic.ini ./
COPY eos_core eos_core
COPY store store
COPY worker worker
COPY api api
COPY eos_cli eos_cli
COPY eos_client eos_client
COPY migrations migrations
COPY examples examples
# torch is already in the base image; `pip install .` keeps it (the requirement is torch>=2.3).
RUN pip install -e .

EXPOSE 8000
CMD ["eos", "serve", "--host", "0.0.0.0", "--port", "8000"]
