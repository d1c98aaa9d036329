"""Cap the threads of the numerical libraries (``--omp-nthreads``, NiPreps' option name).

NumPy/SciPy's BLAS (OpenBLAS, MKL, BLIS, Accelerate) and OpenMP code start one thread per
CPU unless told otherwise, so ``--nprocs 1`` on a shared cluster node would still use every
core. The libraries read their environment variables once, when they are loaded, so
:func:`cap_threads` must run before NumPy is imported: ``msqmri``'s ``main`` calls it first
(its module imports no NumPy), and the ``spawn``-ed fitting workers inherit the variables.
When NumPy is already loaded (``main`` called from Python), ``threadpoolctl`` is used if it
is installed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

#: environment variables read by the threaded numerical libraries
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMEXPR_MAX_THREADS",
)
OPTION = "--omp-nthreads"
DEFAULT = 1


def omp_nthreads_from_argv(argv: Sequence[str]) -> int:
    """The ``--omp-nthreads`` value of a command line, before argparse has run.

    Parameters
    ----------
    argv : sequence of str
        The arguments (snake_case spellings already normalised).

    Returns
    -------
    int
        The last valid positive value given, else :data:`DEFAULT` (an invalid value is
        reported by the parser afterwards).

    Examples
    --------
    >>> omp_nthreads_from_argv(["ds", "out", "participant", "--omp-nthreads", "4"])
    4
    >>> omp_nthreads_from_argv(["--omp-nthreads=2"]), omp_nthreads_from_argv(["ds"])
    (2, 1)
    """
    value = DEFAULT
    for i, arg in enumerate(argv):
        opt, eq, text = arg.partition("=")
        if opt != OPTION:
            continue
        if not eq:
            text = argv[i + 1] if i + 1 < len(argv) else ""
        if text.isdigit() and int(text) > 0:
            value = int(text)
    return value


def cap_threads(n: int) -> None:
    """Limit the numerical libraries of this process and its children to ``n`` threads.

    Parameters
    ----------
    n : int
        Threads per process (>= 1).
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    if "numpy" not in sys.modules:
        return  # the libraries will read the variables when they load
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.debug("numpy already loaded and no threadpoolctl: BLAS threads not capped here")
        return
    threadpool_limits(limits=n)
