"""textsketch on Ray Serve: the encoder and decoder apps as deployments, handle forwarding, bucket-affine routing.

Nothing in ``services``, ``encoder_service`` or ``decoder_service`` imports Ray (an import contract);
this package only wraps their apps. Configs: ``deploy/ray/``; docs: ``docs/scaling.md``.
"""
