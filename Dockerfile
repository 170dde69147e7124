# The example app and the worker command in one image; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY affinity_queue ./affinity_queue
RUN pip install ".[standard,dashboard,metrics]"
COPY example_app ./example_app

# Not root at run time.
RUN useradd --create-home --uid 10001 app
USER app

EXPOSE 8000
# Exec form: the Python process is PID 1 and receives SIGTERM itself (uvicorn and the worker
# command both install handlers, so PID 1's ignore-by-default does not apply).
CMD ["uvicorn", "example_app.main:app", "--host", "0.0.0.0", "--port", "8000"]
