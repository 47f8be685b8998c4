# syntax=docker/dockerfile:1
# The caching front's image (deployment.yaml, containers front and
# front-metrics): Debian's Varnish and its Prometheus exporter, the very
# packages tests/run installs, so the tests run what the pod runs. The VCL is
# mounted from a ConfigMap, never baked in. Varnish compiles it with gcc at
# start-up, into its working directory (an emptyDir).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends varnish=7.1.* prometheus-varnish-exporter=1.6.* \
 && rm -rf /var/lib/apt/lists/*
# Any non-root user: the pod's securityContext runs it as 10001, like the service.
USER 10001:10001
EXPOSE 8080 9131
ENTRYPOINT ["varnishd"]
