# msqmri container image: `ENTRYPOINT ["msqmri"]`, BIDS-Apps style.
#
#   docker run --rm --read-only --tmpfs /tmp --user "$(id -u):$(id -g)" \
#       -v /path/to/bids:/data:ro -v /path/to/out:/out msqmri/msqmri:0.1.0 \
#       /data /out participant group
#   apptainer run --cleanenv --containall -B /path/to/bids:/data:ro -B /path/to/out:/out \
#       docker://msqmri/msqmri:0.1.0 /data /out participant
#
# The image runs read-only as any uid and writes nothing inside itself or the input dataset:
# - msqmri keeps all its scratch under --work-dir (default OUTPUT_DIR/.msqmri-work): the
#   validator's HOME/DENO_DIR/cache and MPLCONFIGDIR are set there at run time (MPLCONFIGDIR
#   is therefore deliberately not set here); outputs are written atomically next to their
#   destination (no temporary files in /tmp);
# - for anything else (other entrypoints, libraries) HOME, TMPDIR and XDG_CACHE_HOME default
#   to /tmp: a tmpfs with `docker run --read-only --tmpfs /tmp`; Apptainer binds the host's
#   /tmp (a private one with --containall) and replaces HOME by the user's;
# - pybids indexes into an in-memory SQLite database (no database_path);
# - bytecode is compiled at build time (unchecked-hash .pyc) and PYTHONDONTWRITEBYTECODE is set,
#   so Python never writes __pycache__.
#
# Threads: numerical libraries are capped at one thread (--omp-nthreads, default 1);
# msqmri parallelises with --nprocs worker processes.
#
# The host environment cannot change the Python that runs (Apptainer passes the host's
# environment and binds $HOME unless --cleanenv/--containall): every console script runs
# `python3 -IBu` (isolated: PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, ~/.local and the user site
# are ignored; -B -u replace PYTHONDONTWRITEBYTECODE and PYTHONUNBUFFERED, which -I ignores),
# and its worker processes inherit the flags. PYTHONNOUSERSITE and PYTHONSAFEPATH cover a
# `python3` started by hand. Tested by .ci/apptainer_emulation.sh.

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS build

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# Pinned runtime dependencies: the versions the test suite runs against (numpy, scipy,
# nibabel, pybids, dipy, scikit-image, pandas, bids-validator-deno and everything they pull in).
# Update this list together with the development environment.
RUN printf '%s\n' \
      numpy==2.4.6 scipy==1.17.1 nibabel==5.4.2 pybids==0.22.0 dipy==1.12.1 \
      scikit-image==0.26.0 pandas==3.1.1 bids-validator-deno==3.0.2 deno==2.9.8 \
      acres==0.5.0 annotated-doc==0.0.7 annotated-types==0.8.0 bids-validator==1.14.7.post0 \
      bidsschematools==2.0.1 cachebox==5.2.3 click==8.5.1 deepdiff==9.1.0 docopt==0.6.2 \
      formulaic==1.2.2 frozendict==2.5.1 fsspec==2026.9.0 h5py==3.16.0 imageio==2.38.1 \
      importlib-resources==7.1.0 interface-meta==2.0.1 lazy-loader==0.6 \
      markdown-it-py==4.3.0 mdurl==0.1.2 narwhals==2.29.0 networkx==3.6.1 num2words==0.5.14 \
      orderly-set==5.5.0 packaging==26.4 pathlib-abc==0.5.2 pillow==13.0.0 \
      pydantic==2.14.4 pydantic-core==2.50.5 pygments==2.21.0 python-dateutil==4.0.0 \
      pyyaml==6.0.4 rich==15.0.0 shellingham==1.5.4 sqlalchemy==2.1.9 tifffile==2026.3.3 \
      tqdm==4.70.1 trx-python==0.6 typer==0.29.2 typing-extensions==4.16.0 \
      typing-inspection==0.4.5 threadpoolctl==3.8.0 neurocombat==0.2.12 tzdata==2026.6 universal-pathlib==0.3.10 wrapt==2.5.2 \
      matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 \
      pyparsing==3.3.3 jinja2==3.1.6 markupsafe==3.0.4 \
      > /opt/constraints.txt

COPY pyproject.toml README.md LICENSE /src/
COPY bids_app /src/bids_app

# Install, record the exact environment, drop the installers and the packages' own test
# suites (~125 MB), check the scientific stack still imports, then compile all bytecode.
RUN python3 -m venv /opt/msqmri \
 && /opt/msqmri/bin/pip install --no-cache-dir --no-compile --prefer-binary \
      -c /opt/constraints.txt '/src[harmonize]' bids-validator-deno \
 && /opt/msqmri/bin/pip freeze --all > /opt/msqmri/pip-freeze.txt \
 && /opt/msqmri/bin/pip uninstall -y -q pip setuptools \
 && find /opt/msqmri/lib/python3.11/site-packages -depth -type d \
      \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
 && /opt/msqmri/bin/python -c "import numpy, scipy.optimize, scipy.ndimage, nibabel, bids, \
dipy.reconst.dti, dipy.align, skimage.filters, skimage.measure, skimage.morphology, pandas, \
bids_app" \
 && find /opt/msqmri -depth -type d -name __pycache__ -exec rm -rf {} + \
 && /opt/msqmri/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      /opt/msqmri/lib/python3.11/site-packages \
 && for f in /opt/msqmri/bin/*; do \
      if head -c 64 "$f" | grep -q '^#!/opt/msqmri/bin/python'; then \
        sed -i '1s|^#!\(/opt/msqmri/bin/python[0-9.]*\).*$|#!\1 -IBu|' "$f"; \
      fi; \
    done \
 && head -1 /opt/msqmri/bin/msqmri | grep -qx '#!/opt/msqmri/bin/python3* -IBu' \
 && /opt/msqmri/bin/bids-validator-deno --version

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# The console scripts are also linked into /usr/local/bin: Boutiques runs the command line in a
# login shell (`/bin/sh -l`), whose /etc/profile resets PATH.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && ln -s /opt/msqmri/bin/msqmri /opt/msqmri/bin/msqmri-synth \
      /opt/msqmri/bin/bids-validator-deno /usr/local/bin/

COPY --from=build /opt/msqmri /opt/msqmri

ENV PATH=/opt/msqmri/bin:$PATH \
    VIRTUAL_ENV=/opt/msqmri \
    LANG=C.UTF-8 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONSAFEPATH=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    NUMEXPR_MAX_THREADS=1

LABEL org.opencontainers.image.title="msqmri" \
      org.opencontainers.image.description="Quantitative MRI of multiple sclerosis as a BIDS-App: relaxometry, MT, lesion and normal-appearing tissue metrics" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.authors="msqmri developers" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

ENTRYPOINT ["msqmri"]
