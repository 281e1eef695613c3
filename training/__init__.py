"""Models, data, float training and QAT. Entry points quiet the libraries' known noise (see quiet.py)."""
