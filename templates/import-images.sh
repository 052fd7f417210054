#!/bin/sh
# kiln node importer: puts the images of a kiln lock into containerd, namespace k8s.io, under
# their exact refs, pinned, before kubelet starts. Static: everything per environment is in the
# data file (images.data beside this program, or --data FILE). Each image is an OCI archive
# whose layers are already compressed: it goes to `ctr images import` as it was downloaded.
# Needs: curl, ctr (containerd >= 1.5 for zstd layers), sha256sum or openssl. Honours
# CONTAINERD_ADDRESS (ctr's own variable).
#
#   import-images [--check] [--data FILE] [--status FILE]
#
# Exit 0 when every image is present under its ref with the lock's image ID, 1 otherwise.
# Environment: CONTAINERD_ADDRESS, TMPDIR (downloads), KILN_DATA, KILN_STATUS_FILE,
# KILN_RETRIES (download attempts, back-off 1 s doubling to 30 s), KILN_IMPORTS (imports at
# once, default 2), KILN_CURL_OPTS (extra curl options, e.g. --limit-rate 100M).
set -eu

PROG=kiln-import
NS=k8s.io
PIN=io.cri-containerd.pinned
here=$(cd "$(dirname "$0")" && pwd)

data="${KILN_DATA:-$here/images.data}"
status_file="${KILN_STATUS_FILE:-}"
check_only=0
work=""

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --check) check_only=1 ;;
    --data) [ $# -ge 2 ] || die "--data needs a file"; data="$2"; shift ;;
    --status) [ $# -ge 2 ] || die "--status needs a file"; status_file="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
  shift
done

# -- the data file: `set KEY VALUE` and `image NAME REF ID SHA256 SIZE RAW COMP PLATFORM URL` --
env_name=""
format=""
parallel=4
timeout=300
ca_bundle=""
sigv4=""
sigv4_user=""
sigv4_token=""
retries=6
count=0

[ -r "$data" ] || die "cannot read the data file $data (render it with: python bake.py render)"
# shellcheck disable=SC2034 # c..i are read by the eval below
while read -r kind a b c d e f g h i rest; do
  case "$kind" in
    ''|'#'*) continue ;;
    set)
      case "$a" in
        env) env_name="$b" ;;
        format) format="$b" ;;
        parallel) parallel="$b" ;;
        containerd_timeout) timeout="$b" ;;
        ca_bundle) ca_bundle="$b" ;;
        retries) retries="$b" ;;
        sigv4) sigv4="$b" ;;
        sigv4_user) sigv4_user="$b" ;;
        sigv4_token) sigv4_token="$b" ;;
        *) log "warning: unknown setting $a in $data" ;;
      esac ;;
    image)
      if [ -z "$i" ] || [ -n "$rest" ]; then die "$data: malformed image line for ${a:-?}"; fi
      count=$((count + 1))
      # eval assigns from the variables named on the right: values are never re-parsed.
      eval "name_$count=\$a ref_$count=\$b id_$count=\$c sha_$count=\$d size_$count=\$e"
      eval "raw_$count=\$f comp_$count=\$g plat_$count=\$h url_$count=\$i"
      ;;
    *) die "$data: unknown line kind: $kind" ;;
  esac
done < "$data"
[ "$format" = oci-archive ] ||
  die "$data is for another importer (format ${format:-docker-archive}): render it and this program again with the same kiln"
[ "$count" -gt 0 ] || die "$data lists no images"
case "$ca_bundle" in
  ''|/*) ;;
  *) ca_bundle="$(cd "$(dirname "$data")" && pwd)/$ca_bundle" ;;  # beside the data file
esac
case "$parallel" in ''|*[!0-9]*|0) parallel=1 ;; esac
case "$timeout" in ''|*[!0-9]*) timeout=300 ;; esac
imports=${KILN_IMPORTS:-2}
case "$imports" in ''|*[!0-9]*|0) imports=2 ;; esac
retries="${KILN_RETRIES:-$retries}"
case "$retries" in ''|*[!0-9]*|0) retries=6 ;; esac

get() { eval "printf '%s' \"\$${1}_$2\""; }

ctr_() { ctr -n "$NS" "$@"; }

# The config digest (image ID) that REF resolves to, or nothing.
image_id_of() {
  manifest=$(ctr_ images ls "name==$1" 2>/dev/null | awk 'NR > 1 { print $3; exit }')
  [ -n "$manifest" ] || return 0
  ctr_ content get "$manifest" 2>/dev/null | tr -d ' \t\n' |
    sed -n 's/.*"config":{[^}]*"digest":"\(sha256:[0-9a-f]\{64\}\)".*/\1/p'
}

