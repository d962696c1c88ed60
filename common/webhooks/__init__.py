"""Webhooks: what a programme is told when its work settles, signed and delivered safely.

:mod:`~common.webhooks.signing` signs per the Standard Webhooks specification,
:mod:`~common.webhooks.addresses` keeps callbacks off internal networks (SSRF),
:mod:`~common.webhooks.events` records the events when a batch settles, and
:mod:`~common.webhooks.deliveries` holds each delivery's life: claim, attempt log, backoff and
the reconciler's re-send. The HTTP sending itself is the worker's (:mod:`worker.webhooks`).
"""
