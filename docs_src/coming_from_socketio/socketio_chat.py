import socketio

TOKENS = {"tok-ann": "ann", "tok-bob": "bob"}  # stand-in for your session store

sio = socketio.AsyncServer(async_mode="asgi")
app = socketio.ASGIApp(sio)  # run with: uvicorn socketio_chat:app --port 8765


@sio.event
async def connect(sid: str, environ: dict[str, object], auth: dict[str, str] | None) -> bool:
    user = TOKENS.get((auth or {}).get("token", ""))
    if user is None:
        return False  # refuses the connection
    await sio.save_session(sid, {"user": user})
    return True


@sio.event
async def join(sid: str, room: str) -> dict[str, str]:
    await sio.enter_room(sid, room)
    return {"joined": room}  # the client's callback gets it


@sio.event
async def leave(sid: str, room: str) -> None:
    await sio.leave_room(sid, room)


@sio.event
async def message(sid: str, data: dict[str, str]) -> None:
    session = await sio.get_session(sid)
    text = {"from": session["user"], "text": data["text"]}
    await sio.emit("message", text, to=data["room"])  # no id, no history


@sio.event
async def disconnect(sid: str) -> None:
    pass  # python-socketio has already taken the sid out of its rooms
