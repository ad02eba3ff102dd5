# One image for the web app, the Celery worker, beat and Flower (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY entity_vectors ./entity_vectors
COPY app ./app
COPY celeryconfig.py manage.py ./
# The server stack talks to a ClickHouse server: the embedded engine (chdb) is not installed.
RUN pip install . gunicorn && mkdir -p var && useradd --create-home app && chown -R app /srv
USER app

EXPOSE 8000
CMD ["gunicorn", "app.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2"]
