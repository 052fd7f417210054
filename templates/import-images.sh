#!/bin/sh
# kiln node importer: puts the images of a kiln lock into containerd, namespace k8s.io, under
# their exact refs and under repo@sha256:<manifest digest> (the name the CRI resolves a
# digest-pinned reference against), both pinned, before kubelet starts. Static: everything per
# environment is in the data file (images.data beside this program, or --data FILE). Each
# image is an OCI archive whose layers are already compressed: it goes to `ctr images import`
# as it was downloaded.
# Needs: curl, ctr (containerd >= 1.5 for zstd layers), sha256sum or openssl. Honours
# CONTAINERD_ADDRESS (ctr's own variable).
#
#   import-images [--check] [--data FILE] [--status FILE] [--retry-state FILE]
#
# Exit 0 when every image is present under both names with the lock's manifest digest and
# image ID, 1 otherwise.
# A download slower than 1 KiB/s for stall_timeout s is abandoned and retried (resuming), with
# a random back-off of 0..min(retry_max_delay, 2^n) s (full jitter; at least Retry-After on
# 429/503); no download outlives the run's import_budget. --retry-state FILE counts failed runs
# (systemd's unit passes it): a run after N failures first waits 0..min(retry_max_delay,
# 10 s * 2^(N-1)), and resumes the partial downloads a failed run kept in FILE.partial/.
# Environment: CONTAINERD_ADDRESS, TMPDIR (downloads), KILN_DATA, KILN_STATUS_FILE, KILN_RETRIES
# (download attempts), KILN_IMPORTS (imports at once, default 2), KILN_CURL_OPTS (extra curl
# options, e.g. --limit-rate 100M), KILN_PLATFORM (os/arch[/variant]: import that platform's
# images instead of the one `uname -m` names).
set -eu

PROG=kiln-import
NS=k8s.io
PIN=io.cri-containerd.pinned
# On every name kiln pins: the environment, the lock it came from, and the name itself (a
# copy made with `ctr images tag` keeps the labels, not the name: it is not kiln's). Images
# without these are not kiln's and are never touched.
OWNER=io.kiln.environment
FROM=io.kiln.lock
NAMED=io.kiln.name
# A name that was pinned before kiln pinned it (by an operator, another environment): when
# kiln lets go of it, it removes its own labels and leaves that pin alone.
ADOPTED=io.kiln.pinned-before
here=$(cd "$(dirname "$0")" && pwd)

data="${KILN_DATA:-$here/images.data}"
status_file="${KILN_STATUS_FILE:-}"
check_only=0
retry_state=""
work=""
checked_dir=""
# A node that holds kiln's public key (put there by its base or golden image, never by the
# user-data) imports only from a data file whose `sig` line verifies with it.
data_key="${KILN_DATA_PUBLIC_KEY:-/etc/kiln/data.pub}"

exec 4>&2  # the journal, for background downloads whose stderr goes to a file
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --check) check_only=1 ;;
    --data) [ $# -ge 2 ] || die "--data needs a file"; data="$2"; shift ;;
    --status) [ $# -ge 2 ] || die "--status needs a file"; status_file="$2"; shift ;;
    --retry-state) [ $# -ge 2 ] || die "--retry-state needs a file"; retry_state="$2"; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
  shift
done

# -- failed runs: counted in --retry-state FILE, for the back-off between runs -------------------
failed_runs=0
if [ -n "$retry_state" ]; then
  failed_runs=$(cat "$retry_state" 2>/dev/null || :)
  case "$failed_runs" in ''|*[!0-9]*) failed_runs=0 ;; esac
  [ "${#failed_runs}" -le 6 ] || failed_runs=0
