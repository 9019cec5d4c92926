"""Lipschitz constants of feed-forward networks: LipLT (Fazlyab et al., NeurIPS 2023) and the naive product.

* :mod:`.chain`: a network read as a chain of linear stages and scalar
  activations (checked against its own forward pass), and the LipLT recursion;
* :mod:`.sound`: upper bounds on every norm the recursion needs (certification);
* :mod:`.power`: power-iteration and row-sum estimates of the same norms, with
  gradients (training, the ``crm`` trainer);
* :mod:`.constants`: sound pairwise constants per model state, cached, and the
  radii they certify (the ``liplt`` plugin's certifiers).
"""
