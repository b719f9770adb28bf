"""Idle keep-alive connections: whoever reuses a connection must drop it before the other end
does, or a request can go out on a connection being closed and come back as an empty read."""

from services.router.main import KEEP_ALIVE_SECONDS as ROUTER_KEEP_ALIVE
from services.router.worker_client import KEEPALIVE_EXPIRY_SECONDS, WorkerClient
from services.worker import KEEP_ALIVE_SECONDS as WORKER_KEEP_ALIVE


async def test_the_router_drops_idle_worker_connections_before_the_worker_closes_them():
    client = WorkerClient("token")
    try:
        pool = client.http._transport._pool  # httpx's connection pool for the workers
        assert pool._keepalive_expiry == KEEPALIVE_EXPIRY_SECONDS
    finally:
        await client.aclose()
    assert KEEPALIVE_EXPIRY_SECONDS < WORKER_KEEP_ALIVE


def test_the_router_keeps_client_connections_longer_than_a_proxy_in_front_of_it():
    # nginx's upstream keepalive_timeout and most cloud load balancers' idle timeout: 60 s.
    assert ROUTER_KEEP_ALIVE > 60
