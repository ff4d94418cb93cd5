#!/usr/bin/env bash
# Makes a service of your own from templates/service, outside this repository.
#
#   scripts/new-service.sh NAME [DIR]      DIR defaults to ../NAME
#
# Copies the template to DIR, names the package and the service NAME, points its
# switchboard-bus dependency at this checkout (an absolute path; a git URL works
# too, see the comment it leaves in DIR/Cargo.toml), and writes DIR/ecosystem.toml:
# the entry to add to the ecosystem.toml main runs, with the binary's absolute
# path (CARGO_TARGET_DIR respected), so it works wherever it is pasted. Prints it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

name=${1:-}
# A bus name and a Cargo package name at once; nothing that could be read as a
# path, an option or TOML.
if ! [[ $name =~ ^[a-z][a-z0-9_]{0,31}$ ]]; then
    echo "usage: scripts/new-service.sh NAME [DIR]" >&2
    echo "  NAME: a lowercase letter, then up to 31 of a-z 0-9 _ (it is the service's bus name)" >&2
    exit 64
fi
case $name in
main | db | chat | loc | receive | broker | echo)
    echo "new-service.sh: $name is a service of Switchboard's own; choose another name" >&2
    exit 64
    ;;
build | deps | examples | incremental)
    # Cargo refuses a binary named as a folder of target/debug.
    echo "new-service.sh: Cargo cannot build a binary named $name (a folder of target/debug); choose another name" >&2
    exit 64
    ;;
esac
dir=${2:-$here/../$name}
# Both paths are written into TOML strings and sed expressions: refuse the
# characters that would end either (a quote, a backslash, | and &, a control
# character) rather than escape them.
for path in "$dir" "$here" "${CARGO_TARGET_DIR:-}"; do
    if [[ $path == *[\"\\\|\&]* || $path == *[[:cntrl:]]* ]]; then
        echo "new-service.sh: the path $path has a character this script will not write into TOML (\" \\ | & or a control character); choose another folder" >&2
        exit 64
    fi
done
if [ -e "$dir" ]; then
    echo "new-service.sh: $dir exists; give a DIR that does not" >&2
    exit 73
fi
mkdir -p "$(dirname "$dir")"
cp -r "$here/templates/service" "$dir"
rm -rf "$dir/target"
dir=$(cd "$dir" && pwd)
target=${CARGO_TARGET_DIR:-$dir/target}
# A relative CARGO_TARGET_DIR is cargo's working folder's: the service's, where
# it is built ("cd DIR && cargo build").
case $target in /*) ;; *) target=$dir/$target ;; esac

sed -i -e "s|^name = \"greeter\"|name = \"$name\"|" \
    -e "s|path = \"../../crates/bus\"|path = \"$here/crates/bus\"|" \
    -e 's|^# (in this repository it is taken by path, so that the tests build it as is).|# (scripts/new-service.sh wrote this path to the checkout it was run from).|' \
    "$dir/Cargo.toml"
sed -i -e "s|^name = \"greeter\"|name = \"$name\"|" "$dir/Cargo.lock"
sed -i -e "s|\"greeter\"|\"$name\"|g" -e "s|\`greeter\`|\`$name\`|g" "$dir/src/main.rs"
cat >"$dir/ecosystem.toml" <<TOML
# The entry that runs $name under main: add it to the ecosystem.toml main runs.
# bin is absolute, so it works pasted anywhere; build first: cargo build
[[apps]]
name = "$name"
bin = "$target/debug/$name"
env = { RUST_LOG = "info" }
TOML
echo "made $dir (package and service $name)"
echo "build it:  (cd $dir && cargo build)"
echo "then add this entry to your ecosystem.toml (also in $dir/ecosystem.toml):"
echo
sed -n '/^\[\[apps\]\]/,$p' "$dir/ecosystem.toml"
