"""A from-scratch GPT: text -> tokens -> batches -> model -> loss -> optimizer -> checkpoint -> sampling."""

import os as _os

# Before torch loads (this file runs before any gpt module, and so before their `import torch`): the OpenMP
# threads of torch's math sleep when they run out of work instead of spinning for milliseconds first. Spinning
# costs nothing on an idle CPU, but on a busy one the spinning threads take the cores the work needs, and every
# command ran 12-19x slower (gpt/device.py, set_threads; BENCHMARKS.md, 'Threads on a busy CPU'). The OpenMP
# runtime reads this once, as torch loads it: a program that imports torch before gpt keeps the runtime's
# default. An OMP_WAIT_POLICY already set is left as it is.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
