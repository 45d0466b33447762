from redis.asyncio import Sentinel

from wsroom.backplane.redis import RedisBackplane

SENTINELS = [("10.0.0.11", 26379), ("10.0.0.12", 26379), ("10.0.0.13", 26379)]


def sentinel_backplane(
    sentinels: list[tuple[str, int]] = SENTINELS, service: str = "mymaster"
) -> RedisBackplane:
    # Asks the Sentinels where the primary is; a Sentinel that does not answer within
    # socket_timeout is skipped for the next one.
    sentinel = Sentinel(sentinels, socket_timeout=0.5)
    # Connections to whichever server the Sentinels name as primary: after a failover,
    # new connections go to the promoted replica.
    client = sentinel.master_for(service, socket_timeout=2.0, socket_connect_timeout=1.0)
    # The client stays yours: close it after the manager's shutdown.
    return RedisBackplane(client=client, prefix="chat")
