"""The store's Alembic migrations: ``env.py`` and one script per revision in ``versions/``.

:mod:`harness.store._migrate` runs them programmatically (no ``alembic.ini``):
``harness db upgrade``, or automatically when opening an older database is safe.
Revision 1 is the schema harness wrote before Alembic (``schema_meta.version``
2; :mod:`.legacy` brings version 1 there); revision 2 separates a trained model
(``runs``) from its evaluations (``evaluations``). Each revision script keeps its
own frozen table definitions: it must go on producing the same tables after
:mod:`harness.store._schema` changes.
"""
