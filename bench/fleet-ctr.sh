#!/bin/sh
# bench/fleet.py's stand-in for `ctr` on simulated nodes (no containerd runs there).
# It answers what kiln's importer asks, from a folder of its own ($FLEET_CTR_STATE):
#   ctr version | ctr images import --help
#   ctr -n NS images ls [-q] [FILTER ...]: FILTER name==REF[,labels."K"==V] or labels."K"==V
#     (several are ORed) | images label REF K=V... (K= unsets) | images rm REF
#   ctr -n NS content get DIGEST
#   ctr -n NS images tag [--force] REF NEW   (the digest name: the same record under NEW)
#   ctr -n NS images import [--platform P] FILE   (bench/fleetctr.py checks the whole archive)
set -eu
# No fork per record or label (200 simulated nodes share 2 cores).
state=${FLEET_CTR_STATE:?}
[ -d "$state/content" ] || mkdir -p "$state/images" "$state/content"
if [ "${1:-}" = -n ]; then shift 2; fi
record() { printf '%s' "$1" | tr '/:@' '___'; }
# has_label ",K=V,K2=V2," K V: whether that exact pair is there (no fork).
has_label() { case "$1" in *",$2=$3,"*) return 0 ;; esac; return 1; }
case "${1:-} ${2:-}" in
  "version "*) echo "Client: kiln fleet stand-in"; exit 0 ;;
  "images import")
    if [ "${3:-}" = --help ]; then echo "usage: ctr images import [--platform P] FILE"; exit 0; fi
    shift 2
    exec "${FLEET_PYTHON:-python3}" -I -S "${FLEET_CTR_CHECKER:?}" check "$@" ;;
  "images ls")  # filters ORed, as ctr does
    shift 2
    quiet=0
    if [ "${1:-}" = -q ]; then quiet=1; shift; fi
    [ "$quiet" = 1 ] || echo "REF TYPE DIGEST SIZE PLATFORMS LABELS"
    for file in "$state"/images/*; do
      [ -f "$file" ] || continue
      read -r ref kind digest size platform labels < "$file"
      hit=0
      [ $# -eq 0 ] && hit=1
      for filter in "$@"; do
        name="" label=""
        case "$filter" in
          name==*,labels.*) name=${filter%%,labels.*}; name=${name#name==}; label=${filter#*,labels.} ;;
          name==*) name=${filter#name==} ;;
          labels.*) label=${filter#labels.} ;;
        esac
        if [ -n "$name" ] && [ "$ref" != "$name" ]; then continue; fi
        if [ -n "$label" ]; then  # "K"==V
          key=${label%%==*}; key=${key#\"}; key=${key%\"}
          has_label ",$labels," "$key" "${label#*==}" || continue
        fi
        hit=1
        break
      done
      [ "$hit" = 1 ] || continue
      if [ "$quiet" = 1 ]; then echo "$ref"; else echo "$ref $kind $digest $size $platform $labels"; fi
    done
    exit 0 ;;
  "images label")
    file="$state/images/$(record "$3")"
    [ -f "$file" ] || { echo "ctr: image \"$3\": not found" >&2; exit 1; }
    read -r ref kind digest size platform labels < "$file"
    shift 3
    for pair in "$@"; do  # K=V sets K, K= removes it
      kept="" old_ifs=$IFS
      IFS=,
      for have in $labels; do
        case "$have" in -|"${pair%%=*}="*) ;; *) kept="$kept${kept:+,}$have" ;; esac
      done
      IFS=$old_ifs
      if [ -n "${pair#*=}" ]; then kept="$kept${kept:+,}$pair"; fi
      labels=$kept
    done
    echo "$ref $kind $digest $size $platform ${labels:--}" > "$file.tmp" && mv "$file.tmp" "$file"
    echo "$ref" ;;
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
