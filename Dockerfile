# The RankQ image: one image for the server, the operator and workers.
# A worker image adds the handlers' code on top and runs, for example:
#   rankq worker myapp.tasks:send_email --queue emails --url http://rankq:8080 --metrics-port 9100
# (give the pod terminationGracePeriodSeconds above the worker's --drain-timeout, 30 s by default).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rankq ./rankq
RUN pip install --no-cache-dir '.[all]' && rm -rf /src
RUN useradd --uid 10001 --create-home rankq && mkdir -p /data && chown rankq /data
USER 10001
WORKDIR /data
EXPOSE 8080 9090 7070
ENTRYPOINT ["rankq"]
# Binds 0.0.0.0, so the server refuses to start without an API token (protected mode):
#   docker run -e RANKQ_API_TOKEN="$(openssl rand -hex 32)" rankq
CMD ["server", "--host", "0.0.0.0", "--data-dir", "/data"]
