from wsroom import ConnectionManager
from wsroom.adapters.asgi import WSRoomApp, admin_app

from admin_check import is_operator

manager = ConnectionManager()
# The rooms at /ws; every other request goes to the admin view (404 outside /admin).
app = WSRoomApp(manager, path="/ws", app=admin_app(manager, is_operator))
# uvicorn admin_asgi:app, or wsroom.adapters.uvicorn.run(app, manager)
