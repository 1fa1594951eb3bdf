"""`python -m gpt.tasks make | pairs | eval`, kept where it always was: the task suite lives in gpt/post/tasks/.

Only the command line is here (it imports nothing when imported as a module), so the core never reaches into the
post-training layer through it.
"""

if __name__ == "__main__":
    from gpt.post.tasks.cli import main

    raise SystemExit(main())
