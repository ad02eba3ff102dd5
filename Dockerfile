# One image for the web app, the Celery worker, beat and Flower (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY entity_vectors ./entity_vectors
COPY app ./app
COPY celeryconfig.py flowerconfig.py manage.py ./
# The server stack talks to a ClickHouse server: the embedded engine (chdb) is not installed.
# The offline semantic embedder (wordllama) is: a stack without OPENAI_API_KEY embeds by meaning,
# not with the hashing embedder's shared fragments.
# The admin's static files are collected into the image and served by whitenoise.
RUN pip install ".[server,beat-db,semantic]" && mkdir -p var \
    && DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && useradd --create-home app && chown -R app /srv
USER app

EXPOSE 8000
CMD ["gunicorn", "app.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2"]
