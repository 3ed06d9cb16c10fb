"""Per-run state of the CLI: what one invocation makes once and the next makes again."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_dr.cli import common
from prefect_dr.cli.application import state
from prefect_dr.storage import factory


def test_storage_is_made_once_per_run_and_per_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[Any, bool]] = []

    def fake(settings: Any, *, read_only: bool = False) -> Any:
        store = type("Store", (), {"url": f"memory://{len(made)}"})()
        made.append((store, read_only))
        return store

    monkeypatch.setattr(factory, "from_settings", fake)
    monkeypatch.setattr(state, "_settings", object())
    monkeypatch.setattr(state, "storages", {})
    monkeypatch.setattr(state, "run", None)
    first = common.storage()
    assert common.storage() is first  # a restore asked twice: one client
    reader = common.storage(read_only=True)  # the short read deadline is another client
    assert reader is not first and common.storage(read_only=True) is reader
    assert [r for _, r in made] == [False, True]
    state.storages = {}  # what the next invocation's options callback does
    assert common.storage() is not first and len(made) == 3
