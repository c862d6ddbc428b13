"""Evaluation of edits with the paper's four metrics (`metrics`) on estimates from estimators behind small
interfaces (`estimators`): a regressor trained on `synthetic_faces` (`synthetic`, trained by
`train_estimator`), and offline estimators for photographs (`photos`). `runner` edits held-out pairs and
measures them (`evaluate.py` is its command line); `regions` and `vae_study` measure whether an expression
survives a VAE."""
