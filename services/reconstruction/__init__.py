"""Reconstruction stage: token ids + control image -> pixels with Stable Diffusion (+ ControlNet).

- ``jobs``: ``DecodeJob`` (what the codec hands this stage) and the out-of-memory
  splitter; torch-free, so the codec and the scheduler can build and queue jobs;
- ``pipelines``: loading a profile's models and assembling the PIC/PICS pipelines;
- ``reconstructor``: ``Reconstructor``, warm pipelines decoding batches of jobs.
"""
