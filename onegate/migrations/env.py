"""Alembic environment: runs on the connection that core.db.migrate() hands over.

To write a new migration against a scratch SQLite database:
    ONEGATE_DATA_DIR=/tmp/mig .venv/bin/onegate db revision -m "what changed"
"""

from __future__ import annotations

from alembic import context

from onegate.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `onegate init` / core.db.migrate(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things in place
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
