#!/usr/bin/env bash
# Installs what the session-fixation-vulnerable e2e apps beyond PHP and the plain Flask one
# need, on this project's kind of Debian machine, as root. Idempotent, and quick and silent
# when everything is already there (it prints only errors).
#   - Tomcat 10.1 (tomcat/run.sh): Debian's tomcat10-common (catalina.sh, the jars, and
#     libeclipse-jdt-core-java, the JSP compiler); not the tomcat10 service package.
#   - Express (express/): node and npm if missing, then `npm ci` in express/ (node_modules/
#     is git-ignored).
#   - Django, Flask-Session + Flask-Login (django_app/app.py, flask_login_app.py): pip
#     installs into the venv given as $1 (created if missing).
# Usage: setup.sh VENV_DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 VENV_DIR" >&2; exit 2; }
venv=$1
here=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; echo "FATAL: failed: $*" >&2; exit 1; }; }

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
need_apt=()
installed tomcat10-common || need_apt+=(tomcat10-common)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  quiet apt-get update -qq
  quiet apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# express/: reinstall only when package-lock.json changed since the last `npm ci`.
stamp="$here/express/node_modules/.sessiongate-lock.sha256"
want=$(sha256sum "$here/express/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  (cd "$here/express" && quiet npm ci --no-audit --no-fund --silent)
  echo "$want" >"$stamp"
fi

# Python: the venv holds the right major versions already, or pip brings them.
py_ok() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
import sys
want = {"django": "5.2.", "flask-session": "0.8.", "flask-login": "0.6.", "cachelib": "0."}
sys.exit(any(not version(p).startswith(v) for p, v in want.items()))
PY
}
if ! py_ok; then
  [ -x "$venv/bin/python" ] || quiet python3 -m venv "$venv"
  quiet "$venv/bin/pip" install -q 'django>=5.2,<5.3' 'flask-session>=0.8,<0.9' \
    'flask-login>=0.6,<0.7' 'cachelib>=0.13,<1'
  py_ok || { echo "FATAL: $venv lacks django 5.2, flask-session 0.8, flask-login 0.6 or cachelib" >&2; exit 1; }
fi
