# syntax=docker/dockerfile:1
# The handoff image: one stage process per container (`handoff run --workflow W --stage S`).
#   docker build -t handoff:0.1.0 .
# Slim and pinned (the base by its full version tag; pin a digest with `FROM ...@sha256:...` in
# your registry mirror), dependencies pinned by pyproject.toml, a non-root user, and the embedded
# models trained at build time into that user's cache, so a pod never trains on start. Your own
# project: build FROM this image, COPY your workflows/, schemas/ and topics/ to /app and run
# `handoff deploy models` again as the last step. Stateful stages keep their stores under
# /var/lib/handoff/state: mount a volume there (the Kubernetes manifests and the compose file do).
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY processors processors
RUN python -m venv /opt/handoff && /opt/handoff/bin/pip install --quiet .

FROM python:3.11.14-slim-bookworm
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin handoff \
    && install -d -o 10001 -g 10001 /var/lib/handoff/state
COPY --from=build /opt/handoff /opt/handoff
COPY workflows /app/workflows
COPY schemas /app/schemas
COPY topics /app/topics
ENV PATH=/opt/handoff/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HANDOFF_PROJECT=/app \
    HANDOFF_LOG_FORMAT=json \
    HANDOFF_METRICS_ADDR=0.0.0.0 \
    HANDOFF_METRICS_PORT=9464 \
    HANDOFF_STATE_DIR=/var/lib/handoff/state
USER 10001:10001
WORKDIR /home/handoff
RUN handoff deploy models
EXPOSE 9464
ENTRYPOINT ["handoff"]
CMD ["--help"]
