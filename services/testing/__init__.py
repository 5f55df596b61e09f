"""Helpers for tests and benchmarks; nothing else in ``services`` imports this package.

- ``fakes``: stand-ins for the diffusion model (and a decoder app serving one);
- ``payloads``: valid payloads built in code; ``hostile``: hostile payloads and images;
- ``servers``: the apps in-process or as real uvicorn processes;
- ``load``: load generation, percentiles, reading /metrics.
- ``sd21``: the full-size sd21-hed architectures with random weights, saved as diffusers folders.

The random tiny models (the ``tiny`` profiles and model ids) are ``services.tiny``.
"""
