"""Old location of the inference package, now `inference/` at the top level; only the
`python3 -m utils.inference.reframe` command is kept here, until the next release."""
