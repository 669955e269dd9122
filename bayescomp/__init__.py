"""Bayesian Compression for Deep Learning [LUW17] in PyTorch, with the tools to measure it.

[LUW17] C. Louizos, K. Ullrich, M. Welling. Bayesian Compression for Deep Learning. NIPS 2017.
"""
from bayescomp.method import Compressed, CompressedLayer, Dense, Method
from bayescomp.models import DENSE, LayerSet, load_model

__all__ = ["DENSE", "Compressed", "CompressedLayer", "Dense", "LayerSet", "Method", "load_model"]
