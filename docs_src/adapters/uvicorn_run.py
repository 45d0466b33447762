from starlette.applications import Starlette

from wsroom import ConnectionManager
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import routes

manager = ConnectionManager()
app = Starlette(routes=routes("/ws", manager))

if __name__ == "__main__":
    wsroom_uvicorn.run(app, manager, host="0.0.0.0", port=8000)
