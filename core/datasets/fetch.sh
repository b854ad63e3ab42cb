# Sourced by the download scripts: fetch URL FILE [FLAGS] downloads URL to FILE with curl (or wget)
# and returns 0, or says in one line on stderr why it could not, a full disk (curl 23, wget 3) told
# from the network, and returns 1. FLAGS: curl flags (--progress-bar, -sS).
fetch() {
  local url="$1" out="$2" status=0 tool
  if command -v curl >/dev/null 2>&1; then
    tool=curl
    curl -fL "${@:3}" --retry 2 --connect-timeout 20 -o "$out" "$url" || status=$?
  else
    tool=wget
    wget -q --tries=2 --timeout=20 -O "$out" "$url" || status=$?
  fi
  [ "$status" -eq 0 ] && return 0
  if { [ "$tool" = curl ] && [ "$status" -eq 23 ]; } || { [ "$tool" = wget ] && [ "$status" -eq 3 ]; }; then
    echo "error: could not write the download into $(dirname "$out") (is the disk full?)." >&2
  else
    echo "error: could not download $url (no network access, or the server is down)." >&2
  fi
  return 1
}
