"""Train a GPT: `python train.py [CONFIG.toml] [--name=value ...]` (see gpt/trainer.py and configs/)."""

from gpt.trainer import main

if __name__ == "__main__":
    raise SystemExit(main())
