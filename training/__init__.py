"""Models, data, float training and QAT; quiet about the libraries' known noise (see quiet.py)."""
from .quiet import silence_known_noise

silence_known_noise()
