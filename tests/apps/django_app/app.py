"""A deliberately session-fixation-vulnerable Django 5.2 app for sessiongate's end-to-end tests.

A single-file project: settings in code, server-side sessions in Django's cache backend over
a process-local LocMemCache (no database, no migrations). Django does not adopt a session
key its store does not know (it issues a fresh one), but every visitor is given a saved
session, so an attacker harvests a valid `sessionid` with a first visit and plants it in
the victim's browser. Login sets request.session['user'] and never calls
django.contrib.auth.login() nor cycle_key(): the key from before the login stays the key
after. The views are CSRF-exempt.

Usage: python app.py PORT   (binds 127.0.0.1; Django's own threaded runserver server,
one process, no autoreloader, no system checks)
"""

import hmac
import sys
import warnings

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="sessiongate-e2e-not-a-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.sessions"],
    MIDDLEWARE=[
        "django.middleware.common.CommonMiddleware",  # APPEND_SLASH=True, the default
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        __name__ + ".every_visitor_gets_a_session",
    ],
    SESSION_ENGINE="django.contrib.sessions.backends.cache",
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    USE_TZ=True,
)
django.setup()

from django.core.cache.backends.base import CacheKeyWarning  # noqa: E402

warnings.filterwarnings("ignore", category=CacheKeyWarning)  # odd client-sent keys: no noise

from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_POST, require_safe  # noqa: E402

USERS = {"alice": "wonderland", "mallory": "evil"}


def every_visitor_gets_a_session(get_response):
    def middleware(request):
        request.session.setdefault("visitor", True)  # saved, so the key can be harvested
        if request.session.session_key is None:
            request.session.save()  # assign the key now, so /sid can tell it
        return get_response(request)

    return middleware


def text(body, status=200):
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


def user(request):
    return request.session.get("user")


@require_safe
def index(request):
    return text(f"Hello, {user(request) or 'anonymous'}\n")


@require_safe
def whoami(request):
    return text(user(request) or "anonymous")


@require_safe
def sid(request):
    return text(request.session.session_key or "-")


@require_safe
def cookies(request):
    return JsonResponse(request.COOKIES)  # the cookies as Django parsed them


@csrf_exempt
def login(request):
    if request.method in ("GET", "HEAD"):
        return HttpResponse(
            '<!doctype html><title>Log in</title><form method="post" action="/login">'
            '<input name="username"> <input name="password" type="password">'
            " <button>Log in</button></form>"
        )
    if request.method != "POST":
        return text("Method not allowed\n", 405)
    name = request.POST.get("username", "")
    password = request.POST.get("password", "")
    if name in USERS and hmac.compare_digest(USERS[name], password):
        request.session["user"] = name  # no auth.login()/cycle_key(): the fixation flaw
        return text(f"Welcome back, {name}\n")
    return text("Login failed\n")


@csrf_exempt
@require_POST
def logout(request):
    request.session.flush()
    return text("Bye\n")


@require_safe
def account(request):
    if not user(request):
        return text("Not logged in\n", 401)
    return text(f"Account of {user(request)}\n")


urlpatterns = [
    path("", index),
    path("whoami", whoami),
    path("sid", sid),
    path("cookies", cookies),
    path("login", login),
    path("logout", logout),
    path("account", account),
]

if __name__ == "__main__":
    from django.core.servers.basehttp import run
    from django.core.wsgi import get_wsgi_application

    run("127.0.0.1", int(sys.argv[1]), get_wsgi_application(), threading=True)
