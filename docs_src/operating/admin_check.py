import base64
import hmac
import os

from wsroom import Handshake, HandshakeRejected

# The operators' password, from the environment: never in the code.
PASSWORD = os.environ.get("WSROOM_ADMIN_PASSWORD", "")
EXPECTED = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def is_operator(request: Handshake) -> bool:
    """HTTP Basic authentication: the browser asks once, then sends the credentials with
    the page and with every snapshot it polls."""
    given = request.headers.get("Authorization") or ""
    if PASSWORD and hmac.compare_digest(given.encode(), EXPECTED.encode()):
        return True
    raise HandshakeRejected(
        401, "Unauthorized", headers={"WWW-Authenticate": 'Basic realm="wsroom admin"'}
    )
