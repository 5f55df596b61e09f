"""Prompt stage: what is in the scene, as CLIP token ids.

- ``sources``: the prompt sources (``pez``, ``caption``, ``given``) behind ``make_prompt_ids``;
- ``caption``: the image-to-text captioner;
- ``pez``: hard-prompt inversion against a CLIP model;
- ``tokenizer``: the CLIP BPE tokenizer, built offline.

The token ids are coded by ``services.bitstream.text_coder``.
"""
