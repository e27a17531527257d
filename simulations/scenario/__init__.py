"""Scenario files: what to simulate, as a small TOML file checked before anything runs.

A scenario names the data and how it is split among clients, the model, the federation
(clients, rounds, strategy) and local training. The layout (see ``quickstart.toml``)::

    name = "quickstart"
    seed = 42                       # seeds the split, the partition and everything downstream
    [data]
    dataset = "digits"              # digits | mnist5k | shakespeare | synthetic
    partition = "dirichlet"         # iid | dirichlet | natural (natural: synthetic, shakespeare)
    alpha = 0.5                     # dirichlet only, required there (not for shakespeare)
    min_size = 10                   # dirichlet only: fewest examples a client may get
    test_fraction = 0.2             # held out on the server
    [data.synthetic]                # synthetic only: SYNTHETIC(alpha, beta) of FedProx
    num_clients = 20                # generators; default (and required by natural): federation's
    alpha = 1.0
    beta = 1.0
    samples_per_client = 100
    shared_task = false             # true: one labelling task for all (+ N(0, alpha)), learnable
    [data.shakespeare]              # shakespeare only: next-word prediction, a client per role
    num_clients = 20                # roles; default (and required by natural): federation's
    vocab_size = 2000               # <unk>, <eos> and the most frequent words
    seq_len = 20                    # words per example
    [model]
    name = "mlp"                    # mlp | logreg | cnn | mobilenet | lstm | tiny_gpt | ...
    hidden = [64]                   # mlp: hidden widths; lstm: one width (hidden = 128)
    # channels = [16, 32]           # cnn: channels of each conv block
    # embed_dim = 64                # lstm: word-embedding width
    # lora = { rank = 8, alpha = 16, targets = ["attn", "mlp"], base = "int8" }  # adapters only
    # checkpoint = "blocks"         # tiny_gpt: recompute each block in the backward pass
    [federation]
    num_clients = 20
    clients_per_round = 10          # default: all clients
    rounds = 20
    strategy = "fedavg"             # aggregator.strategies.known_strategies(): fedadam, krum, ...
    compression = "none"            # none | int8 | int4 | topk (client -> server updates)
    secagg = false                  # SecAgg+; a [secagg] table tunes it (secagg_section.py)
    [federation.strategy_options]   # the strategy's hyperparameters, e.g. eta = 0.01 (fedadam),
    max_norm_factor = 30.0          # num_malicious = 2 (krum); every strategy: max_norm_factor
    [federation.compression_options]  # int8/int4: block = 1024; topk: ratio = 0.01
    [train]                         # optional, every key has a default (fedcore.settings)
    local_epochs = 1
    batch_size = 32
    learning_rate = 0.1
    momentum = 0.0
    weight_decay = 0.0

The models are pydantic v2 with ``strict`` types and ``extra="forbid"``, so a typo or a string
where a number belongs is caught at load time. Every user error becomes a `ScenarioError` with
one line naming the file and the dotted key, e.g.
``quickstart.toml: federation.rounds: expected an integer, got 'ten'``.

Loading checks the file and nothing else (no data is read, no model built); what needs the
data (does the model fit it, are there enough examples) is checked once, when
``simulations.prepare.prepare_scenario`` loads it. The package: ``schema`` (the whole file,
``[federation]``, ``[evaluation]``), ``data_section`` (``[data]``), ``model_section``
(``[model]``), ``section`` (their strict base), ``model_fit`` (what a model builder takes),
``errors`` (one-line messages), ``load``.
"""

from simulations.scenario.data_section import (
    NATURAL_DATASETS,
    DataSection,
    ShakespeareSection,
    SyntheticSection,
)
from simulations.scenario.errors import ScenarioError
from simulations.scenario.load import load_scenario, scenario_from_dict, with_secagg
from simulations.scenario.model_fit import builder_parameters, model_arguments, model_misfit
from simulations.scenario.model_section import ModelSection, model_keys
from simulations.scenario.schema import KNOWN_CODECS, EvaluationSection, FederationSection, Scenario

__all__ = [
    "KNOWN_CODECS",
    "NATURAL_DATASETS",
    "DataSection",
    "EvaluationSection",
    "FederationSection",
    "ModelSection",
    "Scenario",
    "ScenarioError",
    "ShakespeareSection",
    "SyntheticSection",
    "builder_parameters",
    "load_scenario",
    "model_arguments",
    "model_keys",
    "model_misfit",
    "scenario_from_dict",
    "with_secagg",
]
