"""Row-level security on PostgreSQL: the per-transaction user setting and the policies.

A scope's transaction starts with ``SELECT set_config('ssot.user_id', <user>, true)``:
a transaction-local setting, gone at commit or rollback, so a pooled connection never
carries one user's identity into another user's transaction. Every user table has a
policy that admits only rows whose ``user_id`` equals that setting, for reading
(``USING``) and for writing (``WITH CHECK``), and ``FORCE ROW LEVEL SECURITY`` so that
even the table owner is subject to it. Without the setting no row is visible at all.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

__all__ = [
    "POLICY_NAME",
    "USER_SETTING",
    "enable_statements",
    "grant_statements",
    "set_user_statement",
]

USER_SETTING = "ssot.user_id"
POLICY_NAME = "user_isolation"
_MATCHES_USER = f"user_id = current_setting('{USER_SETTING}', true)"


def set_user_statement() -> TextClause:
    """The first statement of every scope transaction (bind ``user_id``)."""
    return text(f"SELECT set_config('{USER_SETTING}', :user_id, true)")


def enable_statements(table: str) -> list[str]:
    """DDL that turns on and forces row-level security for ``table`` (a trusted name)."""
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {POLICY_NAME} ON {table} USING ({_MATCHES_USER}) "
        f"WITH CHECK ({_MATCHES_USER})",
    ]


def grant_statements(table: str, role_sql: str) -> list[str]:
    """DML grants on ``table`` to the application role (``role_sql`` already quoted)."""
    return [
        f"REVOKE ALL ON {table} FROM PUBLIC",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role_sql}",
    ]
