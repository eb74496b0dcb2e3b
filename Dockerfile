# NOT YET WORKING: placeholder until the Docker issue lands (non-root user, venv, CPU torch by
# default, demo built at image build time, HEALTHCHECK). Do not rely on this image yet.
FROM python:3.11-slim
RUN echo "Coherence Explorer's Docker image is not implemented yet; use 'make run'." && exit 1
