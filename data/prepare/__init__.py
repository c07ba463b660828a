"""Dataset preparation: official FER releases to `<dataset>/<split>/<class>/<image>`, merging, and a leak audit.

Run as `python3 -m data.prepare <kind> --src PATH --dst DIR [options]` with kind one of
rafdb, affectnet, fer2013, ferplus, ckplus, folder, merge; or `python3 -m data.prepare audit DIR`.
Each converter (one module per kind) reads a release into `common.Sample`s, `splits`
assigns train/val/test, and `common.write_dataset` writes the layout and its manifest.csv.
"""
