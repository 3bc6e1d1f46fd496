"""The embedded default: the two-digit addition task, the tiny tokenizer, the demo, and the recipe that made
the shipped base model (``recipe``)."""
