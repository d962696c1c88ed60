"""Webhook delivery workers: POSTing signed events, no model loaded.

``retinaq worker --serve webhooks`` runs ``celery -A worker.webhooks.app`` on the webhooks
queue with a thread pool: deliveries wait on receivers, not on a processor, and a worker
that only delivers needs neither TensorFlow nor the grading runtime.
"""
