# shellcheck shell=bash
# Sourced by scripts/bootstrap and scripts/prefect-venv: test tools built once per user in
# ${XDG_CACHE_HOME:-~/.cache}/prefect-dr/, shared by every checkout of the project (a clean
# clone, as CI makes, then costs a link instead of installing again), and linked into each.

# user_cache NAME CHECK BUILD: make sure the folder prefect-dr/NAME of the user's cache holds a
# finished build, and set USER_CACHE_DIR to it. The first caller builds it (`BUILD DIR`) under
# a lock the others wait on; a build that did not finish (no .complete) or that `CHECK DIR`
# finds broken is removed and built again.
user_cache() {
  local name="$1" check="$2" build="$3"
  local dir="${XDG_CACHE_HOME:-$HOME/.cache}/prefect-dr/$name"
  mkdir -p "$(dirname "$dir")"
  (
    flock 9
    if [ ! -f "$dir/.complete" ] || ! "$check" "$dir"; then
      rm -rf "$dir"
      "$build" "$dir"
      touch "$dir/.complete"
    fi
  ) 9>"$dir.lock"
  USER_CACHE_DIR="$dir"
}

# user_cache_link DIR LINK: LINK (the checkout's name for DIR) is a symbolic link to DIR,
# replacing whatever was there (a copy of the old layout, built in place, or a stale link).
user_cache_link() {
  local dir="$1" link="$2"
  if [ ! -L "$link" ] || [ "$(readlink "$link")" != "$dir" ]; then
    rm -rf "$link"
    mkdir -p "$(dirname "$link")"
    ln -sfn "$dir" "$link"
  fi
}
