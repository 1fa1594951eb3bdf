"""python -m gpt.post.tasks: the same command line as python -m gpt.tasks."""

from gpt.post.tasks.cli import main

raise SystemExit(main())