fi
# A failed run keeps its partial downloads beside the retry state, named by the object's
# sha256, for the next run to resume (bytes, not trust: the whole file is hashed before import).
partials=""
if [ -n "$retry_state" ]; then partials="$retry_state.partial"; fi
# Copied, not moved: a stopped run's curl may still be writing to the file it had open.
keep_partial() {  # N: $work/N.blob.part to $partials/<sha256>
  kp_to="$partials/$(get sha "$1")"
  if [ -n "$partials" ] && [ -s "$work/$1.blob.part" ] && mkdir -p "$partials" 2>/dev/null; then
    if cp "$work/$1.blob.part" "$kp_to.tmp" 2>/dev/null; then mv -f "$kp_to.tmp" "$kp_to"
    else rm -f "$kp_to.tmp"; fi
    rm -f "$work/$1.blob.part"
  fi
}
# A kept partial of image N back into the work folder, if it is no longer than the object.
resume_partial() {
  rp_kept="$partials/$(get sha "$1")"
  [ -n "$partials" ] && [ -f "$rp_kept" ] || return 0
  if [ "$(wc -c < "$rp_kept" | tr -d ' ')" -le "$(get size "$1")" ]; then
    mv -f "$rp_kept" "$work/$1.blob.part" 2>/dev/null || rm -f "$rp_kept"
  else
    rm -f "$rp_kept"
  fi
}
cleanup() {
  if [ -n "$checked_dir" ]; then rm -rf "$checked_dir"; fi
  if [ -n "$work" ]; then
    for partial in "$work"/*.blob.part; do
      if [ -f "$partial" ]; then partial=${partial##*/}; keep_partial "${partial%%.*}"; fi
    done
    for pidfile in "$work"/*.pid "$work"/*.ipid; do
      if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || :; fi
    done
    rm -rf "$work"
  fi
}
on_exit() {
  oe_rc=$?
  cleanup
  if [ -n "$retry_state" ]; then
    if [ "$oe_rc" = 0 ]; then
      rm -f "$retry_state"
    elif mkdir -p "$(dirname "$retry_state")" 2>/dev/null; then
      echo "$((failed_runs + 1))" > "$retry_state" 2>/dev/null || :
    fi
  fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A run killed outright (SIGKILL, the OOM killer, a node powered off mid-download) cannot remove
# its folders, and a rack that power-cycles during the import would fill TMPDIR with them. Each
# folder says whose it is ("PID BOOT_ID PID_NAMESPACE" in owner); every run, --check too, first
# removes those whose run is gone: another boot's, or one of this boot and PID namespace whose
# process no longer exists (a run in another namespace, a container sharing the folder, cannot
# be seen, so it is left). Only this user's folders with an owner line are touched: never a
# link, never another user's.
boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || :)
pid_ns=$(readlink /proc/self/ns/pid 2>/dev/null || :)
claim() { printf '%s %s %s\n' "$$" "$boot_id" "$pid_ns" > "$1/owner" 2>/dev/null || :; }
remove_stale_folders() {
  for rs_dir in "${TMPDIR:-/var/tmp}"/kiln-import.* "${TMPDIR:-/var/tmp}"/kiln-data.*; do
    if [ ! -d "$rs_dir" ] || [ -L "$rs_dir" ] || [ ! -f "$rs_dir/owner" ]; then continue; fi
    [ -n "$(find "$rs_dir" -prune -user "$(id -u)" 2>/dev/null)" ] || continue
    rs_pid="" rs_boot="" rs_ns=""
    read -r rs_pid rs_boot rs_ns 2>/dev/null < "$rs_dir/owner" || :
    case "$rs_pid" in ''|*[!0-9]*) continue ;; esac
    if [ "$rs_boot" = "$boot_id" ]; then
      [ "$rs_ns" = "$pid_ns" ] || continue
      if kill -0 "$rs_pid" 2>/dev/null; then continue; fi
    fi
    # owner last: a removal cut short (Ctrl-C, a file that will not go) is tried again next run
    rs_rest=0
    for rs_file in "$rs_dir"/*; do
      [ "$rs_file" != "$rs_dir/owner" ] || continue
      rm -rf "$rs_file" 2>/dev/null || :
      if [ -e "$rs_file" ] || [ -L "$rs_file" ]; then rs_rest=1; fi
    done
    if [ "$rs_rest" = 0 ] && rm -rf "$rs_dir" 2>/dev/null; then
      log "removed $rs_dir, left by a run that was killed"
    else
      log "warning: could not remove all of $rs_dir (left by a run that was killed); next run tries again"
    fi
  done
}
remove_stale_folders

# -- the data file: `set KEY VALUE`, `image NAME REF DREF ID SHA256 SIZE RAW COMP PLATFORM URL`
env_name=""
format=""
parallel=2
containerd_timeout=300
ca_bundle=""
sigv4=""
sigv4_user=""
sigv4_token=""
retries=8
stall_timeout=60
import_budget=1800
retry_max_delay=20
lock_id=""
count=0
released="" stale_pins=""  # names whose pin this run released; stale pins --check found

# -- the node's platform: only its images are imported -------------------------------------------
machine_platform() {
  case "$(uname -m)" in
    x86_64|amd64) echo linux/amd64 ;;
    aarch64|arm64) echo linux/arm64 ;;
    armv7l|armv7*) echo linux/arm/v7 ;;
    armv6l) echo linux/arm/v6 ;;
    ppc64le) echo linux/ppc64le ;;
    s390x) echo linux/s390x ;;
    riscv64) echo linux/riscv64 ;;
    i386|i686) echo linux/386 ;;
  esac
}
platform="${KILN_PLATFORM:-}"
if [ -n "$platform" ]; then
  # the whole string: os/arch[/variant], lower case (a newline fails the case already)
  case "$platform" in
    *[!a-z0-9/_]*) die "KILN_PLATFORM must be os/arch[/variant], not '$platform'" ;;
  esac
  if [ "${#platform}" -gt 64 ] ||
      ! printf '%s\n' "$platform" | grep -Eqx '[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?'; then
    die "KILN_PLATFORM must be os/arch[/variant], not '$platform'"
  fi
else
  platform=$(machine_platform)
  [ -n "$platform" ] || die "no platform known for machine $(uname -m): set KILN_PLATFORM=os/arch[/variant]"
fi
# Is the data file's platform $1 this node's? (linux/arm serves linux/arm/v7 too)
ours() { [ "$1" = "$platform" ] || [ "${platform#"$1"/}" != "$platform" ]; }
others=""  # NAME=PLATFORM of the lines for other platforms
ours_names=" "

[ -r "$data" ] || die "cannot read the data file $data (render it with: python bake.py render)"
data_read=$data  # what is parsed: the data file, or its checked copy

# The data file without its `sig` line, checked against the signature on that line: only the
# bytes checked are read afterwards (a copy), so nothing can change them in between.
check_signed_data() {
  command -v openssl >/dev/null 2>&1 ||
    die "$data_key is on this node, and openssl is needed to check $data with it"
  checked_dir=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-data.XXXXXX") ||
    die "cannot create a folder to check $data in"
  claim "$checked_dir"
  cp "$data" "$checked_dir/data" || die "cannot read $data"
  [ "$(grep -c '^sig ' "$checked_dir/data" || :)" = 1 ] ||
    die "$data is not signed, and this node imports only data signed for $data_key: nothing imported"
  grep -v '^sig ' "$checked_dir/data" > "$checked_dir/body" || :
  sed -n 's/^sig \([A-Za-z0-9+/=]\{1,4096\}\)$/\1/p' "$checked_dir/data" |
    openssl base64 -d -A > "$checked_dir/sig" 2>/dev/null || :
  openssl dgst -sha256 -verify "$data_key" -signature "$checked_dir/sig" \
      "$checked_dir/body" >/dev/null 2>&1 ||
    die "$data: its signature does not verify with $data_key (changed after kiln signed it, or signed by another key): nothing imported"
  data_read="$checked_dir/body"
  log "the data file's signature verifies with $data_key"
}
if [ -e "$data_key" ]; then check_signed_data; fi
# shellcheck disable=SC2034 # c..k are read by the eval below
while read -r kind a b c d e f g h i j k rest; do
  case "$kind" in
    ''|'#'*) continue ;;
    set)
      case "$a" in
        env) env_name="$b" ;;
        format) format="$b" ;;
        parallel) parallel="$b" ;;
        containerd_timeout) containerd_timeout="$b" ;;
        ca_bundle) ca_bundle="$b" ;;
        retries) retries="$b" ;;
        stall_timeout) stall_timeout="$b" ;;
        import_budget) import_budget="$b" ;;
        retry_max_delay) retry_max_delay="$b" ;;
        lock) lock_id="$b" ;;
        sigv4) sigv4="$b" ;;
        sigv4_user) sigv4_user="$b" ;;
        sigv4_token) sigv4_token="$b" ;;
        *) log "warning: unknown setting $a in $data" ;;
      esac ;;
    image)
      if [ -z "$k" ] || [ -n "$rest" ]; then die "$data: malformed image line for ${a:-?}"; fi
      if ! ours "$i"; then others="$others $a=$i"; continue; fi
      ours_names="$ours_names$a "
      count=$((count + 1))
      # eval assigns from the variables named on the right: values are never re-parsed.
      eval "name_$count=\$a ref_$count=\$b dref_$count=\$c id_$count=\$d sha_$count=\$e"
      eval "size_$count=\$f raw_$count=\$g comp_$count=\$h plat_$count=\$i url_$count=\$j"
      # the digest name and the upstream index's (when the object holds it): names this
      # program pins as root, each checked whole here too: REF's repository @sha256:<64 hex>
      r=${b%@sha256:*}
      case "${r##*/}" in *:*) r=${r%:*} ;; esac
      for x in "$c" "${k#-}"; do  # (k is - when there is no index name)
        [ -n "$x" ] || continue
        y=${x#"$r"@sha256:}
        case "$y" in *[!0-9a-f]*) y="" ;; esac
        if [ "${#y}" -ne 64 ] || [ "$x" != "$r@sha256:$y" ]; then
          die "$data: image $a: '$x' is not a name of $a (${r}@sha256:<64 hex>)"
        fi
      done
      if [ "$k" = - ]; then k=""; fi
      eval "xref_$count=\$k"
      ;;
    sig) ;;  # the data file's signature (checked above when this node holds the key)
    *) die "$data: unknown line kind: $kind" ;;
  esac
