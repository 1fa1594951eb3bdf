"""`python -m gpt.serve`: the server's command line (gpt/serve/app.py), with a clear error when its extra is missing."""

import sys

try:
    from gpt.serve.app import main
except ModuleNotFoundError as e:
    if e.name not in ("starlette", "uvicorn", "anyio"):
        raise
    print(f'error: the server needs {e.name}, from its optional extra: pip install -e ".[serve]"', file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
