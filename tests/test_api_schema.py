"""Schemathesis over the OpenAPI schema, in process: generated requests (valid and invalid, signed
in as a regulator, who may read everything and is refused every holder's job by the contracts)
never get a server error. Bounded and seeded: a few examples per operation, so the run takes well
under two minutes on the embedded chain."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import schemathesis
from api_support import build_api
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from world import World

EXAMPLES = 10


def test_generated_requests_get_no_server_error(world: World, tmp_path: Path) -> None:
    api = build_api(world, tmp_path)
    world.certificate_for()
    api.service.reader.reach(world.chain.w3.eth.block_number)
    headers = api.login(world.cast.regulator)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    started = time.monotonic()
    operations = 0
    for result in schema.get_all_operations():
        # The schema is FastAPI's own: an operation it cannot load is a bug here, not a skip.
        assert isinstance(result, Ok), result
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error])

        run()
    assert operations >= 30
    assert time.monotonic() - started < 120


def test_the_documented_examples_are_valid_bodies() -> None:
    """Every example in the OpenAPI schema validates as its model ("Try it out" on /docs sends
    them), and the example times lie at least a year ahead, so a deadline or an expiry is not in the past."""
    import inspect

    from pydantic import BaseModel

    from api import schemas

    checked = 0
    for _, model in inspect.getmembers(schemas, inspect.isclass):
        if not issubclass(model, BaseModel) or model.__module__ != schemas.__name__:
            continue
        extra = model.model_config.get("json_schema_extra")
        examples: list[Any] = list(extra.get("examples") or []) if isinstance(extra, dict) else []  # type: ignore[arg-type]
        for example in examples:
            model.model_validate(example)
            times = {key: example[key] for key in ("deadline", "maturity", "expiry") if key in example}
            for key, value in times.items():
                assert int(value) > time.time() + 365 * 86_400, (model.__name__, key)
            checked += 1
    assert checked >= 10
