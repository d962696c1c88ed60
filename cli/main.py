"""``retinaq``: the one entry point for people — servers, admin, client, models, demo."""

from __future__ import annotations

import logging

import click

from cli.admin import admin
from cli.admin_models import models
from cli.bench import bench
from cli.bench.poll_cost import bench_poll
from cli.demo import demo
from cli.doctor import doctor
from cli.modelling import evaluate, synth, train
from cli.quality import quality_eval
from cli.servers import api, db, reconcile, worker
from cli.submitting import export, results, status, submit
from common.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retinaq")
def cli() -> None:
    """RetinaQ: a distributed screening queue for diabetic-retinopathy fundus photographs."""
    # Text for a person at the console (the servers switch to RETINAQ_LOG_FORMAT themselves);
    # a host that set up logging already, such as a test runner, keeps its own.
    if not logging.getLogger().handlers:
        configure_logging("text", logging.WARNING)


admin.add_command(models)
for command in (
    demo,
    submit,
    status,
    results,
    export,
    admin,
    doctor,
    db,
    api,
    worker,
    reconcile,
    synth,
    train,
    evaluate,
    bench,
    bench_poll,
    quality_eval,
):
    cli.add_command(command)
