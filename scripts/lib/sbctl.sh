# Sourced by the ops scripts: checks for SERVICE OP, then runs `sbctl SUBCOMMAND "$@"`
# with the release build (or the debug one), building it if neither exists.
#   run_sbctl SUBCOMMAND "$@"
run_sbctl() {
    local sub=$1
    shift
    if [ $# -lt 2 ]; then
        echo "usage: $(basename "$0") SERVICE OP [JSON] [options]" >&2
        exit 64
    fi
    local bin=target/release/sbctl
    [ -x "$bin" ] || bin=target/debug/sbctl
    if [ ! -x "$bin" ]; then
        cargo build --release -q -p switchboard-sbctl
        bin=target/release/sbctl
    fi
    exec "$bin" "$sub" "$@"
}
