"""Framework adapters for authlib's protocol core (only Starlette: see ``starlette``)."""
