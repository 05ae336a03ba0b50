"""The committed artifacts are exactly what the pinned compiler makes of the committed sources."""

from __future__ import annotations

import hashlib
import json

import pytest

from chain_client import compiler
from chain_client.artifacts import ArtifactNotFound, artifact_names, load_artifact


@pytest.fixture(scope="module")
def fresh() -> compiler.CompileResult:
    return compiler.compile_contracts()


def test_committed_artifacts_equal_a_fresh_compile(fresh: compiler.CompileResult) -> None:
    on_disk = {p.name: p.read_bytes() for p in compiler.ARTIFACTS_DIR.glob("*.json")}
    expected = {name: text.encode("utf-8") for name, text in fresh.files.items()}
    assert sorted(on_disk) == sorted(expected), "run `make contracts`"
    for name, content in expected.items():
        assert on_disk[name] == content, f"{name} differs from a fresh compile; run `make contracts`"


def test_build_info_hashes_match_sources_on_disk() -> None:
    build_info = json.loads((compiler.ARTIFACTS_DIR / compiler.BUILD_INFO_NAME).read_text("utf-8"))
    sources = build_info["sources"]
    # Every project source is recorded, not only those that produce a deployable contract.
    assert set(compiler.project_sources()) <= set(sources)
    for name, entry in sources.items():
        digest = hashlib.sha256((compiler.REPO_ROOT / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{name} changed since the artifacts were built"


def test_build_info_records_the_pinned_compiler() -> None:
    build_info = json.loads((compiler.ARTIFACTS_DIR / compiler.BUILD_INFO_NAME).read_text("utf-8"))
    package = json.loads((compiler.REPO_ROOT / "node_modules" / "solc" / "package.json").read_text("utf-8"))
    assert build_info["solcLongVersion"].startswith(package["version"] + "+commit.")
    assert build_info["settings"] == compiler.SETTINGS


def test_every_artifact_loads() -> None:
    names = artifact_names()
    assert names, "no artifacts; run `make contracts`"
    for name in names:
        artifact = load_artifact(name)
        assert artifact.contract_name == name
        assert artifact.source_name.startswith(compiler.CONTRACTS_SRC + "/")
        assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 2
        assert artifact.deployed_bytecode.startswith("0x") and len(artifact.deployed_bytecode) > 2
        # EIP-170: a contract whose runtime code exceeds 24,576 bytes cannot be deployed on mainnet rules.
        assert (len(artifact.deployed_bytecode) - 2) // 2 <= 24_576, f"{name} exceeds EIP-170"


def test_unknown_artifact_is_a_clear_error() -> None:
    with pytest.raises(ArtifactNotFound):
        load_artifact("NoSuchContract")
    with pytest.raises(ArtifactNotFound):
        load_artifact("build-info")


def test_import_scanner_ignores_comments_and_resolves_like_solc() -> None:
    source = """
    // import "not/this.sol";
    /* import "nor/this.sol"; */
    import "./A.sol";
    import {B as C, D} from "../lib/B.sol";
    import * as E from "@openzeppelin/contracts/utils/Context.sol";
    string constant S = "// import not a comment";
    import "x/F.sol" as F;
    """
    imports = compiler._imports_of(source)
    assert imports == ["./A.sol", "../lib/B.sol", "@openzeppelin/contracts/utils/Context.sol", "x/F.sol"]
    importer = "contracts/src/sub/X.sol"
    assert [compiler._resolve_import(importer, i) for i in imports] == [
        "contracts/src/sub/A.sol",
        "contracts/src/lib/B.sol",
        "node_modules/@openzeppelin/contracts/utils/Context.sol",
        "x/F.sol",
    ]
