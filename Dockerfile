# The toolkit's container image: `openim-migrate job render PLAN` runs it as a Kubernetes
# Job (run, then verify). Build: docker build -t REGISTRY/openim-migrate:0.1.0 .
# A slim Python base, the package and its dependencies only, a non-root user (uid 10001,
# which the rendered Job's securityContext expects), and the CLI as the entry point.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrator ./migrator
RUN pip install --no-cache-dir --disable-pip-version-check --prefix=/install .

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="openim-migrate" \
      org.opencontainers.image.description="Move an OpenIM installation's data into Kubernetes and prove nothing was lost" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /work \
        --shell /usr/sbin/nologin migrate
COPY --from=build /install /usr/local
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /work
USER 10001:10001
# Prometheus metrics (run/verify --metrics-port 9464)
EXPOSE 9464
ENTRYPOINT ["openim-migrate"]
CMD ["--help"]
