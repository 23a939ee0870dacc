"""The Hydra configs that ship with speechcl, installed as the package ``speechcl.conf``."""
