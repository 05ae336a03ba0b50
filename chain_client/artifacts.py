"""Compiled contracts shipped with the package (written by `python -m chain_client.compiler`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

# Artifacts are package data, not files next to a checkout, so an installed wheel finds them too.
_PACKAGE = "chain_client"
_DIRECTORY = "artifacts"


class ArtifactNotFound(LookupError):
    """No compiled artifact of that name: the contract does not exist or `make contracts` was not run."""


@dataclass(frozen=True)
class Artifact:
    contract_name: str
    source_name: str
    # Tuples, not lists: the dataclass is frozen and cached, so callers must not be able to mutate it.
    abi: tuple[dict[str, Any], ...]
    bytecode: str
    deployed_bytecode: str


def artifact_names() -> list[str]:
    """Names of every deployable contract with a committed artifact, sorted."""
    directory = resources.files(_PACKAGE).joinpath(_DIRECTORY)
    return sorted(
        entry.name.removesuffix(".json")
        for entry in directory.iterdir()
        if entry.name.endswith(".json") and entry.name != "build-info.json"
    )


@cache
def load_artifact(name: str) -> Artifact:
    """The artifact of contract `name` (e.g. "CertificateLedger")."""
    entry = resources.files(_PACKAGE).joinpath(_DIRECTORY, f"{name}.json")
    if name == "build-info" or not entry.is_file():
        raise ArtifactNotFound(f"no artifact for contract {name!r}; known: {artifact_names()}")
    data = json.loads(entry.read_text(encoding="utf-8"))
    return Artifact(
        contract_name=data["contractName"],
        source_name=data["sourceName"],
        abi=tuple(data["abi"]),
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
    )