done < "$data_read"
[ "$format" = oci-archive+index ] ||
  die "$data is for another importer (format ${format:-docker-archive}): render it and this program again with the same kiln"
# The images the lock has for other platforms only: each is missing here, named in one line.
lacking=""
for entry in $others; do
  case "$ours_names$lacking " in *" ${entry%%=*} "*) continue ;; esac
  lacking="${lacking:+$lacking }${entry%%=*}"
done
platforms_of() {  # the platforms the data file lists image $1 for, comma-separated
  po_out=""
  for po_e in $others; do
    if [ "${po_e%%=*}" = "$1" ]; then po_out="${po_out:+$po_out,}${po_e#*=}"; fi
  done
  printf '%s' "$po_out"
}
for name in $lacking; do
  log "$name: the lock has no image for this node's platform $platform (only $(platforms_of "$name"))"
done
if [ "$count" -eq 0 ] && [ -z "$lacking" ]; then die "$data lists no images"; fi
case "$ca_bundle" in
  ''|/*) ;;
  *) ca_bundle="$(cd "$(dirname "$data")" && pwd)/$ca_bundle" ;;  # beside the data file
esac
case "$parallel" in ''|*[!0-9]*|0) parallel=1 ;; esac
imports=${KILN_IMPORTS:-2}
case "$imports" in ''|*[!0-9]*|0) imports=2 ;; esac
retries="${KILN_RETRIES:-$retries}"
# numbers only: these reach curl's options and the shell's arithmetic ($((010)) would be 8)
value=""
for setting in containerd_timeout retries stall_timeout import_budget retry_max_delay; do
  eval "value=\$$setting"
  case "$value" in
    ''|*[!0-9]*|0*) die "$data: $setting must be a whole number of seconds above 0, not '$value'" ;;
  esac
  [ "${#value}" -le 7 ] || die "$data: $setting is out of range: $value"
done

get() { eval "printf '%s' \"\$${1}_$2\""; }

# >>> backoff (tests run these functions on their own: keep them self-contained)
random_source=${KILN_RANDOM_SOURCE:-/dev/urandom}
# A random whole number 0..$1 (POSIX sh has no $RANDOM).
random_upto() {
  ru_r=$(od -An -N4 -tu4 "$random_source" 2>/dev/null | tr -dc '0-9')
  echo $(( ${ru_r:-$$} % ($1 + 1) ))
}
# Full jitter: milliseconds, random in 0..min(cap, base * 2^n); base and cap in seconds.
backoff_ms() {  # base cap n
  bo_bound=$(( $1 * 1000 )) bo_cap=$(( $2 * 1000 )) bo_i=0
  while [ "$bo_i" -lt "$3" ] && [ "$bo_bound" -lt "$bo_cap" ]; do
    bo_bound=$(( bo_bound * 2 )) bo_i=$(( bo_i + 1 ))
  done
  [ "$bo_bound" -le "$bo_cap" ] || bo_bound=$bo_cap
  random_upto "$bo_bound"
}
# Sleep $1 milliseconds (whole seconds where sleep takes no fraction).
sleep_ms() {
  sleep "$(( $1 / 1000 )).$(printf '%03d' $(( $1 % 1000 )))" 2>/dev/null || sleep "$(( $1 / 1000 ))"
}
# <<< backoff

# >>> curl config (tests run this on its own)
# A value for curl's config file (-K): double-quoted, with backslash and quote escaped. URLs and
# credentials go to curl this way, on stdin: on its command line `ps` would show them.
curl_quote() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
# <<< curl config

now() { date +%s; }  # not POSIX, but GNU, busybox and BSD date all have %s
# Seconds since boot, for waits at boot: NTP may step the wall clock just then (the wall
# clock where there is no /proc/uptime).
since_boot() {
  sb_up=""
  read -r sb_up _ < /proc/uptime 2>/dev/null || :
  sb_up=${sb_up%%.*}
  case "$sb_up" in ''|*[!0-9]*) now ;; *) printf '%s\n' "$sb_up" ;; esac
}

ctr_() { ctr -n "$NS" "$@"; }

# `ctr images ls` of every name the data file lists, read once for the first look (one ctr
# call instead of one per name); empty otherwise.
known=""

# The manifest digest the image named $1 points at, or nothing.
# A name read twice in the shared listing (another tool's label text with a newline can read
# as a row) is asked for alone, where its own row comes first.
target_of() {
  if [ -n "$known" ] && [ "$(printf '%s\n' "$known" | awk -v n="$1" 'NR > 1 && $1 == n' |
      wc -l)" -le 1 ]; then
    printf '%s\n' "$known" | awk -v n="$1" 'NR > 1 && $1 == n { print $3; exit }'
    return 0
  fi
  ctr_ images ls "name==$1" 2>/dev/null | awk 'NR > 1 { print $3; exit }'
}

# The config digest (image ID) the manifest $1 names, or nothing.
config_of() {
  ctr_ content get "$1" 2>/dev/null | tr -d ' \t\n' |
    sed -n 's/.*"config":{[^}]*"digest":"\(sha256:[0-9a-f]\{64\}\)".*/\1/p'
}

