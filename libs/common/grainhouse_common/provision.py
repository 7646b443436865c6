"""Database provisioning: one schema and one login role per service, touching nothing else.

Owns: the `grainhouse_<svc>` roles and the `<svc>` schemas (creation and grants only).
Trusts: an administrator connection given by the operator (`grainhouse up` or `grainhouse
db init`).
Never: grants a service role anything outside its own schema.

Isolation: each schema is owned by its service's role and nothing is granted to anyone
else, so a role can neither read nor write another service's tables. `public` gets no
CREATE for anybody (PostgreSQL 15's default, enforced again here for older servers), and
the database's CONNECT stays granted only to the service roles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

SERVICES_WITH_DB = ("auth", "grainmgr", "backup")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


@dataclass(frozen=True)
class ServiceDb:
    service: str
    role: str
    schema: str
    password: str

    def url(self, host: str, port: int, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=host, port=port, dbname=dbname, user=self.role, password=self.password
        )


def role_for(service: str) -> str:
    return f"grainhouse_{service}"


def ensure(admin_url: str, dbname: str, service: str, password: str) -> ServiceDb:
    """Create (or update the password of) a service's role and its schema. Idempotent."""
    if not _NAME.match(service):
        raise ValueError(f"bad service name {service!r}")
    role, schema = role_for(service), service
    with psycopg.connect(admin_url, autocommit=True) as conn:
        # Two `up`s racing here would both try to create the role: serialise.
        conn.execute("SELECT pg_advisory_lock(724001)")
        try:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(
                    verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                    "NOINHERIT NOREPLICATION NOBYPASSRLS PASSWORD {}"
                ).format(sql.Identifier(role), sql.Literal(password))
            )
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                    sql.Identifier(schema), sql.Identifier(role)
                )
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} SET search_path = {}").format(
                    sql.Identifier(role), sql.Identifier(schema)
                )
            )
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dbname))
            )
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(role)
                )
            )
        finally:
            conn.execute("SELECT pg_advisory_unlock(724001)")
    return ServiceDb(service, role, schema, password)