is_pinned() {
  ctr_ images ls "name==$1" 2>/dev/null | awk 'NR > 1 { print $NF; exit }' |
    tr ',' '\n' | grep -qx "$PIN=pinned"
}

# -- status: one JSON file, written atomically -------------------------------------------------
json_escape() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }

write_status() {
  [ -n "$status_file" ] || return 0
  dir=$(dirname "$status_file")
  mkdir -p "$dir" 2>/dev/null || { log "warning: cannot write $status_file"; return 0; }
  tmp="$status_file.tmp.$$"
  {
    printf '{"environment": "%s", "mode": "%s", "ok": %s, "images": [' \
      "$(json_escape "$env_name")" "$1" "$2"
    ws_n=1
    while [ "$ws_n" -le "$count" ]; do
      [ "$ws_n" -gt 1 ] && printf ', '
      printf '{"name": "%s", "ref": "%s", "image_id": "%s", "state": "%s"}' \
        "$(json_escape "$(get name "$ws_n")")" "$(json_escape "$(get ref "$ws_n")")" \
        "$(get id "$ws_n")" "$(get state "$ws_n")"
      ws_n=$((ws_n + 1))
    done
    printf ']}\n'
  } > "$tmp" 2>/dev/null || { rm -f "$tmp"; log "warning: cannot write $status_file"; return 0; }
  mv -f "$tmp" "$status_file"
}

if [ -z "$status_file" ]; then
  if [ "$(id -u)" = 0 ]; then
    status_file=/var/lib/kiln/import-status.json
  else
    status_file="${TMPDIR:-/tmp}/kiln-import-status.json"
  fi
fi

# -- containerd ---------------------------------------------------------------------------------
command -v ctr >/dev/null 2>&1 || die "ctr is not installed (it comes with containerd)"
waited=0
until ctr version >/dev/null 2>&1; do
  if [ "$waited" -ge "$timeout" ]; then
    die "containerd did not answer at ${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock} within ${timeout}s"
  fi
  [ "$waited" -eq 0 ] && log "waiting for containerd at ${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
  sleep 1
  waited=$((waited + 1))
done

# -- what is already there ----------------------------------------------------------------------
missing=0
need_list=""
n=1
while [ "$n" -le "$count" ]; do
  name=$(get name "$n"); ref=$(get ref "$n"); want=$(get id "$n")
  have=$(image_id_of "$ref")
  if [ "$have" = "$want" ]; then
    if [ "$check_only" = 1 ]; then
      if is_pinned "$ref"; then
        eval "state_$n=present"; log "$name: present $ref ($want), pinned"
      else
        eval "state_$n=unpinned"; missing=$((missing + 1)); log "$name: present but not pinned"
      fi
    else
      ctr_ images label "$ref" "$PIN=pinned" >/dev/null
      eval "state_$n=present"; log "$name: present $ref ($want), pinned"
    fi
  else
    if [ -z "$have" ]; then eval "state_$n=missing"; else eval "state_$n=wrong-image-id"; fi
    [ -n "$have" ] && log "$name: $ref is $have, the lock says $want"
    need_list="$need_list $n"
  fi
  n=$((n + 1))
done

if [ "$check_only" = 1 ]; then
  for n in $need_list; do
    missing=$((missing + 1)); log "$(get name "$n"): $(get state "$n") $(get ref "$n")"
  done
  if [ "$missing" -eq 0 ]; then write_status check true; log "all $count images present";
  else write_status check false; log "$missing of $count images not as the lock says"; exit 1; fi
  exit 0
fi

if [ -z "$need_list" ]; then
  write_status import true
  log "all $count images present: nothing to do"
  exit 0
