"""Property-based run of the live server's own OpenAPI schema (schemathesis): no request, valid or not, gets a 5xx.

Every operation in ``/openapi.json`` gets schema-valid (positive) and schema-violating (negative) requests. Kept
to a few minutes on a 2-core CPU: a bounded number of examples per operation and mode, and txt2img requests
clamped to tiny jobs (at most 2 steps, 64x64, one image) — values below the valid range or of the wrong type are
left as generated, so the validation paths are still exercised.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import install_checkpoint
from test_api_server import Server, start_server, stop_server

pytestmark = pytest.mark.slow
EXAMPLES = 20  # per operation and generation mode
LIMITS = {"steps": 2, "width": 64, "height": 64, "batch_size": 1, "n_iter": 1, "hr_second_pass_steps": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("webui-schema")
    install_checkpoint(tiny_checkpoint, data / "models" / "Stable-diffusion")
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nplain,{prompt},\n", encoding="utf-8")
    server = start_server(data, "--api", "--nowebui")
    yield server
    stop_server(server)


def clamp(case) -> None:
    """Make a generated txt2img or img2img tiny: absent sizes get small values (the API defaults are 50 steps at 512x512),
    valid numbers above the limits are lowered; everything else (wrong types, too small) stays as generated."""
    body = case.body
    if case.path.endswith(("/txt2img", "/img2img")) and isinstance(body, dict):
        for key, limit in LIMITS.items():
            value = body.setdefault(key, limit)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                body[key] = limit


def test_no_request_from_the_schema_gets_a_server_error(server: Server) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    counts: dict[str, int] = {}
    started = time.perf_counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30, [op.label for op in operations]
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                clamp(case)
                response = case.call(base_url=server.url, timeout=300)
                counts[operation.label] = counts.get(operation.label, 0) + 1
                if response.status_code >= 500:
                    failures.append(f"{response.status_code} {case.as_curl_command()}\n{response.text[:500]}")

            try:
                run()
            except Unsatisfiable:  # nothing can violate a schema without parameters or body
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n\n".join(failures[:10])
    assert all(counts.get(op.label, 0) > 0 for op in operations)
    assert requests.get(f"{server.url}/sdapi/v1/options", timeout=30).status_code == 200  # still serving
    print(f"schemathesis: {sum(counts.values())} requests over {len(operations)} operations "
          f"in {time.perf_counter() - started:.0f}s")
