"""The lab: looking inside models. `python -m gpt.lab COMMAND [settings]`.

It sits beside the flow (text -> tokens -> batches -> model -> loss -> optimizer -> checkpoint -> sampling)
rather than in it: it trains small models of its own, or reads any checkpoint, and measures what happens
inside them. Commands:

  induction   train a 2-layer and (the control) a 1-layer attention-only model on sequences with a repeated
              random segment; watch induction heads form, score every head, switch heads off (induction.py)
  attention   attention heat maps of a checkpoint on a prompt, and which of its heads are induction heads
  icl         the mean loss by position in the context: does more context help? (in-context learning)
  lens        the logit lens: the top next tokens read out after each layer                  (probes.py)
  fewshot     exact match on tasks against the number of examples in the prompt                (fewshot.py)
  scaling     a miniseries of sizes at several compute budgets: IsoFLOP curves, fitted scaling laws, a
              prediction tested, copying against size                                        (scaling.py)

Module by concern: synthetic.py (the sequences), scores.py (attention, head scores, loss by position,
ablation), training.py (the small training loop), plots.py (the PNGs), output.py (JSON, tables).
"""
