"""Fused routing kernels: votes recomputed from child poses and weights, never materialised.

``triton_em``: EM routing normalised over parent types, forward and backward, for CUDA
through Triton (``available(device)`` says whether it can run there).
"""
