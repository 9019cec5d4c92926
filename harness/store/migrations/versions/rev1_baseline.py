"""Revision 1: the schema harness wrote before Alembic (``schema_meta.version`` 2): one ``runs`` row per run, its results keyed by run.

An existing database of this schema is stamped with this revision, not
created by it; on an empty database it creates the same tables.
"""

from alembic import op
from sqlalchemy import insert

from harness.store.migrations import legacy

revision = "1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    legacy.metadata.create_all(bind)
    bind.execute(insert(legacy.schema_meta).values(id=1, version=legacy.VERSION))


def downgrade() -> None:
    raise NotImplementedError("the store is never downgraded: restore the backup `harness db upgrade` made")
