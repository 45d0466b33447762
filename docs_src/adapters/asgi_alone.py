from wsroom import ConnectionManager
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.asgi import WSRoomApp

manager = ConnectionManager()
# The rooms at /ws, wsroom.js at /wsroom.js; other paths get 404.
app = WSRoomApp(manager, path="/ws", client_path="/wsroom.js")

if __name__ == "__main__":
    wsroom_uvicorn.run(app, manager, host="0.0.0.0", port=8000)
