"""Compile contracts/src into the committed artifacts that chain_client deploys.

    python -m chain_client.compiler            # (re)write chain_client/artifacts/
    python -m chain_client.compiler --check    # exit 1 if the committed artifacts are stale

The compiler is the pinned npm `solc` behind scripts/solc, driven through py-solc-x's standard-JSON
interface. Every source, OpenZeppelin included, is passed by content: the set of inputs is then known
exactly (it is hashed into build-info.json) and the result cannot depend on what the wrapper's import
callback happens to find on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import solcx

REPO_ROOT = Path(__file__).resolve().parent.parent
SOLC_BINARY = REPO_ROOT / "scripts" / "solc"
CONTRACTS_SRC = "contracts/src"
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
BUILD_INFO_NAME = "build-info.json"

# Source unit names are repository-relative POSIX paths, so the metadata (and therefore the bytecode's
# metadata hash) is the same on every checkout, whatever directory it lives in.
REMAPPINGS: tuple[tuple[str, str], ...] = (
    ("@openzeppelin/contracts/", "node_modules/@openzeppelin/contracts/"),
)

SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "remappings": [f"{prefix}={target}" for prefix, target in REMAPPINGS],
    "outputSelection": {
        "*": {
            "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"],
        },
    },
}

# `import "x";`, `import "x" as y;`, `import * as y from "x";`, `import {a, b as c} from "x";`
_IMPORT_RE = re.compile(r"""\bimport\s+(?:[^;"']*?\bfrom\s+)?["']([^"']+)["']""", re.DOTALL)
# Comments and string literals are blanked before looking for imports, so that an import inside a
# comment is not followed and a `//` inside a string does not hide the rest of the line.
_LEXEME_RE = re.compile(
    r"""//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'""",
    re.DOTALL,
)


class CompileError(RuntimeError):
    """The sources could not be compiled, or the compiler's inputs are not what we expected."""


@dataclass(frozen=True)
class CompileResult:
    """Everything the compiler writes, keyed by file name inside the artifacts directory."""

    files: dict[str, str]


def _strip_comments(source: str) -> str:
    def keep_strings(match: re.Match[str]) -> str:
        text = match.group(0)
        # Keep string literals (imports are strings); replace comments by a space so tokens stay apart.
        return text if text[0] in "\"'" else " "

    return _LEXEME_RE.sub(keep_strings, source)


def _imports_of(source: str) -> list[str]:
    return _IMPORT_RE.findall(_strip_comments(source))


def _resolve_import(importer: str, path: str) -> str:
    """Source unit name solc gives to `import path` written in source unit `importer`."""
    # solc's order: a relative import is first joined to the importer's directory, then remappings
    # (longest matching prefix) apply to the result, then `.` and `..` segments are normalised.
    if path.startswith(("./", "../")):
        path = str(PurePosixPath(importer).parent / path)
    matches = [(prefix, target) for prefix, target in REMAPPINGS if path.startswith(prefix)]
    if matches:
        prefix, target = max(matches, key=lambda m: len(m[0]))
        path = target + path[len(prefix) :]
    parts: list[str] = []
    for part in PurePosixPath(path).parts:
        if part == "..":
            if not parts:
                raise CompileError(f"import {path!r} in {importer} escapes the repository")
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def project_sources(root: Path = REPO_ROOT) -> list[str]:
    """Every .sol file under contracts/src, as sorted repository-relative source unit names."""
    src = root / CONTRACTS_SRC
    return sorted(p.relative_to(root).as_posix() for p in src.rglob("*.sol") if p.is_file())


def collect_sources(roots: Iterable[str], root: Path = REPO_ROOT) -> dict[str, str]:
    """The transitive import closure of `roots`, read from disk: source unit name -> content."""
    contents: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in contents:
            continue
        file = root / name
        if not file.is_file():
            raise CompileError(f"source not found: {name} (run `make node` for node_modules)")
        # Read bytes and decode strictly so the hash in build-info is of exactly what solc saw.
        text = file.read_bytes().decode("utf-8")
        contents[name] = text
        pending.extend(_resolve_import(name, imported) for imported in _imports_of(text))
    return dict(sorted(contents.items()))


