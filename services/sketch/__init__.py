"""Sketch stage: where things are, as a few hundred bytes of edge map.

Encoder side: ``edges`` (HED from ``hed``, or Canny) -> ``lossy`` (threshold,
downsample, thin, prune) -> ``chain_coder`` (chains of moves under the integer
``contexts`` models, coded by ``services.bitstream.range_coder``) framed by ``body``;
``coder`` runs the whole way, with a byte budget if asked.
Decoder side: ``body`` + ``chain_coder`` -> ``render`` (line map, control image);
``legacy`` reads the version-2 bodies of older payloads.

``body``, ``chain_coder``, ``contexts`` and ``render`` decide the decoded sketch bit
for bit and import neither torch nor any web framework (checked by ``make lint``).
"""
