"""`python -m gpt.lab COMMAND [settings]`: see gpt/lab/__init__.py, or run it with --help."""

from __future__ import annotations

import sys

USAGE = """usage: python -m gpt.lab COMMAND [CONFIG.toml] [--name=value ...]

commands:
  induction   train a 2-layer and a 1-layer attention-only model on sequences with a repeated segment: watch
              induction heads form (losses, head scores, attention before/after, ablation)
  attention   --ckpt OUT --prompt "...": attention heat maps per layer and head, and which heads are induction heads
  icl         --ckpt OUT --data TEXT: the mean loss by position in the context and the in-context learning score
  lens        --ckpt OUT --prompt "...": the logit lens, the top next tokens read out after each layer
  fewshot     --ckpt OUT --data tasks.jsonl: exact match against the number of examples in the prompt
  scaling     a miniseries of sizes at several compute budgets: IsoFLOP curves, the fitted scaling laws, a
              larger run's loss predicted then measured, and in-context copying against size

`python -m gpt.lab COMMAND --help` lists a command's settings."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from gpt.lab import fewshot, induction, probes, scaling

    commands = {"induction": induction.main, "attention": probes.attention_main, "icl": probes.icl_main,
                "lens": probes.lens_main, "fewshot": fewshot.main,
                "scaling": scaling.main}
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in commands:
        print(f"error: unknown command {argv[0]!r}: use one of {', '.join(commands)} (see python -m gpt.lab --help)",
              file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
