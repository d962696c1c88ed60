"""One frozen settings object, read once from ``RETINAQ_*`` environment variables.

The defaults form the *embedded profile* (a SQLite file and a file-backed broker under
``./var``) so the system runs with nothing installed; pointing ``RETINAQ_DATABASE_URL`` at
PostgreSQL and ``RETINAQ_BROKER_URL`` at Redis gives the production profile, same code.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.webhooks.addresses import parse_networks

# The registry shipped as package data (in a checkout, a link to ``models/``), so an installed
# copy finds its model wherever it was installed and whatever the working directory.
BUNDLED_MODELS_DIR = Path(str(resources.files("common.modelling") / "bundled"))
BUNDLED_MODEL_NAME = "retinaq-small"
BUNDLED_MODEL = BUNDLED_MODELS_DIR / BUNDLED_MODEL_NAME / "model.keras"


class Settings(BaseSettings):
    """Everything configurable about a RetinaQ process."""

    model_config = SettingsConfigDict(env_prefix="RETINAQ_", frozen=True, extra="ignore")

    var_dir: Path = Field(default=Path("var"), description="Root of the embedded profile's files.")
    database_url: str = Field(default="", description="SQLAlchemy URL; default a SQLite file.")
    broker_url: str = Field(default="", description="Celery broker URL; default a folder broker.")
    storage_url: str = Field(
        default="",
        description="Where image and heat-map bytes live: file:///absolute/folder, or "
        "s3://bucket/prefix with endpoint, region and credentials from the AWS chain "
        "(AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). "
        "Default the folder storage_dir.",
    )
    storage_dir: Path | None = Field(
        default=None,
        description="The file store's folder when storage_url is unset (a URL wins); default "
        "var_dir/images.",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Local folder for uploads on their way to an S3 store; default "
        "var_dir/spool. A file store spools inside its own folder.",
    )
    models_dir: Path = Field(
        default=BUNDLED_MODELS_DIR,
        description="The model registry: <name>/model.keras + manifest; default the bundled one.",
    )
    model_name: str = Field(
        default=BUNDLED_MODEL_NAME, description="The registry model that workers serve."
    )
    model_path: Path | None = Field(
        default=None, description="A model file outside the registry; overrides model_name."
    )

    queue_name: str = "retinaq.grading"
    heatmap_queue_name: str = Field(
        default="retinaq.explain",
        description="Heat-map tasks: a queue of their own, so grading never waits for them.",
        # The variable's first name is still read, so existing deployments keep their queue.
        validation_alias=AliasChoices(
            "RETINAQ_HEATMAP_QUEUE_NAME", "RETINAQ_EXPLAIN_QUEUE_NAME", "heatmap_queue_name"
        ),
    )
    quality_check: bool = Field(
        default=True, description="Refuse blurred, badly exposed and non-fundus images."
    )
    quality_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Overrides of the quality check's thresholds (JSON), over the manifest's.",
    )
    heatmaps: bool = Field(default=True, description="Grad-CAM for referable/borderline results.")
    borderline_margin: float = Field(
        default=0.15,
        ge=0.0,
        le=1.0,
        description="A result is borderline within this of the referable threshold.",
    )
    grading_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Images per model call (fixed shape, padded)."
    )
    task_size: int = Field(
        default=128, ge=1, le=4096, description="Images per grading task, sent per upload."
    )
    batch_wait_ms: int = Field(
        default=200,
        ge=0,
        le=5000,
        description="How long a task smaller than a model batch looks for queued company.",
    )
    decode_threads: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1, le=64)
    xla: bool = Field(default=False, description="Compile inference with XLA.")
    mixed_precision: bool = Field(default=False, description="float16 compute on GPUs.")
    expect_gpu: bool = Field(
        default=False,
        description="A worker that finds no GPU says so at WARNING, not INFO (true in the "
        "worker image).",
    )
    lease_s: int = Field(
        default=45,
        ge=1,
        description="A processing claim's lifetime; the worker renews it every third of this "
        "while its task runs, so only a dead worker's claims run out.",
    )
    visibility_timeout_s: int = Field(
        default=1800,
        ge=1,
        description="Redis redelivers a task left unacknowledged this long: longer than any "
        "task, since a running task would be delivered twice (harmless, fenced, but waste). "
        "A killed worker's images come back sooner, through their leases and the reconciler.",
    )
    requeue_after_s: int = Field(default=600, ge=1, description="Re-send queued work after.")
    max_attempts: int = Field(default=5, ge=1)
    reconcile_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between reconciler passes; an expired lease waits at most this.",
    )
    shutdown_timeout_s: float = Field(default=60.0, ge=0)
    db_retry_s: float = Field(default=120.0, ge=0, description="Worker rides out DB outages.")
    task_reports_path: Path | None = Field(
        default=None,
        description="A file to which each grading task appends one JSON line (its counts "
        "and stage timings), for measurement such as retinaq bench; unset, none is written.",
    )

    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    idempotency_abandoned_after_s: int = Field(
        default=900,
        ge=1,
        description="A key reserved by a request still unfinished after this is taken to "
        "have died with its process and is released; longer than any upload.",
    )
    default_max_pending_images: int = Field(default=2_000_000, ge=1)
    default_max_images_per_minute: int = Field(default=200_000, ge=1)

    max_request_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_files_per_request: int = Field(default=1000, ge=1)
    max_metadata_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Larger images fail as too_many_pixels before decoding; twice the "
        "largest fundus cameras (20-24 megapixels).",
    )
    decode_pixel_budget: int = Field(
        default=0,
        ge=0,
        description="Full-resolution pixels a worker may hold decoded at once across its "
        "decoder threads (about 4 bytes each); a thread waits its turn, in arrival order. "
        "0 means twice max_image_pixels (100 megapixels by default); never below it.",
    )
    max_json_bytes: int = Field(
        default=64 * 1024, ge=256, description="Largest JSON request body the API reads."
    )
    public_url: str = Field(
        default="",
        description="The API's public base URL (https://host[:port]); links use it and "
        "requests naming another host are refused. Empty: links follow the request's host.",
    )
    proxy_hops: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Reverse proxies in front of the API whose X-Forwarded-* headers to trust.",
    )
    api_reserved_threads: int = Field(
        default=2,
        ge=0,
        description="Threads of each API process never given to a request body (uploads), so "
        "health probes and status polls always find one; bodies get the rest, at least one.",
    )
    api_key_upload_share: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Share of a process's body slots one API key may hold at once (at least "
        "one); over it, or over all of them, a request is answered 503 server_busy.",
    )
    api_metrics: bool = Field(
        default=True,
        description="Serve GET /metrics (Prometheus) on the API, to requests that did not come "
        "through the proxy (no X-Forwarded-For); false answers 404.",
    )
    api_metrics_dir: Path | None = Field(
        default=None,
        description="The folder where retinaq api's gunicorn processes keep their metrics "
        "(PROMETHEUS_MULTIPROC_DIR), emptied at each start; default "
        "<temp dir>/retinaq-api-metrics-<port>. One per server.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="A worker serves its Prometheus metrics, and a liveness answer a busy "
        "solo worker still gives, on this port; 0 turns it off.",
    )
    metrics_host: str = Field(
        default="0.0.0.0", description="The address a worker's metrics server listens on."
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Seals pagination cursors; every API process needs the same one. The "
        "embedded profile keeps a generated one under var_dir.",
    )
    sweep_grace_s: int = Field(
        default=3600,
        ge=60,
        description="Stored bytes that no row names are removed once older than this.",
    )
    page_size_default: int = Field(default=100, ge=1)
    page_size_max: int = Field(default=1000, ge=1)
    status_retry_after_s: int = Field(default=5, ge=1)

    webhook_queue_name: str = Field(
        default="retinaq.webhooks",
        description="Webhook deliveries: a queue of their own, served by retinaq worker "
        "--serve webhooks, so a slow receiver never holds grading back.",
    )
    webhook_allowed_networks: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Networks (CIDR, comma-separated) a callback may reach although they are "
        "internal (loopback, private, link-local...): a receiver on the operator's network.",
    )
    webhook_allow_http: bool = Field(
        default=False, description="Accept http:// callback URLs, not only https://."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=50, description="Attempts of one event before it is given up."
    )
    webhook_max_age_s: int = Field(
        default=24 * 3600, ge=60, description="An event undelivered this long is given up."
    )
    webhook_backoff_s: float = Field(
        default=10.0,
        gt=0,
        description="The wait after a failed attempt doubles from this (with jitter).",
    )
    webhook_backoff_max_s: float = Field(
        default=3600.0, gt=0, description="The longest wait between two attempts."
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=60, description="The whole of one attempt: connect, send, read."
    )
    webhook_resend_after_s: int = Field(
        default=120,
        ge=1,
        description="The reconciler re-sends a due event whose task was sent this long ago "
        "and never ran (a lost broker message).",
    )
    webhook_concurrency: int = Field(
        default=8, ge=1, le=256, description="Deliveries a webhooks worker makes at once."
    )

    log_level: str = "INFO"
    log_format: Literal["json", "text", ""] = Field(
        default="",
        description="json: one JSON object a line, for a log pipeline; text: lines for a "
        "person. Default json, except text in the embedded profile (make demo).",
    )

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        """A comma-separated list, each a network in CIDR form (checked here, at start)."""
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return tuple(str(network) for network in parse_networks([str(v) for v in value]))
        return value

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        """Derive the embedded profile's locations from ``var_dir`` when not set explicitly."""
        var = self.var_dir.resolve()
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{var / 'retinaq.sqlite3'}")
        if not self.broker_url:
            object.__setattr__(self, "broker_url", f"filesystem://{var / 'broker'}")
        self._resolve_storage(var)
        if not self.log_format:
            object.__setattr__(self, "log_format", "text" if self.is_embedded else "json")
        if self.model_path is None:
            path = self.models_dir / self.model_name / "model.keras"
            object.__setattr__(self, "model_path", path)
        return self

    @property
    def model_file(self) -> Path:
        """The Keras file workers load (always set after validation)."""
        assert self.model_path is not None
        return self.model_path

    def _resolve_storage(self, var: Path) -> None:
        """One storage URL, whichever variable named the store; refuse anything else early.

        A URL wins over ``storage_dir``, which images set by default (/data/images), so a
        deployment moves to S3 by setting the URL alone."""
        if not self.storage_url:
            folder = self.storage_dir if self.storage_dir is not None else var / "images"
            object.__setattr__(self, "storage_url", folder.resolve().as_uri())
        parts = urlsplit(self.storage_url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise ValueError("RETINAQ_STORAGE_URL: write a folder as file:///absolute/path")
            object.__setattr__(self, "storage_dir", Path(unquote(parts.path)))
        elif parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError("RETINAQ_STORAGE_URL: write s3://bucket/prefix")
            object.__setattr__(self, "storage_dir", None)
        else:
            raise ValueError("RETINAQ_STORAGE_URL must be file:///folder or s3://bucket/prefix")
        if self.spool_dir is None:
            object.__setattr__(self, "spool_dir", var / "spool")

    @property
    def image_store(self) -> Path:
        """The file store's folder; there is none when the store is S3."""
        if self.storage_dir is None:
            raise ValueError(f"the store {self.storage_url} is not a folder")
        return self.storage_dir

    @property
    def upload_spool_dir(self) -> Path:
        """Where an S3 store spools uploads (always set after validation)."""
        assert self.spool_dir is not None
        return self.spool_dir

    @property
    def is_embedded(self) -> bool:
        """True when running on SQLite and the folder broker (the demo's profile)."""
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
