#!/usr/bin/env bash
# The ctools peer: our pull's work done by the fastest C tools at hand, every layer at
# once, to show what the machine gives a program that pays no interpreter at all.
#
#     benchmarks/ctools.sh 127.0.0.1:5000/bench/app:latest OUT
#
# Per layer, two pipelines joined by a fifo:
#
#     curl blob ─▶ tee blob.part, fifo ─▶ openssl sha256          (the digest)
#                            fifo ─▶ igzip -dc (or zstd -dc) ─▶ openssl sha256   (the diffID)
#
# then both hashes checked (digest against the manifest, diffID against the config), the
# blob fsynced (coreutils sync FILE) and renamed into OUT/blobs/sha256: the work `ours`
# does, minus the database. Manifest and config are fetched and hashed first, as ours
# does. Plain HTTP, no auth: the harness's own registry. Exit 1 with a line on stderr
# when anything fails to fetch or verify.
set -euo pipefail

die() {
    echo "ctools: $*" >&2
    exit 1
}

[ $# -eq 2 ] || die "usage: ctools.sh HOST/REPO:TAG OUT"
ref=$1 out=$2
host=${ref%%/*}
path=${ref#*/}
repo=${path%:*}
tag=${path##*:}
[ -n "$host" ] && [ -n "$repo" ] && [ "$repo" != "$path" ] || die "reference $ref is not HOST/REPO:TAG"
base="http://$host/v2/$repo"
blobs=$out/blobs/sha256
work=$out/.work
mkdir -p "$blobs" "$work"

sha256() { openssl dgst -sha256 -r | cut -d' ' -f1; }

# hex_of DIGEST: its hex, when it is sha256:<64 hex> (used in paths), else exit 1
hex_of() {
    [[ $1 =~ ^sha256:[0-9a-f]{64}$ ]] || die "$ref names a digest that is not sha256:<64 hex>: $1"
    echo "${1#sha256:}"
}

accept='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
curl -fsS -H "Accept: $accept" -o "$work/manifest" "$base/manifests/$tag" \
    || die "GET manifest $repo:$tag failed"
manifest_hex=$(sha256 <"$work/manifest")
mv "$work/manifest" "$blobs/$manifest_hex"
manifest=$blobs/$manifest_hex
jq -e '.layers and .config' "$manifest" >/dev/null || die "$ref is not an image manifest"

config_hex=$(hex_of "$(jq -r '.config.digest' "$manifest")")
curl -fsS -o "$work/$config_hex" "$base/blobs/sha256:$config_hex" || die "GET config failed"
[ "$(sha256 <"$work/$config_hex")" = "$config_hex" ] || die "config of $ref does not hash to its digest"
mv "$work/$config_hex" "$blobs/$config_hex"
mapfile -t diff_ids < <(jq -r '.rootfs.diff_ids[]' "$blobs/$config_hex")
mapfile -t layers < <(jq -r '.layers[] | .digest + " " + .mediaType' "$manifest")
[ ${#layers[@]} -eq ${#diff_ids[@]} ] \
    || die "$ref has ${#layers[@]} layers but ${#diff_ids[@]} diff_ids"

pids=()
for entry in "${layers[@]}"; do
    digest=${entry%% *}
    media=${entry#* }
    hex=$(hex_of "$digest")
    [ -e "$work/$hex.fifo" ] && continue # a layer listed twice is fetched once
    case $media in
        *zstd) inflate=(zstd -dcq) ;;
        *gzip) inflate=(igzip -dc) ;;
        *) inflate=(cat) ;;
    esac
    mkfifo "$work/$hex.fifo"
    "${inflate[@]}" <"$work/$hex.fifo" | sha256 >"$work/$hex.diffid" &
    pids+=($!)
    curl -fsS "$base/blobs/$digest" | tee "$work/$hex.part" "$work/$hex.fifo" | sha256 \
        >"$work/$hex.digest" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || die "a layer pipeline of $ref failed"
done

parts=()
for i in "${!layers[@]}"; do
    digest=${layers[$i]%% *}
    hex=${digest#sha256:}
    [ "$(cat "$work/$hex.digest")" = "$hex" ] || die "layer $digest does not hash to its digest"
    [ "sha256:$(cat "$work/$hex.diffid")" = "${diff_ids[$i]}" ] \
        || die "layer $digest does not inflate to diffID ${diff_ids[$i]}"
    parts+=("$work/$hex.part")
done
[ ${#parts[@]} -eq 0 ] || sync "${parts[@]}"
for part in "${parts[@]}"; do
    name=${part##*/}
    mv "$part" "$blobs/${name%.part}"
done
rm -rf "$work"
