#!/bin/sh
# Starts the deliberately session-fixation-vulnerable Tomcat 10.1 app (ROOT/, JSPs that
# Tomcat compiles itself) for sessiongate's end-to-end tests, in the foreground.
#
# Tomcat never adopts a session id it did not issue, but every JSP opens a session, so an
# attacker harvests a valid JSESSIONID with a first visit and plants it in the victim's
# browser, as a cookie or as a ;jsessionid= path parameter (URL rewriting is on, the
# default). Login never calls request.changeSessionId(): the id from before the login stays
# the id after.
#
# Usage: run.sh PORT BASEDIR
#   BASEDIR becomes a fresh CATALINA_BASE (conf/server.xml: one HTTP/1.1 connector on
#   127.0.0.1:PORT, no shutdown port, no AJP; work/ holds the compiled JSPs). The last step
#   execs java (catalina.sh run does), so this script's PID is Tomcat's: kill it to stop.
#   Needs Debian's tomcat10-common (catalina.sh, the jars, and ecj as the JSP compiler).
set -eu
[ $# -eq 2 ] || { echo "usage: $0 PORT BASEDIR" >&2; exit 2; }
port=$1
base=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$base/conf" "$base/logs" "$base/temp" "$base/work" "$base/webapps"
base=$(cd "$base" && pwd)

cat >"$base/conf/server.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <!-- bindOnInit="false": the port opens only once the app (its JSPs compiled) is up -->
    <Connector address="127.0.0.1" port="$port" protocol="HTTP/1.1" connectionTimeout="20000"
               bindOnInit="false"/>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" autoDeploy="false" deployOnStartup="false" unpackWARs="false">
        <Context path="" docBase="$here/ROOT" reloadable="false">
          <Manager pathname=""/>
          <JarScanner scanClassPath="false" scanManifest="false"/>
        </Context>
      </Host>
    </Engine>
  </Service>
</Server>
XML
cat >"$base/conf/logging.properties" <<'PROPS'
handlers = java.util.logging.ConsoleHandler
.level = INFO
java.util.logging.ConsoleHandler.level = INFO
java.util.logging.ConsoleHandler.formatter = org.apache.juli.OneLineFormatter
PROPS

if [ -z "${JAVA_HOME:-}" ] && [ -z "${JRE_HOME:-}" ]; then
  JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
  export JAVA_HOME
fi
export CATALINA_HOME="${CATALINA_HOME:-/usr/share/tomcat10}"
export CATALINA_BASE="$base"
export CATALINA_TMPDIR="$base/temp"
export CATALINA_PID=""
# Fail instead of running without a connector when the port is taken; start fast.
export CATALINA_OPTS="${CATALINA_OPTS:-} -Dorg.apache.catalina.startup.EXIT_ON_INIT_FAILURE=true \
 -Djava.security.egd=file:/dev/./urandom -XX:TieredStopAtLevel=1 -Xshare:auto"
exec "$CATALINA_HOME/bin/catalina.sh" run
