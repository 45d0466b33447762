from wsroom.backplane.redis import RedisBackplane

backplane = RedisBackplane(
    "redis://127.0.0.1:6379/0",  # rediss:// for TLS; wsroom's logs and errors hide the password
    prefix="wsroom",  # of every key and channel; no braces, spaces or newlines
    heartbeat=2.0,  # seconds between heartbeats and dead-node checks
    node_ttl=10.0,  # seconds of silence after which a node is dead (> heartbeat)
    timeout=2.0,  # the longest any Redis command may take
    reconnect_max=2.0,  # the cap of the pause between reconnection attempts
)
