#!/usr/bin/env bash
# Run the built image the way Apptainer/Singularity does on a cluster, emulated with podman:
#   - as a random uid that has no passwd entry in the image, root file system read-only;
#   - the host's /tmp and a foreign $HOME bound in (Apptainer binds both by default);
#   - the host environment leaking in: PYTHONPATH=/nonexistent:/tmp/evil and ~/.local
#     (PYTHONUSERBASE) holding fake numpy / bids_app / sitecustomize / usercustomize modules,
#     PYTHONSTARTUP, PYTHONHOME, PYTHONWARNINGS=error, OMP_NUM_THREADS=64; PYTHONNOUSERSITE
#     and PYTHONSAFEPATH unset;
#   - no network.
# It checks that the fakes do break a plain `python3` in the image (so the test can fail),
# writes the demo dataset with the image's own msqmri-synth, runs msqmri participant + group
# (--nprocs 2: spawned workers too) under those conditions, and checks exit 0, the outputs,
# that no fake module was ever imported and that nothing was written to $HOME.
# usage: .ci/apptainer_emulation.sh   Environment: IMAGE (default localhost/msqmri:ci, the
# image .ci/run builds), WORK (scratch, default a new directory under /tmp), CONTAINERS_CONF.
set -euo pipefail

IMAGE=${IMAGE:-localhost/msqmri:ci}
# the demo dataset: the 3-D protocol (the .ci/run container run covers the 4-D series)
read -r -a SYNTH_ARGS <<<"${SYNTH_ARGS:---size tiny --subjects 2 --series}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
t0=$(date +%s)
lap() { printf '[time] %-36s %4d s\n' "$1" $(($(date +%s) - t0)); }
fail() { echo "apptainer_emulation: FAILED: $*" >&2; exit 1; }

if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d /tmp/msqmri-apptainer.XXXXXX)
  trap '[ "$?" -eq 0 ] && rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
if [ -z "${CONTAINERS_CONF:-}" ]; then  # as ../shared/ci/build-and-run.sh (runc, ulimits)
  cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF=$WORK/containers.conf
fi
podman image exists "$IMAGE" || fail "no image $IMAGE (build it with .ci/run first)"

# a uid unknown to the image, like a cluster user's
HOST_UID=$((20000 + RANDOM % 40000))
HOME_IN=/home/hostuser
HOSTHOME=$WORK/home
HOSTTMP=$WORK/tmp
rm -rf "$HOSTHOME" "$HOSTTMP" "$WORK/demo" "$WORK/out"
mkdir -p "$HOSTTMP/evil/bids_app" "$WORK/demo" "$WORK/out"

# --- the hostile host: fake modules on PYTHONPATH and in ~/.local ---------------------------
evil() {  # evil FILE NAME: a module that leaves a marker in /tmp, then fails
  printf 'open("/tmp/EVIL_IMPORTED", "a").write("%s\\n")\nraise ImportError("fake %s")\n' \
    "$2" "$2" >"$1"
}
evil "$HOSTTMP/evil/numpy.py" "PYTHONPATH numpy"
evil "$HOSTTMP/evil/bids_app/__init__.py" "PYTHONPATH bids_app"
evil "$HOSTTMP/evil/sitecustomize.py" "PYTHONPATH sitecustomize"
evil "$HOSTTMP/evil/startup.py" "PYTHONSTARTUP"
USERSITE=$HOSTHOME/.local/lib/python3.11/site-packages
mkdir -p "$USERSITE/numpy" "$HOSTHOME/.cache"
evil "$USERSITE/numpy/__init__.py" "user-site numpy"
evil "$USERSITE/usercustomize.py" "usercustomize"
echo "import sys; sys.path.insert(0, '/tmp/evil')" >"$USERSITE/evil.pth"
chown -R "$HOST_UID:$HOST_UID" "$HOSTHOME" "$HOSTTMP" "$WORK/demo" "$WORK/out"
chmod 700 "$HOSTHOME"
home_before=$(cd "$HOSTHOME" && find . | sort | md5sum)

