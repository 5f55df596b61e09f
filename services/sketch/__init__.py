"""Sketch stage: where things are, as a few hundred bytes of edge map.

Encoder side: ``edges`` (HED from ``hed``, or Canny) -> ``lossy`` (threshold,
downsample, thin, prune) -> ``chain_coder`` (lossless, integer context models)
framed by ``body``; ``coder`` runs the whole way, with a byte budget if asked.
Decoder side: ``body`` + ``chain_coder`` -> ``render`` (line map, control image).

``body``, ``chain_coder`` and ``render`` decide the decoded sketch bit for bit and
import neither torch nor any web framework (checked by ``make lint``).
"""
