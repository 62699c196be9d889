"""The networks, integrators and training pieces that boltzkit's neural samplers share.

Public so that new samplers and models (outside ``boltzkit.samplers``) build on them:

* :mod:`~boltzkit.nn.continuous_nets`: control networks on ``Reals`` / particle clouds
  (``FourierMLP``, ``EGNNLite``, ``make_control_net``);
* :mod:`~boltzkit.nn.discrete_nets`: per-site networks on categorical domains
  (``SiteTransformer``, ``SiteCNN``, ``make_discrete_net``);
* :mod:`~boltzkit.nn.time_embedding`: Fourier / sinusoidal time embeddings and FiLM;
* :mod:`~boltzkit.nn.sde`: Euler-Maruyama paths, reference kernels, path log-weights, adjoints;
* :mod:`~boltzkit.nn.ctmc`: masked (absorbing) CTMC paths, their log-probabilities, the WDCE loss;
* :mod:`~boltzkit.nn.cyclic`: cyclic (uniform-jump) CTMC paths and bridges;
* :mod:`~boltzkit.nn.gaussian_diffusion`: DDPM-style Gaussian diffusion and its denoiser fit;
* :mod:`~boltzkit.nn.ema`: ``EMA`` weights; :mod:`~boltzkit.nn.buffers`: the ``ReplayBuffer``.

Every name of those modules' ``__all__`` is also importable from ``boltzkit.nn`` itself.
This layer imports domains, errors and utilities only -- never samplers.
"""

from . import buffers, continuous_nets, ctmc, cyclic, discrete_nets, ema, gaussian_diffusion, sde, time_embedding
from .buffers import *  # noqa: F401,F403
from .continuous_nets import *  # noqa: F401,F403
from .ctmc import *  # noqa: F401,F403
from .cyclic import *  # noqa: F401,F403
from .discrete_nets import *  # noqa: F401,F403
from .ema import EMA
from .gaussian_diffusion import *  # noqa: F401,F403
from .sde import *  # noqa: F401,F403
from .time_embedding import *  # noqa: F401,F403

__all__ = ["EMA", "buffers", "continuous_nets", "ctmc", "cyclic", "discrete_nets", "ema", "gaussian_diffusion",
           "sde", "time_embedding"]
for _m in (buffers, continuous_nets, ctmc, cyclic, discrete_nets, gaussian_diffusion, sde, time_embedding):
    __all__ += list(_m.__all__)
del _m
