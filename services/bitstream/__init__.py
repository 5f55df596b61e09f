"""Wire format: what travels between encoder and decoder.

- ``container``: the payload (one msgpack document, version 2; version 1 still read),
  its parser and the derived seed;
- ``text_coder``: CLIP token ids <-> the prompt body (exact integer arithmetic coding)
  under the shipped prior ``data/text_prior.npz``;
- ``range_coder``: the integer range coder the sketch body is coded with;
- ``vocabulary``: the token alphabet (size and special ids).

Imports neither torch nor any web framework, and computes every coded bit from
integers (both checked in tests and ``make lint``). The sketch body is specified with
the sketch stage (``services.sketch.body``).
"""
