# Image for every process of a distributed review (docker-compose.yml): the
# orchestrator, reviewer and synth workers, and the RQ dashboard.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY moneta ./moneta
COPY orchestrator ./orchestrator
COPY workers ./workers
COPY synth ./synth
RUN pip install '.[dashboard]'

# Jobs run as an unprivileged user; the reviewed repository is mounted read-only at
# /repo and the outputs volume at /outputs.
RUN useradd --create-home --uid 10001 review && mkdir -p /outputs && chown review /outputs
USER review
WORKDIR /repo
CMD ["moneta-review", "--help"]
