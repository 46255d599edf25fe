"""EGGROLL: evolution strategies with low-rank perturbations.

Member ``i`` of a population of ``N`` evaluates every weight matrix at
``W + A_i B_i^T`` (rank r) without ever forming it, fitness is shaped, and the
ES gradient ``sum_i f_hat_i A_i B_i^T`` -- one matrix product over concatenated
factors -- feeds any :mod:`egdnp.optim` optimiser.

Modules
-------
egdnp.es.conventions    "egdnp", "hyperscalees-torch", "hyperscalees-jax" (table)
egdnp.es.perturbations  addressed factors (seed, name, member/pair, generation)
egdnp.es.layers         perturbed linear / conv2d / batch norm, whole-model forward (layer registry)
egdnp.es.fitness        z-score, group, centered ranks (shaping registry); classification fitness
egdnp.es.gradient       the ES gradient (true sum, never the factorised shortcut)
egdnp.es.strategy       ``Eggroll`` with ``init`` / ``ask`` / ``tell``
egdnp.es.variants       ``OpenES`` (full rank), ``SparseES``, ``EggrollBaseline`` (same API)
egdnp.es.rl             policies (discrete / tanh heads), observation normalisation, episode returns
egdnp.es.functional     the PyTorch port's names (get_weight_shapes, ...)
egdnp.es.checkpoint     save / load a whole run (atomic; resumes bit for bit)
egdnp.es.egd_scorer     EGD's population scorer: a whole evolution cycle in population forwards

See docs/eggroll.md.
"""

from . import conventions, egd_scorer, fitness, functional, gradient, layers, perturbations, rl, strategy, variants
from .conventions import CONVENTIONS, Convention, get_convention, noise_generation
from .egd_scorer import ModelScorer, model_scorer
from .fitness import (
    FITNESS_SHAPINGS,
    centered_ranks,
    classification_fitness,
    group_zscore,
    register_fitness_shaping,
    shape_fitness,
    zscore,
    zscore_var_eps,
)
from .gradient import es_gradient, factorised_shortcut, loss_gradients, lowrank_weighted_sum, pair_weights, sparse_weighted_sum
from .layers import (
    PERTURBED_FORWARDS,
    PerturbedForward,
    dense_perturbed_params,
    perturbed_batch_norm,
    perturbed_conv2d,
    perturbed_layer_norm,
    perturbed_linear,
    perturbed_matmul,
    perturbed_model_forward,
    population_fitness,
    register_perturbed_forward,
)
from .perturbations import (
    FullNoise,
    LowRankNoise,
    Perturbations,
    SparseNoise,
    StackedLowRankNoise,
    dense_noise,
    generate,
    plan_parameters,
    resolve_noise_map,
    slice_perturbations,
)
from .strategy import Eggroll, EggrollState
from .variants import EggrollBaseline, OpenES, SparseES, baseline_zscore, clip_by_global_norm
from . import checkpoint  # noqa: E402  (needs strategy)

__all__ = [
    "conventions",
    "egd_scorer",
    "fitness",
    "functional",
    "gradient",
    "layers",
    "perturbations",
    "rl",
    "strategy",
    "variants",
    "checkpoint",
    "CONVENTIONS",
    "Convention",
    "get_convention",
    "noise_generation",
    "ModelScorer",
    "model_scorer",
    "FITNESS_SHAPINGS",
    "register_fitness_shaping",
    "centered_ranks",
    "classification_fitness",
    "group_zscore",
    "shape_fitness",
    "zscore",
    "zscore_var_eps",
    "es_gradient",
    "factorised_shortcut",
    "loss_gradients",
    "lowrank_weighted_sum",
    "pair_weights",
    "sparse_weighted_sum",
    "PERTURBED_FORWARDS",
    "PerturbedForward",
    "register_perturbed_forward",
    "dense_perturbed_params",
    "perturbed_batch_norm",
    "perturbed_conv2d",
    "perturbed_layer_norm",
    "perturbed_linear",
    "perturbed_matmul",
    "perturbed_model_forward",
    "population_fitness",
    "FullNoise",
    "LowRankNoise",
    "Perturbations",
    "SparseNoise",
    "StackedLowRankNoise",
    "dense_noise",
    "generate",
    "plan_parameters",
    "resolve_noise_map",
    "slice_perturbations",
    "Eggroll",
    "EggrollState",
    "OpenES",
    "SparseES",
    "EggrollBaseline",
    "baseline_zscore",
    "clip_by_global_norm",
]
