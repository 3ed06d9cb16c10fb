"""prefect-dr installs beside Prefect 3.1 to 3.9: every dependency prefect-dr shares with an
older Prefect's environment (the cached venvs of scripts/prefect-venv, as pip resolved them for
that Prefect) is within prefect-dr's own range. (prefect-dr's CLI tests were also run under
Prefect 3.1.15's typer 0.15 / click 8.1; see CHANGELOG, issue 14.)"""

from __future__ import annotations

import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in data["project"]["dependencies"]]


#: the older Prefects of CI; `scripts/test --matrix` adds those of docs/deploy.md's other pins
OLDER = ["3.1.15", "3.4.25"] + (["3.2.15", "3.3.7", "3.5.0", "3.6.29"]
                                if os.environ.get("PREFECT_DR_TEST_MATRIX") == "full" else [])


@pytest.mark.parametrize("version", OLDER)
def test_ranges_admit_the_libraries_of_an_older_prefect(version: str) -> None:
    sites = list((ROOT / ".cache" / "prefect" / version / "lib").glob("python*/site-packages"))
    if not sites:
        if os.environ.get("PREFECT_DR_REQUIRE_STACK") == "1" and version in OLDER[:2]:
            pytest.fail(f"no venv of Prefect {version}: run scripts/bootstrap")
        pytest.skip(f"no venv of Prefect {version} (scripts/prefect-venv {version})")
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version
                 for d in metadata.distributions(path=[str(sites[0])])}
    assert installed.get("prefect") == version
    shared = 0
    for req in _requirements():
        have = installed.get(req.name.lower())
        if have is None:
            continue  # prefect-dr's own (boto3, psycopg, ...): nothing to clash with
        shared += 1
        assert req.specifier.contains(have, prereleases=True), (req, have)
    assert shared >= 5  # typer, rich, sqlalchemy, cryptography, croniter, pyyaml, ...
