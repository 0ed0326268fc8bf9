# The toolkit's container image: the Job of `openim-migrate job render PLAN` (run, then
# verify) and the CronJobs of `openim-migrate schedule render --kind cronjob` (backup, then
# prune; the restore drill) run it. Build: docker build -t REGISTRY/openim-migrate:0.1.0 .
# A slim Python base, the package and its dependencies only (no test servers), a non-root
# user (uid 10001, which the rendered pods' securityContext expects), the CLI as entry point.

# The full image has a C compiler: python-lzf (Redis archives) ships no wheel. Same Debian
# release as the runtime below, so the compiled module links against the same libc.
FROM python:3.11.11-bookworm AS build
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
# Fail the build, not a 3 a.m. backup, if the entry point or a compiled module cannot load.
RUN openim-migrate --version && python -c "import lzf, anycrc, pyrage, zstandard"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /work
USER 10001:10001
# Prometheus metrics (run/verify --metrics-port 9464)
EXPOSE 9464
ENTRYPOINT ["openim-migrate"]
CMD ["--help"]
