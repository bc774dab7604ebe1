# Hagukumi PHR: one image for every process in the Procfile (web, worker,
# beat and the release step). docker-compose.yml picks the process with
# `command:`; run alone, the image serves the web process on $PORT.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

RUN groupadd --system hagukumi \
    && useradd --system --gid hagukumi --home-dir /app --no-create-home hagukumi

# Dependencies first, so that a code change reuses this layer.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .

# collectstatic reads settings, which insist on production values when DEBUG
# is off; these placeholders exist only for this build step (no database is
# contacted) and are not in the image's environment.
RUN DEBUG=0 \
    SECRET_KEY=collectstatic-build-step-placeholder-NOT-A-SECRET-0123456789 \
    DATABASE_URL=postgres://build@127.0.0.1:5432/build \
    ALLOWED_HOSTS=build.invalid \
    python manage.py collectstatic --noinput \
    && mkdir -p /app/media \
    && chown hagukumi:hagukumi /app/media

ENV MEDIA_ROOT=/app/media \
    PORT=8000
USER hagukumi
EXPOSE 8000

CMD ["sh", "-c", "exec gunicorn config.wsgi:application --bind 0.0.0.0:${PORT:-8000} --workers 3"]
