from starlette.applications import Starlette

from wsroom import ConnectionManager
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import routes

manager = ConnectionManager()
app = Starlette(routes=routes("/ws", manager))


def main() -> None:
    config = wsroom_uvicorn.config(app, manager, host="0.0.0.0", port=8000, compression=False)
    wsroom_uvicorn.Server(config, manager, shutdown_timeout=10.0).run()


if __name__ == "__main__":
    main()
