from __future__ import annotations

import pytest
from pg import Postgres


@pytest.fixture
def postgres():
    """A running PostgreSQL server of its own, removed at the end."""
    pg = Postgres().start()
    yield pg
    pg.destroy()
