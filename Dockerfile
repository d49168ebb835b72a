# syntax=docker/dockerfile:1
# Multi-stage build: compile the Cython kernels into wheels in a builder stage,
# then install only the wheels into a slim runtime image run by a non-root user.

FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY native/ native/
COPY engine/ engine/
COPY server/ server/
RUN pip install --no-cache-dir --upgrade pip wheel \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm AS runtime
# espeak-ng is the embedded offline text-to-speech voice.
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --uid 10001 voxgate
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER voxgate
WORKDIR /home/voxgate
EXPOSE 8080
ENTRYPOINT ["voxgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
