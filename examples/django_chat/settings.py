"""The least Django needs to serve a page: no database, no sessions."""

import os

# Set DJANGO_SECRET_KEY in production; Django signs nothing in this example.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "development only")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_chat.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
