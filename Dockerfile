# syntax=docker/dockerfile:1
# The loyalty-stream worker image: `loyalty init` and `loyalty worker` (see docker-compose.yml).
# Every dependency ships a manylinux wheel for CPython 3.11 (rocksdict needs glibc >= 2.28), so the
# slim image needs no compiler and a single stage is enough.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOYALTY_DATA_DIR=/data

# /data is created here, owned by the runtime user, so that a named volume mounted on it starts
# with that ownership (Docker copies it from the image) and the non-root worker can write to it.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/loyalty loyalty \
    && mkdir -p /data \
    && chown loyalty:loyalty /data

WORKDIR /app

# README.md is the package's long description (pyproject.toml), so the build needs it.
COPY pyproject.toml README.md ./
COPY domain ./domain
COPY config ./config
COPY schemas ./schemas
COPY sinks ./sinks
COPY streams ./streams
COPY ops ./ops
RUN pip install --no-cache-dir . \
    && rm -rf /app/domain /app/config /app/schemas /app/sinks /app/streams /app/ops /app/build

USER loyalty
EXPOSE 6066

CMD ["loyalty", "worker"]
