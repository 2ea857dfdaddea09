"""The benchmark engines behind ``bench/serve.py`` and ``bench/soak.py``."""
