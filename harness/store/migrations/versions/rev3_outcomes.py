"""Revision 3: per-sample certifier outcomes, costs, multi-stage attacks and the gradient-masking check.

``sample_certificates`` gains ``outcome`` (certified, not-certified, timeout or
error; ``certified`` is true exactly when it is "certified"), derived here from
``certified`` for every stored certificate. ``sample_attacks`` gains
``broken_by`` (the stage of a multi-stage attack that broke the sample).
``attack_results`` and ``certifier_results`` gain their cost
(``samples_per_second``, ``peak_memory_bytes``, ``memory_kind``);
``attack_results`` its ``stages`` and ``gradient_free``; ``certifier_results``
its ``timeouts``, ``errors``, ``sample_error``, ``radius_method``,
``radius_tolerance`` and ``sound``. ``results`` gains the gradient-masking
check (``zero_gradient_fraction``, ``gradient_free_breaks``, ``unreliable``).

Every stored evaluation predates all of these: its new values are NULL,
except the ones with a meaning for it (no time-outs or errors, sound
certifiers, attacks that use gradients, outcomes from the verdicts).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "3"
down_revision = "2"
branch_labels = None
depends_on = None

#: As harness.results.OUTCOMES and RADIUS_METHODS were at revision 3 (a migration never imports the live code's values).
OUTCOMES = ("certified", "not-certified", "timeout", "error")
RADIUS_METHODS = ("closed-form", "bisection")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _cost() -> list[sa.Column[object]]:
    return [
        sa.Column("samples_per_second", sa.Double()),
        sa.Column("peak_memory_bytes", sa.BigInteger()),
        sa.Column("memory_kind", sa.String(32)),
    ]


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("zero_gradient_fraction", sa.Double()))
        batch.add_column(sa.Column("gradient_free_breaks", sa.Integer()))
        batch.add_column(sa.Column("unreliable", sa.Boolean()))
    with op.batch_alter_table("attack_results") as batch:
        for column in _cost():
            batch.add_column(column)
        batch.add_column(sa.Column("stages", sa.JSON()))
        batch.add_column(sa.Column("gradient_free", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("certifier_results") as batch:
        for column in _cost():
            batch.add_column(column)
        batch.add_column(sa.Column("timeouts", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("errors", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("sample_error", sa.Text()))
        batch.add_column(sa.Column("radius_method", sa.String(16)))
        batch.add_column(sa.Column("radius_tolerance", sa.Double()))
        batch.add_column(sa.Column("sound", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.create_check_constraint("ck_certifier_results_radius_method", _one_of("radius_method", RADIUS_METHODS))
    with op.batch_alter_table("sample_attacks") as batch:
        batch.add_column(sa.Column("broken_by", sa.String(100)))
    # The outcome is added empty, filled from the verdict, then required (SQLite rebuilds the table for that).
    with op.batch_alter_table("sample_certificates") as batch:
        batch.add_column(sa.Column("outcome", sa.String(16)))
    op.execute("UPDATE sample_certificates SET outcome = CASE WHEN certified THEN 'certified' ELSE 'not-certified' END")
    with op.batch_alter_table("sample_certificates") as batch:
        batch.alter_column("outcome", existing_type=sa.String(16), nullable=False)
        batch.create_check_constraint("ck_sample_certificates_outcome", _one_of("outcome", OUTCOMES))
        batch.create_check_constraint("ck_sample_certificates_certified", "certified = (outcome = 'certified')")


def downgrade() -> None:
    raise NotImplementedError("the store is never downgraded: restore the backup `harness db upgrade` made")
