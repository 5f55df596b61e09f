"""Randomly initialised tiny models with the real architectures' geometry, built in code.

- ``diffusion``: the ``tiny`` / ``tiny-hed`` profiles' SD + ControlNet components;
- ``encoders``: the CLIP and BLIP behind the model id ``tiny`` (PEZ, captions, selection).

Built with a fixed seed, saved with ``save_pretrained`` in the cache folder and loaded
back through the same ``from_pretrained`` calls as real checkpoints: tests, the demo
and offline use run the real code paths without downloading weights.
"""
