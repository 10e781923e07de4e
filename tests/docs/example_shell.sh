# Sourced before a page's examples run (tests/docs/examples.py writes the script). It makes the
# commands of a page behave as they do for a reader with a terminal per server:
#   - `edgespec serve`, `edgespec link` and `edgespec edge-serve` start in the background, and the
#     next line runs only once their port accepts connections (or the page fails if they die);
#     every server is stopped when the page ends.
#   - With EXAMPLE_MODELS=smoke, a preset the page names is swapped for the smoke model (the
#     substitution happens in the text, see examples.py), and commands that would fall back to the
#     default pair get the smoke model explicitly; generations are capped at a few tokens unless the
#     page caps them itself.
#   - `edgespec` and `python` are this checkout's, `make` runs in the repository root with its venv.
set -euo pipefail

EXAMPLE_SERVER_PIDS=()

stop_example_servers() {
    local pid
    for pid in "${EXAMPLE_SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${EXAMPLE_SERVER_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_example_servers EXIT

_has_flag() {  # _has_flag FLAG ARGS...: whether FLAG (or FLAG=...) is among ARGS
    local flag=$1 arg
    shift
    for arg in "$@"; do
        [[ $arg == "$flag" || $arg == "$flag="* ]] && return 0
    done
    return 1
}

_flag_value() {  # _flag_value FLAG DEFAULT ARGS...
    local flag=$1 value=$2
    shift 2
    while (($#)); do
        [[ $1 == "$flag" ]] && value=$2
        [[ $1 == "$flag="* ]] && value=${1#*=}
        shift
    done
    echo "$value"
}

_wait_for_port() {  # _wait_for_port PORT PID NAME
    local port=$1 pid=$2 name=$3 waited=0
    until "$EXAMPLE_PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "example: '$name' exited before port $port opened" >&2; return 1; }
        ((waited++ < EXAMPLE_SERVER_WAIT_S)) || { echo "example: '$name' never opened port $port" >&2; return 1; }
        sleep 1
    done
}

edgespec() {
    local command=() args=("$@") word
    # Global flags (--log, -v) come before the command word.
    for word in "${args[@]}"; do
        [[ $word == -* ]] || { command=("$word"); break; }
    done
    if [[ $EXAMPLE_MODELS == smoke ]]; then
        case "${command[0]:-}" in
            serve) _has_flag --target "${args[@]}" || args+=(--target "$EXAMPLE_SMOKE_MODEL") ;;
            generate | robot)
                _has_flag --draft "${args[@]}" || args+=(--draft "$EXAMPLE_SMOKE_MODEL")
                if _has_flag --local "${args[@]}" && ! _has_flag --target "${args[@]}"; then
                    args+=(--target "$EXAMPLE_SMOKE_MODEL")
                fi
                if [[ ${command[0]} == generate ]] && ! _has_flag --max-new-tokens "${args[@]}"; then
                    args+=(--max-new-tokens "$EXAMPLE_MAX_NEW_TOKENS")
                fi
                ;;
            edge-serve) _has_flag --draft "${args[@]}" || args+=(--draft "$EXAMPLE_SMOKE_MODEL") ;;
        esac
    fi
    local port
    case "${command[0]:-}" in
        serve) _has_flag --help "${args[@]}" || port=$(_flag_value --port 50051 "${args[@]}") ;;
        link) port=$(_flag_value --listen "" "${args[@]}") ;;
        edge-serve) port=$(_flag_value --port 8000 "${args[@]}") ;;
    esac
    if [[ -n ${port:-} ]]; then
        echo "example: starting in the background: edgespec ${args[*]}" >&2
        "$EXAMPLE_PYTHON" -m edgespec.cli "${args[@]}" &
        EXAMPLE_SERVER_PIDS+=($!)
        _wait_for_port "$port" "$!" "edgespec ${command[0]}"
    else
        echo "example: edgespec ${args[*]}" >&2
        "$EXAMPLE_PYTHON" -m edgespec.cli "${args[@]}"
    fi
}

python() { "$EXAMPLE_PYTHON" "$@"; }

make() { command make -C "$EXAMPLE_REPO" VENV="$EXAMPLE_VENV" "$@"; }
