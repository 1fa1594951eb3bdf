"""`python -m gpt.lora merge | export`, kept where it always was: LoRA lives in gpt/post/ (lora.py, adapters.py,
adapter_files.py, export.py).

Only the command line is here (it imports nothing when imported as a module), so the core never reaches into the
post-training layer through it.
"""

if __name__ == "__main__":
    from gpt.post.export import main

    raise SystemExit(main())
