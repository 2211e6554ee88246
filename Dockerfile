# Container image for `smtpctl operator` (and the CLI).  Not built in CI here (no daemon);
# build with: docker build -t ghcr.io/smtpctl/smtpctl:0.1.0 .
# Two stages: build a wheel set with pinned versions, then a slim non-root runtime with
# no compiler, no pip cache and a read-only-friendly layout (only /tmp is written).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY reconciler ./reconciler
COPY schemas ./schemas
RUN python -m pip wheel --no-cache-dir -c constraints.txt --wheel-dir /wheels ".[operator]"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
RUN python -m pip install --no-index --find-links=/wheels "smtpctl[operator]" \
    && rm -rf /wheels \
    && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin smtpctl
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["smtpctl"]
CMD ["operator", "--all-namespaces"]
