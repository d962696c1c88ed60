"""Request hooks: who is calling (API keys), on which origin, under which request id,
with which idempotency key, and how large a JSON body may be."""
