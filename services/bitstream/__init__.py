"""Wire format: what travels between encoder and decoder.

- ``container``: the payload (one msgpack document), its parser and the derived seed;
- ``text_coder``: CLIP token ids <-> the prompt body (exact integer arithmetic coding)
  under the shipped prior ``data/text_prior.npz``;
- ``vocabulary``: the token alphabet (size and special ids).

Imports neither torch nor any web framework (checked by ``make lint``).
The sketch body is specified with the sketch stage (``services.sketch.body``).
"""
