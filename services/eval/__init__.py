"""Evaluation: rate and quality over a folder of images, against classical codecs.

- ``metrics``: PSNR and MS-SSIM; ``perceptual``: LPIPS, DISTS, CLIP distance;
  ``fid``: FID/KID over patches; ``suite``: the set of metrics of one run;
- ``baselines``: WebP/JPEG at the same bytes;
- ``run``: the harness (``textsketch eval``); ``report``: CSV/JSON, tables, plots.

Codec stages never import this package (checked by ``make lint``).
"""
