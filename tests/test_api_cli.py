"""`certledger serve` before uvicorn takes over: where the embedded chain keeps its index, and an
index that cannot serve this chain answered in one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import typer
from api_support import SECRET
from pydantic import SecretStr
from world import World, build_world

from api import cli
from api.service import Service
from api.settings import ApiSettings
from chain_client.system import System


def _serve_embedded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Runs `serve` on the embedded chain up to the point uvicorn would start, building the service
    there as it would; returns the index each run used (its directory existed while it served)."""
    used: list[str] = []

    def serve_one(system: System, settings: ApiSettings, *_: Any) -> None:
        assert Path(settings.index_db).parent.is_dir()
        Service.build(system, settings)  # the fresh chain's index primes
        used.append(settings.index_db)

    monkeypatch.setattr(cli, "_serve_one", serve_one)
    cli.serve(rpc_url=None, index_db=None, host="127.0.0.1", port=8000, workers=1, access_log=False)
    return used


def test_serve_embedded_keeps_its_index_in_a_throwaway_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The embedded chain is new on every run, with the same chain id and addresses: an index left
    in the working directory by one run made the next one fail (ReorgTooDeep)."""
    monkeypatch.chdir(tmp_path)
    first = _serve_embedded(monkeypatch)
    second = _serve_embedded(monkeypatch)
    assert len(first) == len(second) == 1 and first != second
    for index in (*first, *second):
        assert not Path(index).parent.exists()  # removed once serving ended
    assert list(tmp_path.iterdir()) == []


def test_serve_answers_an_index_it_cannot_use_in_one_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = tmp_path / "index.sqlite"
    Service.build(world.system, ApiSettings(index_db=str(index), auth_secret=SecretStr(SECRET)))
    other = build_world()  # another deployment
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database " * 100)
    cases = (
        (index, "indexes another deployment"),
        (garbage, "is not a SQLite database (file is not a database)"),
    )
    for db, says in cases:
        with pytest.raises(typer.Exit) as exit_info:
            settings = ApiSettings(index_db=str(db), auth_secret=SecretStr(SECRET))
            cli._serve_one(other.system, settings, "127.0.0.1", 0, False)
        assert exit_info.value.exit_code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("rpc_url", "env", "says"),
    [
        ("http://127.0.0.1:9", {}, "node http://127.0.0.1:9 unavailable"),
        (None, {"CERTLEDGER_AUTH_SECRET": "short"}, "CERTLEDGER_AUTH_SECRET:"),
    ],
    ids=["node-down", "short-auth-secret"],
)
def test_serve_answers_a_node_or_a_setting_it_cannot_use_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rpc_url: str | None,
    env: dict[str, str],
    says: str,
) -> None:
    """Before, each of these was a rich traceback of some forty lines."""
    # serve sets CERTLEDGER_* for its workers: on a copy of the environment, dropped after the test
    monkeypatch.setattr(os, "environ", os.environ.copy())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(typer.Exit) as exit_info:
        cli.serve(rpc_url=rpc_url, manifest=tmp_path / "deployment.json", index_db=None, host="127.0.0.1",
                  port=8000, workers=1, access_log=False)  # fmt: skip
    assert exit_info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
