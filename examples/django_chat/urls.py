"""Django's pages, next to the rooms."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from examples.django_chat.rooms import manager


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("A Django page; the chat is at ws://this-host/ws?user=alice\n")


async def members(request: HttpRequest, room: str) -> JsonResponse:
    # An async view runs on the server's event loop, where the manager runs.
    return JsonResponse({"room": room, "members": await manager.members(room)})


urlpatterns = [path("", index), path("rooms/<str:room>", members)]