fi

# -- room for the downloads ---------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-import.XXXXXX") || die "cannot create a work folder"
cleanup() {
  for pidfile in "$work"/*.pid "$work"/*.ipid; do
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || :; fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# At most `parallel` downloads wait on disk, plus the ones being imported.
peak=$(for n in $need_list; do get size "$n"; echo; done | sort -rn |
  head -n "$((parallel + imports))" | awk '{ s += $1 } END { print s + 0 }')
avail=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
if [ "$(( (peak / 1024) + 1024 ))" -gt "$avail" ]; then
  die "not enough space in $(dirname "$work"): the downloads need $((peak / 1024 + 1024)) KiB, $avail KiB free (set TMPDIR to a larger file system)"
fi

command -v curl >/dev/null 2>&1 || die "curl is not installed"
# openssl hashes with the CPU's SHA instructions (5x coreutils' sha256sum here)
if openssl dgst -sha256 -r /dev/null >/dev/null 2>&1; then
  sha256_of() { openssl dgst -sha256 -r "$1" | cut -d ' ' -f 1; }
elif command -v sha256sum >/dev/null 2>&1; then
  sha256_of() { sha256sum "$1" | cut -d ' ' -f 1; }
else
  die "neither openssl nor sha256sum is installed"
fi
local_flag=""
if ctr images import --help 2>&1 | grep -q -- '--local'; then local_flag="--local"; fi

# One download, in the background: retries with back-off, resuming the partial file.
# shellcheck disable=SC2086 # KILN_CURL_OPTS is a list of curl options on purpose
download() {
  url=$1 out=$2 size=$3
  attempt=1
  delay=1
  while :; do
    rc=0
    if [ -n "$sigv4" ]; then
      # credentials go to curl on stdin, never on its command line (ps would show them)
      { printf 'user = "%s"\n' "$sigv4_user"
        if [ -n "$sigv4_token" ]; then printf 'header = "x-amz-security-token: %s"\n' "$sigv4_token"; fi
      } | curl --fail --silent --show-error --location --connect-timeout 10 -C - \
          ${ca_bundle:+--cacert "$ca_bundle"} ${KILN_CURL_OPTS:-} --aws-sigv4 "$sigv4" -K - \
          -o "$out.part" "$url" || rc=$?
    else
      curl --fail --silent --show-error --location --connect-timeout 10 -C - \
        ${ca_bundle:+--cacert "$ca_bundle"} ${KILN_CURL_OPTS:-} -o "$out.part" "$url" || rc=$?
    fi
    [ "$rc" -eq 0 ] && break
    # a finished file answers a resume with 416: it is complete, not failed
    if [ -f "$out.part" ] && [ "$(wc -c < "$out.part" | tr -d " ")" -eq "$size" ]; then break; fi
    # a server that cannot resume (33): start this file again from its first byte
    if [ "$rc" -eq 33 ]; then rm -f "$out.part"; fi
    if [ "$attempt" -ge "$retries" ]; then return 1; fi
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
    [ "$delay" -gt 30 ] && delay=30
  done
  mv -f "$out.part" "$out"
}

# In the background: download, then hash (so hashing overlaps the previous import).
# (POSIX sh has no local variables: functions here use their own prefixed names.)
start_download() {
  sd_n=$1
  (download "$(get url "$sd_n")" "$work/$sd_n.blob" "$(get size "$sd_n")" &&
    sha256_of "$work/$sd_n.blob" > "$work/$sd_n.sha") 2>"$work/$sd_n.err" &
  echo $! > "$work/$sd_n.pid"
}

fail() {  # n reason
  eval "state_$1=failed"
  missing=$((missing + 1))
  log "$(get name "$1"): FAILED: $2"
  rm -f "$work/$1.blob" "$work/$1.blob.part"
}

# largest first: the last import to start is a small one, so no big one runs alone at the end
queue=$(for n in $need_list; do printf '%s %s\n' "$(get size "$n")" "$n"; done |
  sort -k1,1nr -k2,2n | cut -d ' ' -f 2)
started=0
for n in $queue; do
  if [ "$started" -lt "$parallel" ]; then
    log "$(get name "$n"): downloading $(get size "$n") bytes"
    start_download "$n"; started=$((started + 1))
  fi
done

# One import, in the background (two run at once: containerd unpacks on both cores).
# Its verdict goes to $work/N.result; the main shell records it.
import_one() {
  io_n=$1
  io_ref=$(get ref "$io_n")
  io_want=$(get id "$io_n")
  # shellcheck disable=SC2086 # $local_flag is a word or nothing on purpose
  if ! ctr_ images import $local_flag --platform "$(get plat "$io_n")" "$work/$io_n.blob" \
      >"$work/$io_n.import" 2>&1; then
    ctr_ images rm "$io_ref" >/dev/null 2>&1 || :
    echo "import failed: $(tail -n 1 "$work/$io_n.import")" > "$work/$io_n.result"
    return 1
  fi
  rm -f "$work/$io_n.blob"
  if ! ctr_ images label "$io_ref" "$PIN=pinned" >/dev/null 2>&1; then
    echo "could not pin $io_ref" > "$work/$io_n.result"
    return 1
  fi
  io_have=$(image_id_of "$io_ref")
  if [ "$io_have" != "$io_want" ]; then
    ctr_ images rm "$io_ref" >/dev/null 2>&1 || :
    echo "after import $io_ref is ${io_have:-absent}, not $io_want; removed" > "$work/$io_n.result"
    return 1
  fi
  log "$(get name "$io_n"): imported $io_ref ($io_want), pinned"
}

# Each import, when it ends, writes "N STATUS" to a FIFO; the main shell reads whichever ends
# first, so a slot is refilled at once rather than after the oldest import.
mkfifo "$work/done" || die "cannot create a FIFO in $work"
exec 3<>"$work/done"
running=0

start_import() {
  si_n=$1
  # the import runs in a subshell of its own: if it dies (OOM, a signal), this small one still
  # reports, so the main shell never waits on the FIFO for a verdict that cannot come
  { si_rc=0; (import_one "$si_n") || si_rc=$?
    echo "$si_n $si_rc" >&3; } &
  echo $! > "$work/$si_n.ipid"
  running=$((running + 1))
}

# Wait for the next import to end and record its verdict.
collect_one() {
  read -r co_n co_rc <&3
  running=$((running - 1))
  wait "$(cat "$work/$co_n.ipid")" 2>/dev/null || :
  rm -f "$work/$co_n.ipid"
  if [ "$co_rc" = 0 ]; then
    eval "state_$co_n=imported"
  else
    fail "$co_n" "$(cat "$work/$co_n.result" 2>/dev/null || echo 'import failed')"
  fi
}

index=0
for n in $queue; do
  index=$((index + 1))
  # keep `parallel` downloads running: start the one `parallel` places ahead
  ahead="" k=0
  for m in $queue; do
    k=$((k + 1))
    if [ "$k" -eq "$((index + parallel))" ]; then ahead=$m; fi
  done
  for m in $n $ahead; do
    if [ ! -f "$work/$m.pid" ] && [ ! -f "$work/$m.done" ]; then
      log "$(get name "$m"): downloading $(get size "$m") bytes"
      start_download "$m"
    fi
  done
  pid=$(cat "$work/$n.pid")
  : > "$work/$n.done"
  if ! wait "$pid"; then
    rm -f "$work/$n.pid"
    fail "$n" "download failed after $retries tries: $(tail -n 1 "$work/$n.err" 2>/dev/null)"
    continue
  fi
  rm -f "$work/$n.pid"
  got=$(cat "$work/$n.sha")
  if [ "$got" != "$(get sha "$n")" ]; then
    fail "$n" "sha256 mismatch: got $got, the lock says $(get sha "$n"); nothing imported"
    continue
  fi
  log "$(get name "$n"): verified sha256 $got"
  if [ "$running" -ge "$imports" ]; then collect_one; fi
  start_import "$n"
done
while [ "$running" -gt 0 ]; do collect_one; done

if [ "$missing" -eq 0 ]; then
  write_status import true
  log "all $count images present"
else
  write_status import false
  log "$missing of $count images missing"
  exit 1
fi
