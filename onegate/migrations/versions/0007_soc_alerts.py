"""soc: alerts, their evidence and their history

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_STATUSES = "status IN ('open', 'acknowledged', 'closed')"
_CLOSE_REASONS = (
    "close_reason IN ('duplicate', 'false_positive', 'true_positive', 'benign_positive', 'other')"
)
_ACTIONS = (
    "action IN ('created', 'signal', 'acknowledged', 'closed', 'reopened', 'assigned', 'unassigned', "
    "'commented')"
)


def upgrade() -> None:
    op.create_table(
        "soc_alerts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("rule_name_en", sa.String(length=300), nullable=False),
        sa.Column("rule_name_zh", sa.String(length=300), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("risk_score", sa.Integer(), nullable=False),
        sa.Column("technique", sa.String(length=32), nullable=False),
        sa.Column("tactic", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("close_reason", sa.String(length=32), nullable=True),
        sa.Column("assignee", sa.String(length=200), nullable=True),
        sa.Column("suppression_hash", sa.String(length=32), nullable=False),
        sa.Column("entity", sa.JSON(), nullable=False),
        sa.Column("reason_en", sa.Text(), nullable=False),
        sa.Column("reason_zh", sa.Text(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("signal_count", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.String(length=64), nullable=True),
        sa.Column("drill_id", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(_STATUSES, name=op.f("ck_soc_alerts_status")),
        sa.CheckConstraint(_CLOSE_REASONS, name=op.f("ck_soc_alerts_close_reason")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_soc_alerts")),
    )
    op.create_index("ix_soc_alerts_status_created_at", "soc_alerts", ["status", "created_at"], unique=False)
    op.create_index(
        "ix_soc_alerts_suppression_hash_first_seen",
        "soc_alerts",
        ["suppression_hash", "first_seen"],
        unique=False,
    )
    op.create_index(op.f("ix_soc_alerts_rule_id"), "soc_alerts", ["rule_id"], unique=False)
    op.create_index(op.f("ix_soc_alerts_assignee"), "soc_alerts", ["assignee"], unique=False)
    op.create_index(op.f("ix_soc_alerts_incident_id"), "soc_alerts", ["incident_id"], unique=False)
    op.create_table(
        "soc_alert_events",
        sa.Column("alert_id", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["soc_alerts.id"],
            name=op.f("fk_soc_alert_events_alert_id_soc_alerts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("alert_id", "event_id", name=op.f("pk_soc_alert_events")),
    )
    op.create_index(op.f("ix_soc_alert_events_event_id"), "soc_alert_events", ["event_id"], unique=False)
    op.create_table(
        "soc_alert_history",
        sa.Column("alert_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=True),
        sa.Column("close_reason", sa.String(length=32), nullable=True),
        sa.Column("assignee", sa.String(length=200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(_ACTIONS, name=op.f("ck_soc_alert_history_action")),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["soc_alerts.id"],
            name=op.f("fk_soc_alert_history_alert_id_soc_alerts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("alert_id", "seq", name=op.f("pk_soc_alert_history")),
    )


def downgrade() -> None:
    op.drop_table("soc_alert_history")
    op.drop_index(op.f("ix_soc_alert_events_event_id"), table_name="soc_alert_events")
    op.drop_table("soc_alert_events")
    op.drop_index(op.f("ix_soc_alerts_incident_id"), table_name="soc_alerts")
    op.drop_index(op.f("ix_soc_alerts_assignee"), table_name="soc_alerts")
    op.drop_index(op.f("ix_soc_alerts_rule_id"), table_name="soc_alerts")
    op.drop_index("ix_soc_alerts_suppression_hash_first_seen", table_name="soc_alerts")
    op.drop_index("ix_soc_alerts_status_created_at", table_name="soc_alerts")
    op.drop_table("soc_alerts")
