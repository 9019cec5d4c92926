"""Alembic's environment for the store: it runs the migrations on the connection :mod:`harness.store._migrate` passes.

That connection is already in the transaction the whole upgrade happens in
(with SQLite's foreign keys off, checked before it commits), so nothing here
begins or commits.
"""

from alembic import context

from harness.store._schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the store's migrations run through `harness db upgrade` (harness.store._migrate), with an open connection")
context.configure(connection=connection, target_metadata=metadata, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
