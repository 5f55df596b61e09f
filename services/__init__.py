"""textsketch: a generative image codec for ultra-low bit-rates (prompt + sketch).

The shared library of the encoder and decoder services, also usable in-process.
"""

__version__ = "0.1.0"
