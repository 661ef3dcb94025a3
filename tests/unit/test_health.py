from aiohttp.test_utils import TestClient, TestServer

from services.common import metrics
from services.common.health import HealthServer


async def test_readiness_reports_why_and_liveness_does_not_depend_on_it() -> None:
    health = HealthServer(port=0)
    missing: list[str] = ["model not ready"]
    health.add_check(lambda: missing[0] if missing else None)
    async with TestClient(TestServer(health.app)) as client:
        ready = await client.get("/healthz")
        assert ready.status == 503
        assert (await ready.json())["problems"] == ["model not ready"]
        assert (await client.get("/livez")).status == 200
        missing.clear()
        assert (await client.get("/healthz")).status == 200
        exported = await client.get("/metrics")
        assert metrics.IN_FLIGHT._name in await exported.text()
