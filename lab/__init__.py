"""Offline modelling and tooling, never imported by the API or the serving worker."""
