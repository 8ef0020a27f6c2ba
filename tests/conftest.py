"""Fixtures for the end-to-end suite; the process machinery lives in harness.py.

- ``harness``: an empty `Harness` for the test, closed (every process stopped) afterwards;
- ``control_plane``: a running control plane (admin token from the environment);
- ``stack``: control plane + fake OpenAI registered as provider ``openai`` + a key + Envoy,
  ready to serve.

When a test fails, the tail of every log of its processes is attached to the report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import PROVIDER_SECRET, Binaries, ControlPlane, Harness, Stack

_HARNESS = pytest.StashKey[Harness]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "wasm_only(reason): checks what only the wasm form of the filter does yet; skipped when "
        "the suite runs the native module (TOKENROUTER_NATIVE_DIR)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("TOKENROUTER_NATIVE_DIR"):
        return
    for item in items:
        marker = item.get_closest_marker("wasm_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"native module: {reason}"))


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    try:
        return Binaries.from_env()
    except LookupError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def harness(
    request: pytest.FixtureRequest, binaries: Binaries, tmp_path: Path
) -> Iterator[Harness]:
    harness = Harness(binaries, tmp_path)
    request.node.stash[_HARNESS] = harness
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def control_plane(harness: Harness) -> ControlPlane:
    return harness.control_plane()


@pytest.fixture
def stack(harness: Harness) -> Stack:
    control_plane = harness.control_plane()
    provider = harness.fake_openai(PROVIDER_SECRET)
    control_plane.add_provider("openai", "openai", provider.base_url, PROVIDER_SECRET)
    key_id, key = control_plane.create_key("e2e")
    envoy = harness.envoy(control_plane, providers=["openai"])
    envoy.wait_until_serving(key)
    return Stack(control_plane, envoy, provider, key_id, key)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
    harness = item.stash.get(_HARNESS, None)
    if harness is not None and report.failed and report.when in ("setup", "call"):
        report.sections.append(("tokenrouter processes", harness.failure_report()))
