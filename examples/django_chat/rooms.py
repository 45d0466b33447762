"""The rooms, shared by both ASGI applications and by Django's views."""

from examples.chat import ChatRoom, authenticate
from wsroom import ConnectionManager

manager = ConnectionManager(ChatRoom, authenticate=authenticate)
