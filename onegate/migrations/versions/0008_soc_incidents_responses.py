"""soc: incidents (their entities and history), the record of response actions, drills

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_INCIDENT_STATUSES = "status IN ('open', 'contained', 'resolved', 'merged')"
_INCIDENT_ACTIONS = (
    "action IN ('created', 'alert-linked', 'alert-unlinked', 'merged', 'status', 'assigned', "
    "'commented', 'response')"
)
_RESPONSE_ACTIONS = (
    "action IN ('revoke-sessions', 'lock-account', 'block-address', 'raise-risk', 'force-mfa-reenrolment')"
)
_RESPONSE_STATUSES = "status IN ('done', 'failed')"


def upgrade() -> None:
    op.create_table(
        "soc_incidents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("title_en", sa.String(length=500), nullable=False),
        sa.Column("title_zh", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("risk_score", sa.Integer(), nullable=False),
        sa.Column("assignee", sa.String(length=200), nullable=True),
        sa.Column("drill_id", sa.String(length=64), nullable=True),
        sa.Column("merged_into", sa.String(length=32), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("responded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alert_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(_INCIDENT_STATUSES, name=op.f("ck_soc_incidents_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_soc_incidents")),
    )
    op.create_index(
        "ix_soc_incidents_status_created_at", "soc_incidents", ["status", "created_at"], unique=False
    )
    op.create_index(op.f("ix_soc_incidents_drill_id"), "soc_incidents", ["drill_id"], unique=False)
    op.create_table(
        "soc_incident_entities",
        sa.Column("incident_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["soc_incidents.id"],
            name=op.f("fk_soc_incident_entities_incident_id_soc_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("incident_id", "key", name=op.f("pk_soc_incident_entities")),
    )
    op.create_index(
        "ix_soc_incident_entities_key_last_seen", "soc_incident_entities", ["key", "last_seen"], unique=False
    )
    op.create_table(
        "soc_incident_history",
        sa.Column("incident_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("alert_id", sa.String(length=32), nullable=True),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(_INCIDENT_ACTIONS, name=op.f("ck_soc_incident_history_action")),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["soc_incidents.id"],
            name=op.f("fk_soc_incident_history_incident_id_soc_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("incident_id", "seq", name=op.f("pk_soc_incident_history")),
    )
    op.create_table(
        "soc_responses",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("alert_id", sa.String(length=32), nullable=True),
        sa.Column("incident_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail_en", sa.Text(), nullable=False),
        sa.Column("detail_zh", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_RESPONSE_ACTIONS, name=op.f("ck_soc_responses_action")),
        sa.CheckConstraint(_RESPONSE_STATUSES, name=op.f("ck_soc_responses_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_soc_responses")),
    )
    op.create_index("ix_soc_responses_target", "soc_responses", ["target", "at"], unique=False)
    op.create_index(op.f("ix_soc_responses_alert_id"), "soc_responses", ["alert_id"], unique=False)
    op.create_index(op.f("ix_soc_responses_incident_id"), "soc_responses", ["incident_id"], unique=False)
    op.create_table(
        "soc_drills",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("accounts", sa.JSON(), nullable=False),
        sa.Column("detect_within_s", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_soc_drills")),
    )
    op.create_table(
        "soc_drill_cases",
        sa.Column("drill_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("technique", sa.String(length=32), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("account", sa.String(length=200), nullable=True),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("override", sa.String(length=16), nullable=True),
        sa.Column("override_note", sa.Text(), nullable=True),
        sa.Column("override_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "override IS NULL OR override IN ('blocked', 'alerted', 'logged', 'none')",
            name=op.f("ck_soc_drill_cases_override"),
        ),
        sa.ForeignKeyConstraint(
            ["drill_id"],
            ["soc_drills.id"],
            name=op.f("fk_soc_drill_cases_drill_id_soc_drills"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("drill_id", "seq", name=op.f("pk_soc_drill_cases")),
    )


def downgrade() -> None:
    op.drop_table("soc_drill_cases")
    op.drop_table("soc_drills")
    op.drop_index(op.f("ix_soc_responses_incident_id"), table_name="soc_responses")
    op.drop_index(op.f("ix_soc_responses_alert_id"), table_name="soc_responses")
    op.drop_index("ix_soc_responses_target", table_name="soc_responses")
    op.drop_table("soc_responses")
    op.drop_table("soc_incident_history")
    op.drop_index("ix_soc_incident_entities_key_last_seen", table_name="soc_incident_entities")
    op.drop_table("soc_incident_entities")
    op.drop_index(op.f("ix_soc_incidents_drill_id"), table_name="soc_incidents")
    op.drop_index("ix_soc_incidents_status_created_at", table_name="soc_incidents")
    op.drop_table("soc_incidents")
