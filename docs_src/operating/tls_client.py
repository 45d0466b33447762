from redis.asyncio import Redis

from wsroom.backplane.redis import RedisBackplane


def tls_backplane(
    host: str = "redis.internal",
    port: int = 6380,
    ca_file: str = "/etc/wsroom/redis-ca.pem",
    cert_file: str | None = "/etc/wsroom/node.pem",  # a client certificate, if Redis asks
    key_file: str | None = "/etc/wsroom/node-key.pem",
) -> RedisBackplane:
    client = Redis(
        host=host,
        port=port,
        ssl=True,
        ssl_ca_certs=ca_file,  # the server's certificate must be signed by this CA
        ssl_certfile=cert_file,
        ssl_keyfile=key_file,
    )
    return RedisBackplane(client=client, prefix="chat")
