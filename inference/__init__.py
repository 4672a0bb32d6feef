"""Inference kernels: SMC, entropic particle filter, particle MCMC, search baselines."""
from inference import resampling as resampling
from inference.smc import SMC as SMC
from inference.smc import SMCResult as SMCResult
from inference.smc import WeightError as WeightError
