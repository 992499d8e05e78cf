"""The reference verifier: mTLS + HTTP/2 on 8443, EST enrollment, device registry."""

import os

# Matching runs in a few pool threads (verifier/matching.py), each a whole job: BLAS threads
# inside them only compete for the same cores (and OpenBLAS's spinning threads tripled the
# time of a heavy request on 2 cores). Set before numpy is first imported; an explicit
# setting in the environment wins.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

__version__ = "0.1.0"
