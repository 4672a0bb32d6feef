"""Inference kernels: SMC, entropic particle filter, particle MCMC, search baselines."""
from inference import resampling as resampling
from inference.entropic import EntropicPF as EntropicPF
from inference.pmcmc import PIMH as PIMH
from inference.pmcmc import InteractingParticleGibbs as InteractingParticleGibbs
from inference.pmcmc import ParallelTemperingPG as ParallelTemperingPG
from inference.pmcmc import ParticleGibbs as ParticleGibbs
from inference.smc import SMC as SMC
from inference.smc import SMCResult as SMCResult
from inference.smc import WeightError as WeightError
