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
CMD ["gunicorn", "imagesearch.wsgi", "--bind", "0.0.0.0:8000", "--workers", "1", "--threads", "8", "--timeout", "120"]
