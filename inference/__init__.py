"""Inference kernels over any ``ppl.StateSpaceProgram``: SMC and its resampling strategies, the entropic
particle filter, particle MCMC, answer posteriors. No language model in here."""
from inference import resampling as resampling
from inference import smc as smc
from inference.entropic import Entropic as Entropic
from inference.entropic import EntropicPF as EntropicPF
from inference.pmcmc import PIMH as PIMH
from inference.pmcmc import InteractingParticleGibbs as InteractingParticleGibbs
from inference.pmcmc import ParallelTemperingPG as ParallelTemperingPG
from inference.pmcmc import ParticleGibbs as ParticleGibbs
from inference.resampling import Adaptive as Adaptive
from inference.sharding import Islands as Islands
from inference.sharding import Routed as Routed
from inference.smc import SMC as SMC
from inference.smc import SMCResult as SMCResult
from inference.smc import WeightError as WeightError
from inference.smc import WeightStatus as WeightStatus
