"""cvxlayer_cuda: GPU kernels for the torch solver's hot loops (cone projections, fused ADMM
steps). Empty for now: cvxlayer runs on its pure-torch and native code paths."""

KERNELS: dict = {}
