# Two images from one file:
#   api:    the REST API and migrations, no torch (small)
#   worker: the same code plus torch (CUDA build) for GPU hosts
FROM python:3.11-slim AS api
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
COPY reproductions ./reproductions
RUN pip install --no-cache-dir .
ENV GROKLAB_DATA_DIR=/data GROKLAB_REPRODUCTIONS_DIR=/app/reproductions
EXPOSE 8000
CMD ["groklab", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM api AS worker
# torch, and devinterp for the LLC analysis (the llc extra; not TransformerLens, which only a
# notebook loading an export needs)
RUN pip install --no-cache-dir ".[worker]" ".[llc]"
CMD ["groklab", "worker", "--queues", "gpu,cpu"]
