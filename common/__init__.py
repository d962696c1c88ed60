"""Code shared by the API and the worker: settings, persistence, images, models' manifests."""
