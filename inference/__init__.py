"""Inference kernels: SMC, entropic particle filter, particle MCMC, search baselines."""
