"""The OpenAPI description of ``/v1``: request and response models (``schemas``), the
document built from the views' decorators (``spec``), and the pages serving it (``pages``)."""
