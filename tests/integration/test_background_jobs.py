"""Periodic jobs run in exactly one process: the holder of the job's leader lock."""

from __future__ import annotations

import asyncio

from tests.conftest import make_settings
from tradegraph.services import Services


def _runs(registry) -> float:
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "tradegraph_gatekeeper_runs_total"
    )


async def test_gatekeeper_job_runs_in_one_of_two_workers(tmp_path, leg):
    if leg.name == "sqlite":
        settings = make_settings(tmp_path, leg, background_jobs=True)
        services = Services(settings)
        await services.start()
        try:
            await asyncio.sleep(0.2)
            assert len(services._jobs) == 1 and not services._jobs[0].done()
        finally:
            await services.stop()
        assert services._jobs == []
        return
    settings = make_settings(tmp_path, leg, background_jobs=True)
    first, second = Services(settings), Services(settings)
    await first.start()
    await second.start()
    try:
        runs = first.metrics.registry, second.metrics.registry
        for _ in range(300):  # up to 15 s on a loaded machine
            counts = [_runs(r) for r in runs]
            if sum(counts) >= 1:
                break
            await asyncio.sleep(0.05)
        assert sorted(c > 0 for c in counts) == [False, True], counts
    finally:
        await first.stop()
        await second.stop()
