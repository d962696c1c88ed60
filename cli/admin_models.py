"""``retinaq admin models``: which registry model the grading workers serve.

The choice is a row in the database (:mod:`common.modelling.activation`), so every worker,
on every host, switches before its next task without a restart or a new setting.
"""

from __future__ import annotations

import click

from cli.admin import admin_session
from common.modelling.activation import activate_model, active_model, pinned_model_file
from common.modelling.manifest import ManifestError
from common.modelling.registry import available_models
from common.settings import get_settings


@click.group("models")
def models() -> None:
    """List the registry's models and choose the one workers serve."""


@models.command("list")
def list_models() -> None:
    """The registry's models (RETINAQ_MODELS_DIR); ``*`` marks the active one."""
    settings = get_settings()
    with admin_session() as session:
        active = active_model(session)
    registered = available_models(settings.models_dir)
    if not registered:
        raise click.ClickException(f"no servable model in {settings.models_dir}")
    for model in registered:
        mark = "*" if active is not None and active.name == model.name else " "
        manifest = model.manifest
        click.echo(f"{mark} {model.name}  {manifest.version}  sha256 {manifest.sha256[:12]}")
    if active is None:
        click.echo(f"no model activated: workers serve RETINAQ_MODEL_NAME ({settings.model_name})")


@models.command("activate")
@click.argument("name")
def activate(name: str) -> None:
    """Make registry model NAME the one grading workers serve, from their next task on.

    The model's manifest is read and its file hashed against it before anything is stored.
    Exit status 0 when NAME is active (also when it already was); 1 when NAME is not in the
    registry, its manifest does not read, its file does not match its manifest, or the
    database cannot be reached.
    """
    settings = get_settings()
    try:
        with admin_session() as session:
            previous, current = activate_model(session, settings.models_dir, name)
    except ManifestError as error:
        raise click.ClickException(f"not activated: {error}") from error
    if previous is not None and (previous.name, previous.sha256) == (current.name, current.sha256):
        click.echo(f"{current.name} {current.version} was already active")
        return
    was = "the settings' model" if previous is None else f"{previous.name} {previous.version}"
    click.echo(
        f"activated {current.name} {current.version} (sha256 {current.sha256[:12]}), "
        f"instead of {was}"
    )
    click.echo(
        "grading workers load it before their next task; queued images are graded by "
        "whichever model their worker serves when it claims them, and each result names it"
    )
    if pinned_model_file(settings) is not None:
        click.echo(
            "note: RETINAQ_MODEL_PATH is set here; workers started with it stay on that file",
            err=True,
        )
