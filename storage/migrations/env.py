"""Alembic environment for marginwatch.storage.

Normally run through :mod:`marginwatch.storage.schema` with an open connection in
``config.attributes["connection"]``. For developers, ``alembic -c storage/alembic.ini
revision --autogenerate -m ...`` works too with ``-x url=sqlite:///scratch.db``.
"""

from __future__ import annotations

from alembic import context
from marginwatch.storage.models import Base
from sqlalchemy import create_engine

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass -x url=DATABASE_URL (or use `marginwatch db upgrade`)")
    with create_engine(url).begin() as conn:
        _run(conn)