# Does image $1 carry label $2 (KEY=VALUE)? Asked through a filter, not by parsing the LABELS
# column, which is ambiguous when another tool's label value holds a space or a comma.
has_label() {
  ctr_ images ls -q "name==$1,labels.\"${2%%=*}\"==${2#*=}" 2>/dev/null | grep -qxF -- "$1"
}

is_pinned() { has_label "$1" "$PIN=pinned"; }

# What containerd holds of image N: present (ref and digest name both on the lock's manifest,
# whose config is the lock's image ID), missing, wrong-image-id, wrong-digest (the same image
# under another manifest: imported from another archive), missing-digest-ref or
# missing-index-ref (the upstream index's name, which only an import of the object gives).
state_of() {
  so_ref=$(get ref "$1") so_dref=$(get dref "$1")
  so_digest=${so_dref##*@}
  so_target=$(target_of "$so_ref")
  if [ -z "$so_target" ]; then echo missing; return 0; fi
  if [ "$(config_of "$so_target")" != "$(get id "$1")" ]; then echo wrong-image-id; return 0; fi
  if [ "$so_target" != "$so_digest" ]; then echo wrong-digest; return 0; fi
  if [ "$(target_of "$so_dref")" != "$so_digest" ]; then echo missing-digest-ref; return 0; fi
  so_xref=$(get xref "$1")
  if [ -n "$so_xref" ] && [ "$(target_of "$so_xref")" != "${so_xref##*@}" ]; then
    echo missing-index-ref; return 0  # imported from an object without the index: again
  fi
  echo present
}

# Name image N's manifest repo@sha256:<digest> too (from its ref, already checked), and pin
# both names, with kiln's labels (the environment, the lock). $2, when given: what the digest
# name points at now (the caller has just looked). A name someone else pinned first (an
# operator, another environment; before this run or during it) is marked adopted.
name_and_pin() {
  np_ref=$(get ref "$1") np_dref=$(get dref "$1")
  if [ $# -ge 2 ]; then np_has=$2; else np_has=$(target_of "$np_dref"); fi
  if [ "$np_has" != "${np_dref##*@}" ]; then
    ctr_ images tag --force "$np_ref" "$np_dref" >/dev/null 2>&1 || return 1
  fi
  np_xref=$(get xref "$1")
  # which of the names are pinned now, in one ctr call: only those can be someone else's pin
  # (a failed call: each name is asked alone)
  np_pinned=$(ctr_ images ls -q "name==$np_ref,labels.\"$PIN\"==pinned" \
    "name==$np_dref,labels.\"$PIN\"==pinned" \
    ${np_xref:+"name==$np_xref,labels.\"$PIN\"==pinned"} 2>/dev/null) || np_pinned="?"
  for np_name in "$np_ref" "$np_dref" ${np_xref:+"$np_xref"}; do
    np_adopt=""
    if { { [ "$np_pinned" = "?" ] && is_pinned "$np_name"; } ||
        printf '%s\n' "$np_pinned" | grep -qxF -- "$np_name"; } &&
        ! has_label "$np_name" "$OWNER=$env_name"; then
      np_adopt="$ADOPTED=true"
    fi
    ctr_ images label "$np_name" "$PIN=pinned" "$OWNER=$env_name" "$FROM=${lock_id:-unknown}" \
      "$NAMED=$np_name" ${np_adopt:+"$np_adopt"} >/dev/null 2>&1 || return 1
  done
}

# The names kiln pinned for this environment that the data file no longer lists, one a line:
# an earlier release's. Images kiln did not pin (no $OWNER label) are never listed.
stale_pins() {
  [ -n "$env_name" ] || return 0
  ctr_ images ls -q "labels.\"$OWNER\"==$env_name" 2>/dev/null | while IFS= read -r sp_name; do
    if ! printf '%s\n' "$listed" | grep -qxF -- "$sp_name" && is_pinned "$sp_name" &&
        has_label "$sp_name" "$NAMED=$sp_name"; then
      printf '%s\n' "$sp_name"
    fi
  done
}

# Release the pin of each stale name: never the image itself (a running pod may use it);
# kubelet's image GC reclaims it when nothing does. Logged, and listed in the status file.
# The status lists only the pins actually released; one that could not be is logged, left
# in stale_pins (--check and verify keep reporting it) and tried again at the next run.
release_stale() {
  released="" stale_pins=""
  for rs_name in $(stale_pins); do
    if has_label "$rs_name" "$ADOPTED=true"; then
      if ctr_ images label "$rs_name" "$OWNER=" "$FROM=" "$NAMED=" "$ADOPTED=" >/dev/null 2>&1
      then
        log "$rs_name: no longer in the lock; it was pinned before kiln: pin kept, kiln's labels removed"
      else
        stale_pins="$stale_pins $rs_name"
        log "warning: $rs_name: no longer in the lock, and kiln's labels could not be removed"
      fi
      continue
    fi
    if ctr_ images label "$rs_name" "$PIN=" >/dev/null 2>&1 && ! is_pinned "$rs_name"; then
      released="$released $rs_name"
      log "$rs_name: no longer in the lock: pin released (kubelet's image GC may reclaim it)"
    else
      stale_pins="$stale_pins $rs_name"
      log "warning: $rs_name: no longer in the lock, and its pin could not be released"
    fi
  done
}

# -- status: one JSON file, written atomically -------------------------------------------------
json_escape() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }

# `, "KEY": ["a", "b"]`
json_list() {
  printf ', "%s": [' "$1"; shift
  jl_sep=""
  for jl_name in "$@"; do printf '%s"%s"' "$jl_sep" "$(json_escape "$jl_name")"; jl_sep=", "; done
  printf ']'
}

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
      printf '{"name": "%s", "ref": "%s", "digest_ref": "%s", "image_id": "%s", "state": "%s"}' \
        "$(json_escape "$(get name "$ws_n")")" "$(json_escape "$(get ref "$ws_n")")" \
        "$(json_escape "$(get dref "$ws_n")")" "$(get id "$ws_n")" "$(get state "$ws_n")"
      ws_n=$((ws_n + 1))
    done
    printf ']'
    # shellcheck disable=SC2086 # one name a word: names have no white space or glob
    json_list released $released
    # shellcheck disable=SC2086
    json_list stale_pins $stale_pins
    # shellcheck disable=SC2086
    json_list missing_platform $lacking
    printf ', "platform": "%s"' "$(json_escape "$platform")"
    printf '}\n'
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

if [ "$count" -eq 0 ]; then  # nothing at all for this platform: say so, touch nothing
  write_status "$([ "$check_only" = 1 ] && echo check || echo import)" false
  die "the lock has no image for this node's platform $platform (bake with platforms: [..., $platform])"
fi

# -- containerd ---------------------------------------------------------------------------------
command -v ctr >/dev/null 2>&1 || die "ctr is not installed (it comes with containerd)"
# by the clock (since boot): one `ctr version` can take 10 s to fail (its dial timeout, no
# socket yet)
waited=0 wait_end=$(( $(since_boot) + containerd_timeout ))
until ctr version >/dev/null 2>&1; do
  if [ "$(since_boot)" -ge "$wait_end" ]; then
    die "containerd did not answer at ${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock} within ${containerd_timeout}s"
  fi
  if [ "$waited" = 0 ]; then
    log "waiting for containerd at ${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
    waited=1
  fi
  sleep 1
done

# -- what is already there ----------------------------------------------------------------------
listed=$(n=1; while [ "$n" -le "$count" ]; do get ref "$n"; echo; get dref "$n"; echo
         x=$(get xref "$n"); if [ -n "$x" ]; then echo "$x"; fi; n=$((n + 1)); done)
# shellcheck disable=SC2086 # one name a word
lacking_n=$(set -- $lacking; echo $#)
# shellcheck disable=SC2046 # one filter a name: names have no white space or glob
known=$(ctr_ images ls $(printf '%s\n' "$listed" | sed 's/^/name==/') 2>/dev/null) || known=""
missing=$lacking_n
need_list=""
name="" ref="" dref="" want="" xref="" fresh=0
if [ -n "$known" ] && [ "$(printf '%s\n' "$known" | wc -l)" -le 1 ]; then fresh=1; fi
n=1
while [ "$n" -le "$count" ]; do
  eval "name=\$name_$n ref=\$ref_$n dref=\$dref_$n want=\$id_$n xref=\$xref_$n"
  if [ "$fresh" = 1 ]; then
    state=missing  # containerd has none of the names (a new node): nothing more to ask
  else
    state=$(state_of "$n")
  fi
  if [ "$state" = missing-digest-ref ] && [ "$check_only" = 0 ]; then
    # the image is there (an older kiln imported it): name its digest too, no download
    if name_and_pin "$n"; then state=present; log "$name: named $dref"; fi
  fi
  if [ "$state" = present ]; then
    if [ "$check_only" = 1 ]; then
      if is_pinned "$ref" && is_pinned "$dref" && { [ -z "$xref" ] || is_pinned "$xref"; }; then
        eval "state_$n=present"; log "$name: present $ref and $dref ($want), pinned"
      else
        eval "state_$n=unpinned"; missing=$((missing + 1)); log "$name: present but not pinned"
      fi
    elif name_and_pin "$n"; then
      eval "state_$n=present"; log "$name: present $ref and $dref ($want), pinned"
    else
      die "$name: cannot pin $ref and $dref"
    fi
  else
    eval "state_$n=\$state"
    case "$state" in
      wrong-*) log "$name: $ref is $(target_of "$ref") (image $(config_of "$(target_of "$ref")")), the lock says ${dref##*@} (image $want)" ;;
    esac
    need_list="$need_list $n"
  fi
  n=$((n + 1))
done
known=""

if [ "$check_only" = 1 ]; then
  for n in $need_list; do
    missing=$((missing + 1)); log "$(get name "$n"): $(get state "$n") $(get ref "$n")"
  done
  stale_pins=$(stale_pins) stale=0
  for n in $stale_pins; do
    stale=$((stale + 1)); log "$n: stale-pin: kiln pinned it for $env_name, the lock no longer lists it"
  done
  if [ "$missing" -eq 0 ] && [ "$stale" -eq 0 ]; then
    write_status check true; log "all $count images present"; exit 0
  fi
  write_status check false
  if [ "$stale" -gt 0 ]; then
    log "$missing of $((count + lacking_n)) images not as the lock says; $stale stale pins"
  else
    log "$missing of $((count + lacking_n)) images not as the lock says"
  fi
  exit 1
fi

if [ -z "$need_list" ] && [ -n "$lacking" ]; then
  write_status import false
  die "$missing image(s) have no image for this node's platform $platform: $lacking"
fi
if [ -z "$need_list" ]; then
  if [ -n "$partials" ]; then rm -rf "$partials"; fi
  release_stale
  write_status import true
  log "all $count images present: nothing to do"
  exit 0
fi

# A retried run waits first, so a rack of nodes that failed together does not retry together.
if [ "$failed_runs" -gt 0 ]; then
  pause=$(backoff_ms 10 "$retry_max_delay" "$((failed_runs - 1))")
  log "run after $failed_runs failed runs: waiting $((pause / 1000)).$(printf '%03d' $((pause % 1000)))s first (back-off)"
  sleep_ms "$pause"
fi

# -- room for the downloads ---------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-import.XXXXXX") || die "cannot create a work folder"
claim "$work"

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
# No download outlives the budget: each attempt's --max-time is what is left of it.
deadline=$(( $(now) + import_budget ))
budget_spent=0

# The status code and the Retry-After seconds of the last response in a --dump-header file
# (several with redirects). An HTTP-date Retry-After is ignored: nodes keep no trusted clock
# before they join, and the jittered back-off still applies.
# >>> retry-after (tests run these functions on their own)
last_status() { awk '/^HTTP\//{ c = $2 } END { print c }' "$1" 2>/dev/null || :; }
retry_after() {
  ra=$(awk '/^HTTP\//{ v = "" }
    index(tolower($0), "retry-after:") == 1 { v = substr($0, 13); gsub(/[ \t\r]/, "", v) }
    END { print v }' "$1" 2>/dev/null || :)
  case "$ra" in ''|*[!0-9]*) return 0 ;; esac
  ra=${ra#"${ra%%[!0]*}"}  # no leading zeros: $((08)) is an error in sh, $((010)) is 8
  [ -n "$ra" ] || ra=0
  [ "${#ra}" -le 9 ] || ra=999999999  # longer than any budget: give up this image for the run
  printf '%s' "$ra"
}
# <<< retry-after

# curl's config for $1 on stdout (URL, credentials): curl reads it on stdin (-K -), never argv.
curl_config() {
  printf 'url = %s\n' "$(curl_quote "$1")"
  if [ -n "$sigv4" ]; then
    printf 'user = %s\n' "$(curl_quote "$sigv4_user")"
    # S3 (radosgw, AWS) refuses a SigV4 request without this header, which curl 7.88
    # (Debian 12) does not add; curl signs it with the others
    printf 'header = %s\n' "$(curl_quote "x-amz-content-sha256: UNSIGNED-PAYLOAD")"
    if [ -n "$sigv4_token" ]; then
      printf 'header = %s\n' "$(curl_quote "x-amz-security-token: $sigv4_token")"
    fi
  fi
}

# One GET (config on stdin) for the download at $1 (its headers to $1.hdr); more curl options
# after it. Uses $left, the seconds left of the budget.
# shellcheck disable=SC2086 # KILN_CURL_OPTS is a list of curl options on purpose
curl_get() {
  cg_out=$1; shift
  curl --fail --silent --show-error --location \
    --connect-timeout "$(( left < 10 ? left : 10 ))" --max-time "$left" \
    --speed-limit 1024 --speed-time "$stall_timeout" --dump-header "$cg_out.hdr" \
    ${ca_bundle:+--cacert "$ca_bundle"} ${sigv4:+--aws-sigv4 "$sigv4"} ${KILN_CURL_OPTS:-} \
    -K - "$@"
}

# One download, in the background: retries with back-off, resuming the partial file. Its last
# line on stderr is its verdict.
download() {
  url=$1 out=$2 size=$3 dl_name=$4 dl_err=$5
  attempt=1
  while :; do
    left=$(( deadline - $(now) ))
    if [ "$left" -le 0 ]; then
      echo "import budget of ${import_budget}s spent after $((attempt - 1)) tries"; return 1
    fi
    rc=0
    rm -f "$out.hdr"
    if [ -s "$out.part" ]; then  # resume: curl appends
      curl_config "$url" | curl_get "$out" -C - -o "$out.part" || rc=$?
    else
      curl_config "$url" | curl_get "$out" -o "$out.part" || rc=$?
    fi
    [ "$rc" -eq 0 ] && break
    # a finished file answers a resume with 416: it is complete, not failed
    if [ -f "$out.part" ] && [ "$(wc -c < "$out.part" | tr -d " ")" -eq "$size" ]; then break; fi
    # a server that cannot resume (33): start this file again from its first byte
    if [ "$rc" -eq 33 ]; then rm -f "$out.part"; fi
    if [ "$attempt" -ge "$retries" ]; then echo "download failed after $attempt tries"; return 1; fi
    pause=$(backoff_ms 1 "$retry_max_delay" "$((attempt - 1))")
    code=$(last_status "$out.hdr")
    case "$code" in
      429|503)
        wait_s=$(retry_after "$out.hdr")
        if [ -n "$wait_s" ]; then
          if [ "${#wait_s}" -gt 7 ] || [ "$wait_s" -ge "$(( deadline - $(now) ))" ]; then
            echo "the store answered $code, retry after ${wait_s}s: past the import budget (${import_budget}s)"
            return 1
          fi
          pause=$(( pause + wait_s * 1000 ))
        fi ;;
    esac
    if [ "$(( $(now) * 1000 + pause ))" -ge "$(( deadline * 1000 ))" ]; then
      echo "import budget of ${import_budget}s spent after $attempt tries"; return 1
    fi
    # to the journal at once (this shell's stderr is the image's error file)
    log "$dl_name: try $attempt failed ($(grep '^curl: ' "$dl_err" 2>/dev/null | tail -n 1 || :)${code:+, HTTP $code}), next in $((pause / 1000)).$(printf '%03d' $((pause % 1000)))s" 2>&4
    sleep_ms "$pause"
    attempt=$((attempt + 1))
  done
  rm -f "$out.hdr"
  mv -f "$out.part" "$out"
}

# In the background: download, then hash (so hashing overlaps the previous import).
# (POSIX sh has no local variables: functions here use their own prefixed names.)
# shellcheck disable=SC2094 # download reads its error file for a log line after curl wrote it
start_download() {
  sd_n=$1
  resume_partial "$sd_n"
  (download "$(get url "$sd_n")" "$work/$sd_n.blob" "$(get size "$sd_n")" \
    "$(get name "$sd_n")" "$work/$sd_n.err" &&
    sha256_of "$work/$sd_n.blob" > "$work/$sd_n.blob.sha"
  ) >"$work/$sd_n.err" 2>&1 &
  echo $! > "$work/$sd_n.pid"
}

fail() {  # n reason
  eval "state_$1=failed"
  missing=$((missing + 1))
  log "$(get name "$1"): FAILED: $2"
  keep_partial "$1"
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
# (asked while the first downloads run: the first import needs it)
local_flag=""
if ctr images import --help 2>&1 | grep -q -- '--local'; then local_flag="--local"; fi

# What the names $1 and $2 point at: "NAME DIGEST" lines (one ctr call for both).
targets_of() { ctr_ images ls "name==$1" "name==$2" 2>/dev/null | awk 'NR > 1 { print $1, $3 }'; }
pick() { printf '%s\n' "$1" | awk -v n="$2" '$1 == n { print $2; exit }'; }

# One import, in the background (two run at once: containerd unpacks on both cores). When
# `ctr import` ends it says "N slot" on the FIFO (the next import may start while this one
# checks, names and pins); its verdict goes to $work/N.result, and the main shell records it.
import_one() {
  io_n=$1
  io_ref=$(get ref "$io_n")
  io_dref=$(get dref "$io_n")
  io_want=$(get id "$io_n")
  io_xref=$(get xref "$io_n")  # the upstream index's name, given by the import itself
  io_rc=0
  # shellcheck disable=SC2086 # $local_flag is a word or nothing on purpose
  ctr_ images import $local_flag --platform "$(get plat "$io_n")" "$work/$io_n.blob" \
    >"$work/$io_n.import" 2>&1 || io_rc=$?
  echo "$io_n slot" >&3
  if [ "$io_rc" != 0 ]; then
    ctr_ images rm "$io_ref" ${io_xref:+"$io_xref"} >/dev/null 2>&1 || :
    echo "import failed: $(tail -n 1 "$work/$io_n.import")" > "$work/$io_n.result"
    return 1
  fi
  rm -f "$work/$io_n.blob"
  # the ref must be the lock's manifest and image ID before the digest is named after it
  io_names=$(targets_of "$io_ref" "$io_dref")
  io_target=$(pick "$io_names" "$io_ref")
  io_have=$(config_of "$io_target")
  if [ "$io_target" != "${io_dref##*@}" ] || [ "$io_have" != "$io_want" ] || {
      [ -n "$io_xref" ] && [ "$(target_of "$io_xref")" != "${io_xref##*@}" ]; }; then
    ctr_ images rm "$io_ref" ${io_xref:+"$io_xref"} >/dev/null 2>&1 || :
    echo "after import $io_ref is ${io_target:-absent} (image ${io_have:-none}), not ${io_dref##*@} (image $io_want)${io_xref:+, or $io_xref is not that index}; removed" > "$work/$io_n.result"
    return 1
  fi
  # then both names must point at it (the manifest is content-addressed: its config was just
  # checked)
  if ! name_and_pin "$io_n" "$(pick "$io_names" "$io_dref")" ||
      ! io_names=$(targets_of "$io_ref" "$io_dref") ||
      [ "$(pick "$io_names" "$io_ref")" != "${io_dref##*@}" ] ||
      [ "$(pick "$io_names" "$io_dref")" != "${io_dref##*@}" ]; then
    echo "could not name and pin $io_ref and $io_dref" > "$work/$io_n.result"
    return 1
  fi
  log "$(get name "$io_n"): imported $io_ref and $io_dref (image $io_want), pinned"
}

# Each import, when it ends, writes "N STATUS" to a FIFO (and "N slot" before, when its
# `ctr import` ended); the main shell reads whichever comes first, so a slot is refilled at
# once rather than after the oldest import.
mkfifo "$work/done" || die "cannot create a FIFO in $work"
exec 3<>"$work/done"
running=0  # imports in `ctr import`
pending=0  # imports without a verdict yet

start_import() {
  si_n=$1
  # the import runs in a subshell of its own: if it dies (OOM, a signal), this small one still
  # reports, so the main shell never waits on the FIFO for a verdict that cannot come
  { si_rc=0; (import_one "$si_n") || si_rc=$?
    echo "$si_n $si_rc" >&3; } &
  echo $! > "$work/$si_n.ipid"
  running=$((running + 1)) pending=$((pending + 1))
}

# Wait for the next message of an import: a free slot, or a verdict to record.
collect_one() {
  read -r co_n co_rc <&3
  if [ "$co_rc" = slot ]; then
    : > "$work/$co_n.slot"; running=$((running - 1)); return 0
  fi
  # (an import that died inside `ctr import` said no "slot")
  if [ ! -f "$work/$co_n.slot" ]; then running=$((running - 1)); fi
  pending=$((pending - 1))
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
  # keep `parallel` downloads running: the one `parallel` places ahead starts when this one
  # has arrived (not before: more at once would only share the link, or the CPU on a fast one,
  # and delay the file the next import waits for)
  ahead="" k=0
  for m in $queue; do
    k=$((k + 1))
    if [ "$k" -eq "$((index + parallel))" ]; then ahead=$m; fi
  done
  for m in $n; do
    if [ ! -f "$work/$m.pid" ] && [ ! -f "$work/$m.done" ]; then
      log "$(get name "$m"): downloading $(get size "$m") bytes"
      start_download "$m"
    fi
  done
  pid=$(cat "$work/$n.pid")
  : > "$work/$n.done"
  dl_rc=0
  wait "$pid" || dl_rc=$?
  for m in $ahead; do
    if [ ! -f "$work/$m.pid" ] && [ ! -f "$work/$m.done" ]; then
      log "$(get name "$m"): downloading $(get size "$m") bytes"
      start_download "$m"
    fi
  done
  if [ "$dl_rc" != 0 ]; then
    rm -f "$work/$n.pid"
    verdict=$(tail -n 1 "$work/$n.err" 2>/dev/null || :)
    case "$verdict" in *budget*) budget_spent=1 ;; esac
    last_error=$(grep '^curl: ' "$work/$n.err" 2>/dev/null | tail -n 1 || :)
    fail "$n" "${verdict:-download failed}${last_error:+: $last_error}"
    continue
  fi
  rm -f "$work/$n.pid"
  got=$(cat "$work/$n.blob.sha" 2>/dev/null || :)
  case "$got" in *[!0-9a-f]*) got="" ;; esac
  if [ "${#got}" -ne 64 ]; then  # the hasher failed (a read error, no space): not the bytes
    mv -f "$work/$n.blob" "$work/$n.blob.part" 2>/dev/null || :  # kept for the next run
    fail "$n" "could not hash the download ($(grep -v '^curl: ' "$work/$n.err" 2>/dev/null | tail -n 1 || :)); nothing imported"
    continue
  fi
  if [ "$got" != "$(get sha "$n")" ]; then
    fail "$n" "sha256 mismatch: got $got, the lock says $(get sha "$n"); nothing imported"
    continue
  fi
  log "$(get name "$n"): verified sha256 $got"
  while [ "$running" -ge "$imports" ]; do collect_one; done
  start_import "$n"
done
while [ "$pending" -gt 0 ]; do collect_one; done

if [ "$missing" -eq 0 ]; then
  if [ -n "$partials" ]; then rm -rf "$partials"; fi
  release_stale  # only once every listed image is here: a failed upgrade keeps the old pinned
  write_status import true
  log "all $count images present"
else
  write_status import false
  reason=""
  if [ "$budget_spent" = 1 ]; then reason=": the import budget of ${import_budget}s (node.import_budget) is spent"; fi
  log "error: $missing of $((count + lacking_n)) images missing$reason${retry_state:+; systemd runs the import again}"
  exit 1
fi
