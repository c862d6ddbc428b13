"""Evaluation of edits with the paper's four metrics (`metrics`), on estimates from estimators behind small
interfaces (`estimators`): a regressor trained on `synthetic_faces` (`synthetic`), and offline estimators
for real photographs (`photos`); `runner` edits held-out pairs and measures them."""
