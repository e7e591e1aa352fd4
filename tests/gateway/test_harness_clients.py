"""The harness closes the openai clients it hands out when their gateway stops. One left open was closed by
openai's ``__del__`` whenever the collector got to it, by a task on the loop of whichever later test was running:
its connections belonged to a loop already closed, the close failed, and asyncio logged "Task exception was never
retrieved" into that test (a test that asserts on its logs failed in one fresh-clone CI run)."""

from __future__ import annotations

from tests.support.harness import gateway_config, running_gateway, sim_backend


async def test_the_clients_of_a_gateway_are_closed_with_it() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client("alice")
        assert [m.id for m in (await client.models.list()).data] == ["sim"]
        assert not client.is_closed()
    assert client.is_closed()


async def test_a_client_with_another_credential_is_closed_too() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client(api_key=gw.token("bob"))
        assert (await client.models.list()).data
    assert client.is_closed()
