from pathlib import Path

from redis.asyncio import Redis
from redis.credentials import CredentialProvider

from wsroom.backplane.redis import RedisBackplane


class SecretFile(CredentialProvider):
    """An ACL user whose password is read from a file at each new connection, so that a
    rotated secret (a Kubernetes secret, a Vault agent's file) is used without a restart."""

    def __init__(self, username: str, path: str) -> None:
        self.username = username
        self.path = Path(path)

    def get_credentials(self) -> tuple[str, str]:
        return self.username, self.path.read_text().strip()

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()


def acl_backplane(
    host: str = "redis.internal",
    port: int = 6379,
    username: str = "wsroom",
    password_file: str = "/run/secrets/redis-password",
) -> RedisBackplane:
    client = Redis(host=host, port=port, credential_provider=SecretFile(username, password_file))
    return RedisBackplane(client=client, prefix="chat")