def solc_long_version(solc_binary: Path = SOLC_BINARY) -> str:
    out = subprocess.run([str(solc_binary), "--version"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"Version:\s*(\S+)", out)
    if match is None:
        raise CompileError(f"cannot read the compiler version from {solc_binary}: {out!r}")
    return match.group(1)


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _hex(obj: str) -> str:
    return "0x" + obj


def compile_contracts(root: Path = REPO_ROOT, solc_binary: Path = SOLC_BINARY) -> CompileResult:
    """Compile everything under contracts/src in memory; return the artifact files' exact text."""
    own_sources = project_sources(root)
    if not own_sources:
        raise CompileError(f"no .sol files under {root / CONTRACTS_SRC}")
    sources = collect_sources(own_sources, root)
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": SETTINGS,
    }
    try:
        output: dict[str, Any] = solcx.compile_standard(
            standard_input,
            base_path=str(root),
            allow_paths=[str(root)],
            solc_binary=solc_binary,
        )
    except solcx.exceptions.SolcError as exc:
        raise CompileError(str(exc)) from exc

    # If solc pulled in a file we did not pass, our import scanner missed it and build-info would
    # not describe the real inputs; refuse rather than write an incomplete record.
    unexpected = sorted(set(output.get("sources", {})) - set(sources))
    if unexpected:
        raise CompileError(f"solc resolved sources not passed by content: {unexpected}")

    files: dict[str, str] = {}
    origin: dict[str, str] = {}
    own = set(own_sources)
    for source_name, contracts in sorted(output.get("contracts", {}).items()):
        if source_name not in own:
            continue
        for contract_name, compiled in sorted(contracts.items()):
            bytecode = compiled["evm"]["bytecode"]["object"]
            # Interfaces and abstract contracts have no creation code; nothing to deploy.
            if not bytecode:
                continue
            if contract_name in origin:
                raise CompileError(
                    f"contract name {contract_name} defined in both {origin[contract_name]} "
                    f"and {source_name}; artifacts are keyed by name"
                )
            origin[contract_name] = source_name
            files[f"{contract_name}.json"] = _dump(
                {
                    "contractName": contract_name,
                    "sourceName": source_name,
                    "abi": compiled["abi"],
                    "bytecode": _hex(bytecode),
                    "deployedBytecode": _hex(compiled["evm"]["deployedBytecode"]["object"]),
                }
            )

    files[BUILD_INFO_NAME] = _dump(
        {
            "solcLongVersion": solc_long_version(solc_binary),
            "compiler": "solc-js (npm `solc`) via scripts/solc",
            "settings": SETTINGS,
            "sources": {
                name: {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
                for name, text in sources.items()
            },
        }
    )
    return CompileResult(files=files)


def stale_files(result: CompileResult, artifacts_dir: Path = ARTIFACTS_DIR) -> list[str]:
    """Names of artifact files that are missing, differ from `result`, or should not exist."""
    on_disk = {p.name for p in artifacts_dir.glob("*.json")} if artifacts_dir.is_dir() else set()
    stale = [
        name
        for name, text in result.files.items()
        if name not in on_disk or (artifacts_dir / name).read_bytes() != text.encode("utf-8")
    ]
    stale.extend(name for name in on_disk if name not in result.files)
    return sorted(stale)


def write_artifacts(result: CompileResult, artifacts_dir: Path = ARTIFACTS_DIR) -> list[str]:
    """Write `result` and delete artifacts of contracts that no longer exist; return changed names."""
    changed = stale_files(result, artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    for name in changed:
        target = artifacts_dir / name
        if name in result.files:
            # newline="" keeps "\n" on every platform, so files are byte-identical everywhere.
            with target.open("w", encoding="utf-8", newline="") as fh:
                fh.write(result.files[name])
        else:
            target.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chain_client.compiler",
        description="Compile contracts/src into chain_client/artifacts.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compile in memory and fail if chain_client/artifacts differs from the result",
    )
    args = parser.parse_args(argv)
    try:
        result = compile_contracts()
    except CompileError as exc:
        print(f"compile failed: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_files(result)
        if stale:
            print("artifacts out of date (run `make contracts`):", file=sys.stderr)
            for name in stale:
                print(f"  {name}", file=sys.stderr)
            return 1
        print(f"artifacts up to date ({len(result.files)} files)")
        return 0
    changed = write_artifacts(result)
    for name in changed:
        print(f"wrote {name}" if name in result.files else f"removed {name}")
    print(f"{len(result.files)} artifact files, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
