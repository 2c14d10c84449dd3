# syntax=docker/dockerfile:1
# shardsearch, CPU image: `docker build -t shardsearch:0.1.0 .`
# One image for both servers: `shardsearch coordinator ...` and `shardsearch shard ...` (k8s/ passes the
# subcommand as the container's first argument). Everything is installed at build time; nothing is fetched at
# run time. The generated gRPC stubs are checked in (shardsearch/v1), so no protoc step is needed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
# shardsearch/coordinator, shard_server and encoder_client are links to these folders: the wheel holds them in shardsearch
COPY shardsearch ./shardsearch
COPY coordinator ./coordinator
COPY shard_server ./shard_server
COPY encoder_client ./encoder_client
# Wheels for the package and every dependency (faiss-cpu bundles its OpenMP and BLAS libraries).
RUN pip wheel --wheel-dir /wheels '.[cpu]'

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels 'shardsearch[cpu]' \
    && groupadd --system --gid 10001 shardsearch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin shardsearch
# Numeric, so Kubernetes' runAsNonRoot can check it without resolving the name.
USER 10001:10001
WORKDIR /tmp
# coordinator gRPC / metrics, shard gRPC / metrics
EXPOSE 50051 9100 50061 9101
ENTRYPOINT ["shardsearch"]
CMD ["--help"]
