"""A deliberately session-fixation-vulnerable Flask-Login app for sessiongate's end-to-end tests.

Server-side sessions by Flask-Session (cachelib FileSystemCache under a directory of its
own), cookie `session` holding the bare session id (no signer), users by Flask-Login.
Flask-Session does not adopt an id its store does not know (it issues a fresh one), but
every visitor is given a saved session, so an attacker harvests a valid id with a first
visit and plants it in the victim's browser. login_user() never regenerates the session id:
the id from before the login stays the id after. (Flask-Login's default "basic" session
protection only marks the session non-fresh when the IP/User-Agent changes.)

Usage: python flask_login_app.py PORT [SESSION_DIR]   (binds 127.0.0.1; SESSION_DIR
defaults to $SESSIONGATE_E2E_SESSION_DIR, else a fresh temporary directory)
"""

import hmac
import os
import sys
import tempfile

from cachelib import FileSystemCache
from flask import Flask, redirect, request, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_session import Session

USERS = {"alice": "wonderland", "mallory": "evil"}

session_dir = (
    (sys.argv[2] if len(sys.argv) > 2 else None)
    or os.environ.get("SESSIONGATE_E2E_SESSION_DIR")
    or tempfile.mkdtemp(prefix="flask-session-")
)

app = Flask(__name__)
app.config.update(
    SECRET_KEY="sessiongate-e2e-not-a-secret",
    SESSION_TYPE="cachelib",
    SESSION_CACHELIB=FileSystemCache(session_dir, threshold=0),
    SESSION_USE_SIGNER=False,
)
Session(app)
login_manager = LoginManager(app)


class User(UserMixin):
    def __init__(self, name):
        self.id = name


@login_manager.user_loader
def load_user(name):
    return User(name) if name in USERS else None


def text(body, status=200):
    return body, status, {"Content-Type": "text/plain; charset=utf-8"}


@app.before_request
def every_visitor_gets_a_session():
    session.setdefault("visitor", True)  # saved, so the id can be harvested


def user():
    return current_user.id if current_user.is_authenticated else None


@app.get("/")
def index():
    return text(f"Hello, {user() or 'anonymous'}\n")


@app.get("/whoami")
def whoami():
    return text(user() or "anonymous")


@app.get("/sid")
def sid():
    return text(getattr(session, "sid", None) or "-")


@app.get("/cookies")
def cookies():
    return dict(request.cookies)  # the cookies as Werkzeug parsed them (JSON)


@app.get("/login")
def login_form():
    return (
        '<!doctype html><title>Log in</title><form method="post" action="/login">'
        '<input name="username"> <input name="password" type="password">'
        " <button>Log in</button></form>"
    )


@app.post("/login")
def login():
    name = request.form.get("username", "")
    password = request.form.get("password", "")
    if name in USERS and hmac.compare_digest(USERS[name], password):
        login_user(User(name))  # same session id before and after: the fixation flaw
        return redirect("/account", 302)
    return text("Login failed\n")


@app.post("/logout")
def logout():
    logout_user()
    return text("Bye\n")


@app.get("/account")
def account():
    if not user():
        return text("Not logged in\n", 401)
    return text(f"Account of {user()}\n")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), debug=False, use_reloader=False, threaded=True)
