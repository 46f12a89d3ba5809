"""A deliberately session-fixation-vulnerable Flask app for sessiongate's end-to-end tests.

The classic hand-rolled server-side session: an in-memory store keyed by a `sid` cookie.
A request carrying a `sid` cookie gets that id as-is, even one the server never issued (an
empty session is created under the client-chosen id), and the id is never rotated on
login. Flask's own signed-cookie session is not used.

With `--rotate` it is the same app done right: a new id at every login (the session moves
to it, the old id is dropped), for the tests that must tell a safe app from a vulnerable one.

Usage: python flask_app.py PORT [--rotate]   (binds 127.0.0.1)
"""

import secrets
import sys
import threading

from flask import Flask, g, request

USERS = {"alice": "wonderland", "mallory": "evil"}
SESSIONS = {}  # session id -> dict
LOCK = threading.Lock()
ROTATE = "--rotate" in sys.argv[2:]

app = Flask(__name__)


def text(body, status=200):
    return body, status, {"Content-Type": "text/plain; charset=utf-8"}


@app.before_request
def load_session():
    sid = request.cookies.get("sid")
    g.new_sid = not sid
    if g.new_sid:
        sid = secrets.token_urlsafe(24)
    with LOCK:
        g.session = SESSIONS.setdefault(sid, {})  # the flaw: any client id is adopted
    g.sid = sid


@app.after_request
def send_sid(resp):
    if g.get("new_sid"):
        resp.set_cookie("sid", g.sid, path="/", httponly=True)
    return resp


def user():
    return g.session.get("user")


@app.get("/")
def index():
    return text(f"Hello, {user() or 'anonymous'}\n")


@app.get("/whoami")
def whoami():
    return text(user() or "anonymous")


@app.get("/sid")
def sid():
    return text(g.sid)


@app.get("/cookies")
def cookies():
    return dict(request.cookies)  # the cookies as Werkzeug parsed them (JSON)


@app.post("/login")
def login():
    name = request.form.get("username", "")
    password = request.form.get("password", "")
    if name in USERS and secrets.compare_digest(USERS[name], password):
        g.session["user"] = name  # same sid before and after: the fixation flaw
        if ROTATE:  # unless told to do it right
            with LOCK:
                SESSIONS.pop(g.sid, None)
                g.sid = secrets.token_urlsafe(24)
                SESSIONS[g.sid] = g.session
            g.new_sid = True
        return text(f"Welcome back, {name}\n")
    return text("Login failed\n")


@app.post("/logout")
def logout():
    g.session.clear()
    return text("Bye\n")


@app.get("/account")
def account():
    if not user():
        return text("Not logged in\n", 401)
    return text(f"Account of {user()}\n")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), debug=False, use_reloader=False, threaded=True)
