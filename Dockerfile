FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/var/lib/imagesearch/hf-cache
WORKDIR /app

COPY requirements.txt .
# torch on its own first (see bin/setup). On PyPI torch==2.13.0 is the CUDA build;
# for a smaller CPU-only image use the CPU wheel index instead.
RUN pip install --no-cache-dir "$(grep -E '^torch==' requirements.txt)" \
 && pip install --no-cache-dir -r requirements.txt

COPY . .
RUN IMAGESEARCH_SECRET_KEY=build DATABASE_URL=postgres://build@localhost/build \
    python manage.py collectstatic --no-input -v0

EXPOSE 8000
# uvicorn in front of Django's ASGI handler: slow clients hold a coroutine, not a thread. One
# process (one copy of the CLIP model); put nginx in front in production (README "Production").
CMD ["python", "-m", "imagesearch.webserver", "--host", "0.0.0.0", "--port", "8000"]
# Liveness: the process answers. (Readiness, database + model, is /readyz: see docker-compose.yml.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
