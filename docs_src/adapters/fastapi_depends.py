from typing import Annotated

from fastapi import Depends, FastAPI, WebSocket, WebSocketException, status

from wsroom import ConnectionManager
from wsroom.adapters.starlette import serve

manager = ConnectionManager()
app = FastAPI()


def current_user(websocket: WebSocket) -> str:
    user = websocket.query_params.get("user")  # placeholder: see authentication.md
    if not user:
        raise WebSocketException(status.WS_1008_POLICY_VIOLATION)
    return user


@app.websocket("/ws")
async def chat(websocket: WebSocket, user: Annotated[str, Depends(current_user)]) -> None:
    await serve(websocket, manager, user=user)
