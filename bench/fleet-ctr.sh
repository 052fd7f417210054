#!/bin/sh
# bench/fleet.py's stand-in for `ctr` on simulated nodes (no containerd runs there).
# It answers what kiln's importer asks, from a folder of its own ($FLEET_CTR_STATE):
#   ctr version | ctr images import --help
#   ctr -n NS images ls name==REF [name==REF ...] | images label REF K=V | images rm REF | content get DIGEST
#   ctr -n NS images tag [--force] REF NEW   (the digest name: the same record under NEW)
#   ctr -n NS images import [--platform P] FILE   (bench/fleetctr.py checks the whole archive)
set -eu
state=${FLEET_CTR_STATE:?}
mkdir -p "$state/images" "$state/content"
if [ "${1:-}" = -n ]; then shift 2; fi
record() { printf '%s' "$1" | tr '/:@' '___'; }
case "${1:-} ${2:-}" in
  "version "*) echo "Client: kiln fleet stand-in"; exit 0 ;;
  "images import")
    if [ "${3:-}" = --help ]; then echo "usage: ctr images import [--platform P] FILE"; exit 0; fi
    shift 2
    exec "${FLEET_PYTHON:-python3}" -I -S "${FLEET_CTR_CHECKER:?}" check "$@" ;;
  "images ls")  # name==REF filters, any number (ctr ORs them)
    echo "REF TYPE DIGEST SIZE PLATFORMS LABELS"
    shift 2
    for filter in "$@"; do
      file="$state/images/$(record "${filter#name==}")"
      if [ -f "$file" ]; then cat "$file"; fi
    done
    exit 0 ;;
  "images label")
    file="$state/images/$(record "$3")"
    [ -f "$file" ] || { echo "ctr: image \"$3\": not found" >&2; exit 1; }
    read -r ref kind digest size platform _ < "$file"
    echo "$ref $kind $digest $size $platform $4" > "$file.tmp" && mv "$file.tmp" "$file"
    echo "$3" ;;
  "images tag")
    shift 2
    if [ "${1:-}" = --force ]; then shift; fi
    file="$state/images/$(record "$1")"
    [ -f "$file" ] || { echo "ctr: image \"$1\": not found" >&2; exit 1; }
    read -r _ kind digest size platform _ < "$file"
    echo "$2 $kind $digest $size $platform -" > "$state/images/$(record "$2")"
    echo "$2" ;;
  "images rm") rm -f "$state/images/$(record "$3")"; echo "$3" ;;
  "content get") cat "$state/content/$3" ;;
  *) echo "ctr (fleet stand-in): not supported: $*" >&2; exit 1 ;;
esac
