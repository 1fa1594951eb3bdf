"""A from-scratch GPT: text -> tokens -> batches -> model -> loss -> optimizer -> checkpoint -> sampling."""

__version__ = "0.1.0"
