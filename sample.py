"""Generate text from a trained model: `python sample.py --ckpt out/default --prompt "..."` (see --help).

The work is done in gpt/generate.py; this file is only the command-line entry point.
"""

from gpt.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
