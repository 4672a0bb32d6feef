"""ppl: state-space programs in NumPyro for LLM reasoning, run by jitted inference kernels."""
from ppl.program import StateSpaceProgram as StateSpaceProgram
