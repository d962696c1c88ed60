# One image for the API, the worker and the one-shot migration; the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 retinaq
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY common ./common
COPY cli ./cli
COPY lab ./lab
COPY migrations ./migrations
# common/modelling/bundled and cli/samples link to models/ and samples/; the wheel carries
# their files (and migrations/) into site-packages, with TensorFlow for the worker roles.
COPY models ./models
COPY samples ./samples
RUN pip install '.[worker]' && mkdir -p /data/images && chown -R retinaq /data

USER retinaq
ENV RETINAQ_STORAGE_DIR=/data/images \
    RETINAQ_VAR_DIR=/data
EXPOSE 8000
CMD ["retinaq", "--help"]
