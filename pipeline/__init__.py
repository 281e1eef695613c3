"""The pipeline from data to a verified bundle: float training -> QAT -> export, driven by a named recipe
(configs/recipes/*.yaml). Above ``training`` and ``export``; ``make qat`` and ``sweep`` call it."""
