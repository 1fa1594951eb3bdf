"""A from-scratch GPT: text -> tokens -> batches -> model -> loss -> optimizer -> checkpoint -> sampling."""

import os as _os

# Before torch loads (this file runs before any gpt module, and so before their `import torch`): a thread of
# torch's math that runs out of work spins 1,000 times (some microseconds) before it sleeps, not GNU OpenMP's
# default 300,000 (milliseconds). On a busy CPU the spinning threads take the cores the work needs (the commands
# ran several times slower); sleeping at once (OMP_WAIT_POLICY=PASSIVE) fixes that but makes an idle CPU wake a
# thread for every small operation (decoding 1.7x slower). The short spin keeps both: measured in BENCHMARKS.md,
# 'Threads on a busy CPU' (gpt/device.py, set_threads). GNU OpenMP (torch's Linux builds) reads it once, as torch
# loads it: a program that imports torch before gpt keeps the default, and a wait policy or spin count the user
# set is left as it is.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "1000"

__version__ = "0.1.0"
