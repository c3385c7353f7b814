"""What a resumed run must match (no Ray): results-deciding settings, not locations or spelled-out defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from osal_ray.config import load_config
from osal_ray.errors import InputError
from osal_ray.experiment.plan import plan_strategy
from osal_ray.experiment.state import RunState, open_run_state as open_planned, run_settings


def open_run_state(location, config, strategy, seed):
    return open_planned(location, config, plan_strategy(config, strategy), seed)


def _saved(tmp_path, overrides, strategy="jsosal"):
    config = load_config(None, overrides)
    location = str(tmp_path / "state.json")
    RunState(strategy, 0, run_settings(config, plan_strategy(config, strategy), 0)).save(location)
    return location


def test_moved_data_and_a_spelled_out_default_still_resume(tmp_path):
    location = _saved(tmp_path, ["data.root=/old/place", "data.pool_files=2"])
    moved = load_config(None, ["data.root=/new/place", "data.pool_files=8", "strategy_params.jsosal.a_multiple=2.0"])
    assert open_run_state(location, moved, "jsosal", 0) is not None


def test_a_strategy_parameter_that_differs_from_the_saved_default_is_refused(tmp_path):
    location = _saved(tmp_path, [])
    with pytest.raises(InputError, match="params.a_multiple"):
        open_run_state(location, load_config(None, ["strategy_params.jsosal.a_multiple=3.0"]), "jsosal", 0)


def test_the_clip_model_counts_only_where_the_run_uses_it(tmp_path):
    vlpure = _saved(tmp_path / "v", ["clip.checkpoint=/w/a.pt", "strategies=[vlpure]"], "vlpure")
    with pytest.raises(InputError, match="clip.checkpoint"):
        open_run_state(vlpure, load_config(None, ["clip.checkpoint=/w/b.pt", "strategies=[vlpure]"]), "vlpure", 0)
    assert open_run_state(vlpure, load_config(None, ["clip.checkpoint=/w/a.pt", "clip.batch_size=8",
                                                     "strategies=[vlpure]"]), "vlpure", 0) is not None
    entropy = _saved(tmp_path / "e", ["clip.checkpoint=/w/a.pt"], "entropy")
    assert open_run_state(entropy, load_config(None, ["clip.checkpoint=/w/b.pt"]), "entropy", 0) is not None


def test_a_state_that_still_holds_location_keys_resumes(tmp_path):
    import json

    location = _saved(tmp_path, [])
    raw = json.loads(open(location).read())
    raw["settings"]["data"]["root"] = "/where/it/was"  # an older osal_ray compared the data location too
    open(location, "w").write(json.dumps(raw))
    assert open_run_state(location, load_config(None, []), "jsosal", 0) is not None


def test_clip_weights_replaced_at_the_same_path_are_another_model(tmp_path):
    weights = tmp_path / "clipn.pt"
    weights.write_bytes(b"first weights")
    overrides = [f"clip.checkpoint={weights}", "strategies=[vlpure]"]
    location = _saved(tmp_path / "v", overrides, "vlpure")
    assert open_run_state(location, load_config(None, overrides), "vlpure", 0) is not None
    weights.write_bytes(b"other weights, same path")
    with pytest.raises(InputError, match="clip.weights_digest"):
        open_run_state(location, load_config(None, overrides), "vlpure", 0)


def test_a_clip_run_saved_before_weights_were_compared_by_content_resumes(tmp_path):
    import json

    weights = tmp_path / "clipn.pt"
    weights.write_bytes(b"weights")
    overrides = [f"clip.checkpoint={weights}", "strategies=[vlpure]"]
    location = _saved(tmp_path / "v", overrides, "vlpure")
    raw = json.loads(open(location).read())
    del raw["settings"]["clip"]["weights_digest"]
    open(location, "w").write(json.dumps(raw))
    assert open_run_state(location, load_config(None, overrides), "vlpure", 0) is not None


def test_the_clip_embedding_cache_is_keyed_by_the_weights_content(tmp_path):
    from osal_ray.config import ClipConfig
    from osal_ray.data.clip_store import clip_key

    weights = tmp_path / "clipn.pt"
    weights.write_bytes(b"first weights")
    first = clip_key(ClipConfig(checkpoint=str(weights)))
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(b"first weights")
    assert clip_key(ClipConfig(checkpoint=str(moved))) == first  # where the file lives does not matter
    weights.write_bytes(b"other weights at the same path")
    assert clip_key(ClipConfig(checkpoint=str(weights))) != first


V0_STATES = Path(__file__).parent / "fixtures" / "states_v0"


@pytest.mark.parametrize("strategy", sorted(p.stem for p in V0_STATES.glob("*.json") if p.stem != "overrides"))
def test_a_state_written_before_typed_parameters_still_resumes(strategy, tmp_path, monkeypatch):
    """States written by osal_ray at commit 97601a7 (parameters as dicts), with non-default parameters."""
    import json
    import shutil

    monkeypatch.chdir(V0_STATES.parents[2])  # the recorded CLIP checkpoint path is relative to the repository
    overrides = json.loads((V0_STATES / "overrides.json").read_text())
    location = str(tmp_path / "state.json")
    shutil.copy(V0_STATES / f"{strategy}.json", location)
    assert open_run_state(location, load_config(None, overrides), strategy, 0) is not None


def test_a_state_written_before_typed_parameters_is_refused_when_a_parameter_changed(tmp_path, monkeypatch):
    import json
    import shutil

    monkeypatch.chdir(V0_STATES.parents[2])
    overrides = json.loads((V0_STATES / "overrides.json").read_text())
    location = str(tmp_path / "state.json")
    shutil.copy(V0_STATES / "vlpure.json", location)
    with pytest.raises(InputError, match="params.base_params.chunk_size"):
        open_run_state(location, load_config(None, overrides + ["strategy_params.vlpure.base_params={chunk_size: 64}"]),
                       "vlpure", 0)


def test_the_osal_state_saved_before_known_share_resumes_with_the_old_rule(tmp_path, monkeypatch):
    import json
    import shutil

    from osal_ray.experiment.state import resumed_plan

    monkeypatch.chdir(V0_STATES.parents[2])
    overrides = json.loads((V0_STATES / "overrides.json").read_text())
    location = str(tmp_path / "state.json")
    shutil.copy(V0_STATES / "osal.json", location)
    config = load_config(None, overrides)
    state = open_run_state(location, config, "osal", 0)
    plan = resumed_plan(config, plan_strategy(config, "osal"), state)
    assert (plan.params.known_share, plan.params.backend) == (0.0, "sklearn")  # how osal ran when it was saved
    assert state.settings["params"]["known_share"] == 0.0 and "known_share" in state.legacy_params
    state.save(location)  # recorded: the next resume keeps it too
    again = open_run_state(location, config, "osal", 0)
    assert resumed_plan(config, plan_strategy(config, "osal"), again).params.known_share == 0.0
    assert plan_strategy(config, "osal").params.known_share == 0.25  # a new run uses today's default
    with pytest.raises(InputError, match=r"params.known_share \(0.0 -> 0.25\)"):
        open_run_state(location, load_config(None, overrides + ["strategy_params.osal.known_share=0.25"]), "osal", 0)


def test_a_parameter_added_to_a_strategy_cannot_change_a_saved_run(tmp_path, monkeypatch):
    """A saved run resumes with the legacy value of a parameter added after it was saved; the trajectory
    selects with it (the job's plan), while a new run of the same job gets the default."""
    import dataclasses

    from osal_ray.experiment.runner import _jobs, prepare_experiment
    from osal_ray.params import Params, added_later
    from osal_ray.strategies import STRATEGIES

    config = load_config(None, ["strategies=[random]", f"output_dir={tmp_path / 'out'}", "al.rounds=1", "al.budget=5"])
    old_location = tmp_path / "out" / "runs" / "random" / "seed_0" / "state.json"
    old_location.parent.mkdir(parents=True)
    RunState("random", 0, run_settings(config, plan_strategy(config, "random"), 0)).save(str(old_location))

    @dataclasses.dataclass(frozen=True)
    class Grown(Params):
        spread: float = added_later(1.0, legacy=0.0)

    monkeypatch.setitem(STRATEGIES._entries, "random", dataclasses.replace(STRATEGIES.get("random"), params_type=Grown))
    prepared = prepare_experiment(config, log=lambda _: None)
    try:
        (job,) = _jobs(prepared)
        assert job.plan.params.spread == 0.0
        assert prepared.states[("random", 0)].settings["params"] == {"spread": 0.0}
    finally:
        prepared.lock.release()
    fresh = load_config(None, ["strategies=[random]", f"output_dir={tmp_path / 'new'}", "al.rounds=1", "al.budget=5"])
    prepared = prepare_experiment(fresh, log=lambda _: None)
    try:
        assert _jobs(prepared)[0].plan.params.spread == 1.0
    finally:
        prepared.lock.release()


def test_every_parameter_missing_from_the_first_saved_states_declares_its_legacy_value():
    import json

    overrides = json.loads((V0_STATES / "overrides.json").read_text())
    config = load_config(None, overrides)
    for path in V0_STATES.glob("*.json"):
        if path.stem == "overrides":
            continue
        saved = json.loads(path.read_text())["settings"]["params"]
        params = plan_strategy(config, path.stem).params
        missing = set(params.names()) - set(saved)
        assert missing <= set(type(params).legacy()), f"{path.stem}: {missing - set(type(params).legacy())} lack a legacy value"


def test_the_mqnet_state_saved_before_purity_source_resumes_with_its_encoder(tmp_path, monkeypatch):
    """MQNet learned to read frozen features (``purity_source``); a run saved before keeps its SimCLR encoder."""
    import json
    import shutil

    from osal_ray.experiment.state import resumed_plan

    monkeypatch.chdir(V0_STATES.parents[2])
    config = load_config(None, json.loads((V0_STATES / "overrides.json").read_text()))
    location = str(tmp_path / "state.json")
    shutil.copy(V0_STATES / "mqnet.json", location)
    state = open_run_state(location, config, "mqnet", 0)
    plan = resumed_plan(config, plan_strategy(config, "mqnet"), state)
    assert plan.params.purity_source == "ssl" and "ssl" in [n.name for n in plan.networks]
    assert state.settings["params"]["purity_source"] == "ssl"