RUN=(
  podman run --rm --read-only --network=none --user "$HOST_UID:$HOST_UID"
  -v "$HOSTHOME:$HOME_IN" -v "$HOSTTMP:/tmp"
  -e HOME="$HOME_IN" -e USER=hostuser -e TMPDIR=/tmp
  -e PYTHONPATH=/nonexistent:/tmp/evil -e PYTHONUSERBASE="$HOME_IN/.local"
  -e PYTHONSTARTUP=/tmp/evil/startup.py -e PYTHONWARNINGS=error
  -e OMP_NUM_THREADS=64 -e OPENBLAS_NUM_THREADS=64
  --unsetenv PYTHONNOUSERSITE --unsetenv PYTHONSAFEPATH
)
HOSTILE=("${RUN[@]}" -e PYTHONHOME=/nonexistent)
echo "image $IMAGE as uid $HOST_UID, HOME=$HOME_IN (bound), /tmp bound, hostile env"

# --- 0. the fakes are effective: a plain python3 of the image breaks ------------------------
if "${RUN[@]}" --entrypoint /opt/msqmri/bin/python3 "$IMAGE" -c "import numpy" \
  >/dev/null 2>&1 || [ ! -e "$HOSTTMP/EVIL_IMPORTED" ]; then
  fail "a plain python3 did not import the fakes: the hostile environment is not hostile"
fi
echo "a plain python3 in this environment imports: $(tr '\n' ';' <"$HOSTTMP/EVIL_IMPORTED")"
rm -f "$HOSTTMP/EVIL_IMPORTED"
lap "hostile environment checked"

# --- 1. version, demo dataset with the image's msqmri-synth ---------------------------------
expected="msqmri $(sed -n 's/^__version__ = "\(.*\)"/\1/p' bids_app/__init__.py 2>/dev/null \
  || true)"
got=$("${HOSTILE[@]}" "$IMAGE" --version) || fail "--version exited $?"
echo "--version: $got"
[ "$expected" = "msqmri " ] || [ "$got" = "$expected" ] || fail "--version: '$got' != '$expected'"
"${HOSTILE[@]}" -v "$WORK/demo:/demo" --entrypoint msqmri-synth "$IMAGE" /demo/bids \
  "${SYNTH_ARGS[@]}" || fail "msqmri-synth exited $?"
lap "demo dataset (msqmri-synth in the image)"

# --- 2. participant + group, dataset read-only ----------------------------------------------
rc=0
"${HOSTILE[@]}" -v "$WORK/demo/bids:/data:ro" -v "$WORK/out:/out" "$IMAGE" /data /out \
  participant group --nprocs 2 --derivatives lesions=/data/derivatives/lesions || rc=$?
[ "$rc" -eq 0 ] || fail "msqmri exited $rc"
lap "participant + group"

# --- 3. checks -------------------------------------------------------------------------------
if [ -e "$HOSTTMP/EVIL_IMPORTED" ]; then
  fail "host modules were imported: $(tr '\n' ';' <"$HOSTTMP/EVIL_IMPORTED")"
fi
[ "$(cd "$HOSTHOME" && find . | sort | md5sum)" = "$home_before" ] \
  || fail "files were written to \$HOME: $(cd "$HOSTHOME" && find . -newer .local | head)"
missing=0
shopt -s globstar nullglob
for pattern in dataset_description.json group_desc-regions_stats.tsv group.html sub-01.html \
  "logs/*/config.toml" "sub-01/**/anat/*_T1map.nii.gz" "sub-01/**/anat/*_label-lesion_mask.nii.gz" \
  "sub-01/**/*_desc-regions_stats.tsv" "sub-02/**/anat/*_T1map.nii.gz"; do
  hits=("$WORK/out"/$pattern)
  [ "${#hits[@]}" -gt 0 ] || { echo "missing output: $pattern" >&2; missing=1; }
done
[ "$missing" -eq 0 ] || fail "outputs missing in $WORK/out"
bad=$(find "$WORK/out" ! -uid "$HOST_UID" | head -3)
[ -z "$bad" ] || fail "outputs not owned by the calling uid: $bad"
grep -q 'omp_nthreads = 1' "$WORK"/out/logs/*/config.toml || fail "config.toml: omp_nthreads"
lap "checks"
echo "apptainer_emulation: OK ($(($(date +%s) - t0)) s)"
