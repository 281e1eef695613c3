"""The project's programs against the peer runtimes (LiteRT, ONNX Runtime, ncnn) on the same weights.

``convert`` (host: torch and the converters) writes every program into one folder with the images and
the eager model's logits; ``runtimes`` and ``timing`` (numpy and the runtimes only) load, check and time
them, on the host or on a device (``device``); ``cli`` (``python -m peers``, ``make bench-peers``) runs
it all and prints the table.
"""
