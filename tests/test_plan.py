"""The strategy plan: typed parameters resolved once, network recipes, preflight refusals (no Ray)."""

from __future__ import annotations

import dataclasses

import pytest

from osal_ray.config import load_config
from osal_ray.errors import InputError
from osal_ray.experiment.plan import plan_experiment, plan_strategy
from osal_ray.experiment.preflight import check_config
from osal_ray.params import Params
from osal_ray.strategies import STRATEGIES, get_strategy
from osal_ray.training.objectives import OBJECTIVES


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_plans_with_typed_parameters_and_typed_objectives(name):
    config = load_config(None, [f"strategies=[{name}]", "clip.checkpoint=/weights/clipn.pt"])
    plan = plan_strategy(config, name)
    strategy = get_strategy(name)
    assert dataclasses.is_dataclass(strategy.params_type) and issubclass(strategy.params_type, Params)
    assert isinstance(plan.params, strategy.params_type)
    assert plan.columns == strategy.required_columns(plan.params)
    assert [n.name for n in plan.networks][0] == "classifier"
    for network in plan.networks:
        assert isinstance(network.objective_params, OBJECTIVES.get(network.objective).params_type)
    # The frozen parameters are what the run state records.
    assert plan.params.to_dict() == {**strategy.defaults, **strategy.params_from(config)}


def test_a_job_parameter_reaches_the_plan_and_its_network_recipe():
    config = load_config(None, ["strategies=[mqnet]", "strategy_params.mqnet.informativeness=ll",
                                "strategy_params.mqnet.ssl_epochs=3", "strategy_params.mqnet.margin=0.5"])
    plan = plan_experiment(config)["mqnet"]
    networks = {n.name: n for n in plan.networks}
    assert plan.params.ssl_epochs == 3 and "predicted_loss" in plan.columns
    assert networks["ssl"].train.epochs == 3 and networks["ssl"].objective == "simclr"
    assert networks["classifier"].objective == "learning_loss" and networks["classifier"].objective_params.margin == 0.5


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["strategy_params.jsosal.a=1.5"], "strategy_params.jsosal.a"),
        (["strategy_params.jsosal.tol=-1"], "strategy_params.jsosal.tol"),
        (["strategy_params.lfosa.a=3"], "strategy_params.lfosa.a"),
        (["strategy_params.eoal.diversity=maybe"], "strategy_params.eoal.diversity"),
        (["strategy_params.vlpure.base_params={nope: 1}"], "strategy_params.vlpure.base_params.nope"),
        (["strategy_params.vlpure.base=coreset", "strategy_params.vlpure.base_params={chunk_size: 0}"],
         "strategy_params.vlpure.base_params.chunk_size"),
        (["strategy_params.nope={x: 1}"], "strategy_params.nope"),
        (["strategies=[mqnet]", "model.classifier=clip_linear"], "model.classifier"),
    ],
)
def test_preflight_names_the_key_of_an_impossible_plan(overrides, field):
    with pytest.raises(InputError) as info:
        check_config(load_config(None, overrides))
    assert info.value.field == field


def test_objective_parameters_are_checked_when_built():
    with pytest.raises(InputError, match="temperature"):
        OBJECTIVES.get("simclr").params_type.build({"temperature": 0.0}, "objective")
    with pytest.raises(InputError, match="unknown key"):
        OBJECTIVES.get("eoal").params_type.build({"class_weights": "none"}, "objective")
