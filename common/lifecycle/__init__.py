"""Where an image's life is decided, outside the grading itself.

An image is ``queued`` when the API commits it and sends a task (:mod:`common.queue`:
late acknowledgement, publish retries); a task stands for an amount of work, and the
images it takes are chosen from the programmes in turn (:mod:`common.lifecycle.turns`),
so no programme's backlog holds another's batch back. A worker *claims* it (``processing``, a lease
deadline and an attempt number: :mod:`common.lifecycle.claims`); the attempt number fences
the final write, so a superseded delivery cannot record a second result. A claim whose
attempts are spent is ``failed`` (:func:`common.lifecycle.claims.fail_exhausted`); a batch
moves forward from its images' states (:mod:`common.lifecycle.progress`). Work the broker
lost (a wiped Redis, a killed worker's lease) is re-sent from the database by
:mod:`common.lifecycle.reconcile`, and batches are cancelled or purged with their bytes by
:mod:`common.lifecycle.retention`. The timing knobs are settings: ``lease_s``,
``max_attempts``, ``requeue_after_s`` and the broker's visibility timeout.
"""
