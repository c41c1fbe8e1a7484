"""Every config error is one line naming the key, the bad value and what is allowed."""

from pathlib import Path

import pytest

from fedquant.app import check_config as validate
from fedquant.experiment.config import ConfigError
from tests.helpers import make_config

PROFILE = "{name: %s, share: %s, bits: %s}"

BAD = [
    (["clients_per_round=11"], "clients_per_round=11 is not valid: allowed is an integer in 1..10"),
    (["num_clients=0"], "num_clients=0 is not valid: allowed is an integer >= 1"),
    (["num_rounds=-1"], "num_rounds=-1 is not valid: allowed is an integer >= 1"),
    (["seed=1.5"], "seed=1.5 is not valid: allowed is an integer >= 0"),
    (["dataset.name=mnist"], "dataset.name='mnist' is not valid: allowed are digits, fmnist, cifar10, cifar100"),
    (["dataset=fmnist", "dataset.root=/nonexistent"], "dataset.root='/nonexistent' does not exist: create the folder"),
    (["dataset.root=/tmp"], "dataset.root='/tmp' is not valid for dataset.name=digits: digits is bundled"),
    (["dataset.holdout=-5"], "dataset.holdout=-5 is not valid: allowed is an integer >= 0"),
    (["model.name=vgg"], "model.name='vgg' is not valid: allowed are mlp, cnn, resnet20"),
    (["model=resnet20", "model.options.norm=layer"], "model.options.norm='layer' is not valid: allowed are batch, group"),
    (["+model.options.norm=batch"], "model.options.norm is not valid for model.name=mlp: allowed are hidden"),
    (["model=cct", "+model.options.embed_dimm=64"], "model.options.embed_dimm is not valid for model.name=cct: allowed are"),
    (["strategy=fedavg", "client.dampen_weight=0.01"],
     "client.dampen_weight=0.01 needs quantization-aware training: use strategy=qafedavg"),
    (["client.freeze_threshold=0.1", "quantization.learned_ranges=true"],
     "client.freeze_threshold is not supported with quantization.learned_ranges=true"),
    (["client.freeze_threshold=2"], "client.freeze_threshold=2 is not valid: allowed is a number >= 0.0 and <= 1.0"),
    (["strategy.profiles=[{name: a, share: 1.0, bits: [8], width: 1.5}]"],
     "strategy.profiles[0].width=1.5 is not valid: allowed is a number > 0 and <= 1"),
    (["model=cct", "strategy.profiles=[{name: a, share: 1.0, bits: [8], width: 0.5}]"],
     "strategy.profiles: a width below 1 needs a model with HeteroFL sub-models, and model.name=cct has none"),
    (["eval.reestimate_bn=false", "strategy.profiles=[{name: a, share: 1.0, bits: [8], width: 0.5}]"],
     "eval.reestimate_bn=false is not valid with width profiles"),
    (["client.freeze_threshold=0.1", "strategy.profiles=[{name: a, share: 1.0, bits: [8], width: 0.5}]"],
     "client.freeze_threshold is not supported with width profiles"),
    (["strategy.name=fedsgd"], "strategy.name='fedsgd' is not valid: allowed are fedavg, qafedavg"),
    (["strategy.server=scaffold"], "strategy.server='scaffold' is not valid: allowed are fedavg, fedprox, fedavgm, fedadam"),
    (["+strategy.server_options.mu=0.1"], "strategy.server_options.mu is not valid for strategy.server=fedavg"),
    (["strategy.sampling=per_epoch"], "strategy.sampling='per_epoch' is not valid: allowed are per_step, per_layer, per_round, fixed"),
    (["strategy.bits=[4,1]"], "strategy.bits[1]=1 is out of range: allowed is an integer in 2..16"),
    (["strategy.sampling=fixed"], "strategy.bits=['2', '3', '4', '6', '8'] is not valid with strategy.sampling=fixed: allowed is exactly one setting"),
    ([f"strategy.profiles=[{PROFILE % ('a', 0.5, [8])}, {PROFILE % ('b', 0.3, [4])}]"], "strategy.profiles shares sum to 0.8: allowed is a sum of 1"),
    ([f"strategy.profiles=[{PROFILE % ('a', 1.0, [8, 17])}]"], "strategy.profiles[0].bits[1]=17 is out of range: allowed is an integer in 2..16"),
    ([f"strategy.profiles=[{PROFILE % ('a', 1.0, [1])}]"], "strategy.profiles[0].bits[0]=1 is out of range: allowed is an integer in 2..16"),
    ([f"strategy.profiles=[{PROFILE % ('a', 0.5, [8])}, {PROFILE % ('a', 0.5, [4])}]"], "strategy.profiles[1].name='a' is not valid"),
    ([f"strategy.profiles=[{PROFILE % ('a', 1.0, [5])}]"], "strategy.profiles[0].bits=[5] shares no bit-width with strategy.bits"),
    (["partition.name=pathological"], "partition.name='pathological' is not valid: allowed are iid, dirichlet, shards"),
    (["partition.alpha=0"], "partition.alpha=0 is not valid: allowed is a number > 0.0"),
    (["partition=shards", "partition.k=0"], "partition.k=0 is not valid: allowed is an integer >= 1"),
    (["client.lr=0"], "client.lr=0 is not valid: allowed is a number > 0.0"),
    (["client.batch_size=0"], "client.batch_size=0 is not valid: allowed is an integer >= 1"),
    (["client.momentum=1.0"], "client.momentum=1.0 is not valid: allowed is a number >= 0.0 and < 1.0"),
    (["client.regularizer=l2"], "client.regularizer='l2' is not valid: allowed are none, kure, gradl1"),
    (["eval.settings=[fp,w4]"], "eval.settings[1]='w4' is not valid: allowed is 'fp', 'wXaY'"),
    (["eval.settings=[w4a20]"], "eval.settings[0]='w4a20' is out of range: allowed is an integer in 2..16"),
    (["eval.every=0"], "eval.every=0 is not valid: allowed is an integer >= 1"),
    (["eval.weight_range=minmax"], "eval.weight_range='minmax' is not valid: allowed are max, mse"),
    (["eval.act_range=kl"], "eval.act_range='kl' is not valid: allowed are minmax, mse, percentile"),
    (["eval.act_range=percentile", "eval.act_percentile=50"], "eval.act_percentile=50 is not valid: allowed is a number > 50.0 and <= 100.0"),
    (["eval.ptq=gptq"], "eval.ptq='gptq' is not valid: allowed are basic, adaround"),
    (["eval.adaround_iterations=0"], "eval.adaround_iterations=0 is not valid: allowed is an integer >= 1"),
    (["eval.bias_correction=maybe"], "eval.bias_correction='maybe' is not valid: allowed are true, false"),
    (["dataset.validation=500"], "dataset.validation=500 is not valid: allowed is at most dataset.holdout=384"),
    (["dataset.holdout=150"], "dataset.holdout=150 is too small: it leaves 22 calibration images after dataset.validation=128; "
                              "allowed is dataset.holdout >= dataset.validation + 32"),
    (["dataset.holdout=0", "dataset.validation=0"], "dataset.holdout=0 is too small: it leaves 0 calibration images"),
    (["quantization.weight_granularity=per_row"], "quantization.weight_granularity='per_row' is not valid: allowed are per_channel, per_tensor"),
    (["quantization.pinned_bits=1"], "quantization.pinned_bits=1 is out of range"),
    (["simulation.num_cpus_per_client=0"], "simulation.num_cpus_per_client=0 is not valid: allowed is a number > 0.0"),
    (["simulation.num_gpus_per_client=-0.5"], "simulation.num_gpus_per_client=-0.5 is not valid: allowed is a number >= 0.0"),
    (["simulation.device=tpu"], "simulation.device='tpu' is not valid: allowed are auto, cpu, cuda"),
    (["logger=wandb", "logger.mode=bad"], "logger.mode='bad' is not valid: allowed are online, offline, disabled"),
    (["+quantization.weight_bits=4"], "quantization.weight_bits is not a config key"),
    (["+quantizaton.pinned_bits=4"], "quantizaton is not a config key: did you mean quantization?"),
    (["partition=shards", "+partition.alpha=0.1"], "partition.alpha is not a config key: allowed under partition are k, name"),
    (["strategy.profiles=[{name: a, share: 1.0, bits: 4}]"], "strategy.profiles[0].bits=4 is not valid: allowed is a list"),
    (["strategy.profiles=[{name: a, share: 1.0, bits: null}]"], "strategy.profiles[0].bits=null is not valid: allowed is a list"),
    (["strategy.profiles=[{name: a, share: 1.0}]"], "strategy.profiles[0].bits is missing: it has no default"),
    (["strategy.bits=null"], "strategy.bits=null is not valid: allowed is a list"),
    (["eval.settings=null"], "eval.settings=null is not valid: allowed is a list"),
    (["client.lr=inf"], "client.lr=inf is not valid: allowed is a number > 0.0"),
    (["~eval.ptq"], "eval.ptq is missing: add it, e.g. eval.ptq='basic' (its default)"),
    # robust aggregators, central DP and hostile clients (issue 32)
    (["strategy.server=fedmedian", "strategy.profiles=[{name: a, share: 1.0, bits: [8], width: 0.5}]"],
     "strategy.server=fedmedian is not valid with width profiles: a sub-model's untouched entries are filled with "
     "their holders' mean (strategies/sub_models.py), which only a weighted mean keeps; allowed are fedavg, fedprox, "
     "fedavgm, fedadam, fedyogi, fedadagrad"),
    (["strategy.server=krum", "+strategy.server_options.num_malicious_nodes=1"],
     "clients_per_round=4 is too few for strategy.server=krum with num_malicious_nodes=1: its rule needs "
     "n > 2f + 2 replies, i.e. clients_per_round >= 5"),
    (["strategy.server=bulyan", "clients_per_round=6", "+strategy.server_options.num_malicious_nodes=1"],
     "clients_per_round=6 is too few for strategy.server=bulyan with num_malicious_nodes=1: its rule needs "
     "n >= 4f + 3 replies, i.e. clients_per_round >= 7"),
    (["strategy.server=krum", "+strategy.server_options.num_malicious_nodes=-1"],
     "strategy.server_options.num_malicious_nodes=-1 is not valid: allowed is an integer >= 0"),
    (["strategy.server=multikrum", "+strategy.server_options.num_nodes_to_select=5"],
     "strategy.server_options.num_nodes_to_select=5 is not valid: allowed is an integer in 1..4"),
    (["strategy.server=fedtrimmedavg", "+strategy.server_options.beta=0.5"],
     "strategy.server_options.beta=0.5 is not valid: allowed is a fraction in [0, 0.5)"),
    (["strategy.server=fedadam", "strategy.dp=server_fixed"],
     "strategy.dp=server_fixed is not valid with strategy.server=fedadam: the noise sigma C / m is calibrated to a "
     "plain mean of m clipped updates"),
    (["strategy.dp=server_fixed", "+strategy.dp_options.noise_multiplier=1.0"],
     "strategy.dp=server_fixed needs strategy.dp_options.clipping_norm"),
    (["strategy.dp=server_fixed", "+strategy.dp_options.clip=1.0"],
     "strategy.dp_options.clip is not valid for strategy.dp=server_fixed: allowed are noise_multiplier, clipping_norm"),
    (["+strategy.dp_options.noise_multiplier=1.0"], "strategy.dp_options.noise_multiplier is set but strategy.dp=none"),
    (["strategy.dp=server_adaptive", "+strategy.dp_options.noise_multiplier=1.0"],
     "strategy.dp_options.noise_multiplier=1.0 is not valid: adaptive clipping needs noise_multiplier < "
     "2 x clipped_count_stddev = 0.4"),
    (["strategy.dp=server_fixed", "+strategy.dp_options={noise_multiplier: 1.0, clipping_norm: 0}"],
     "strategy.dp_options.clipping_norm=0 is not valid: allowed is a number > 0"),
    (["strategy.dp=server_fixed", "+strategy.dp_options={noise_multiplier: 1.0, clipping_norm: 1.0}",
      "strategy.profiles=[{name: a, share: 1.0, bits: [8], width: 0.5}]"],
     "strategy.dp=server_fixed is not valid with width profiles"),
    (["faults.attack=poison"], "faults.attack='poison' is not valid: allowed are none, sign_flip, scale, noise, malformed"),
    (["faults.attack_rate=0.2"], "faults.attack_rate=0.2 does nothing with faults.attack=none"),
    (["faults.attack=sign_flip"], "faults.attack=sign_flip needs faults.attack_rate > 0"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[o[0][:40] for o, _ in BAD])
def test_bad_config_message(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(make_config(*overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_default_and_shipped_experiments_are_valid():
    validate(make_config())
    experiments = sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / "experiment").glob("*.yaml"))
    assert {"cifar_qafedavg", "cifar_fedavg", "fmnist_qafedavg", "fmnist_fedavg"} <= set(experiments)
    for name in experiments:
        validate(make_config(f"+experiment={name}"))


def test_study_arms_compose_from_their_base():
    kure = make_config("+experiment=fmnist_fedavg_kure")
    assert kure["strategy"]["name"] == "fedavg" and kure["client"]["regularizer"] == "kure"
    assert kure["num_clients"] == 100 and kure["client"]["lr"] == 0.02
    qat = make_config("+experiment=fmnist_qat_w4a4")
    assert qat["strategy"]["bits"] == [4] and qat["strategy"]["sampling"] == "fixed"
    profiles = make_config("+experiment=fmnist_qafedavg_profiles", "partition=iid")
    assert [p["name"] for p in profiles["strategy"]["profiles"]] == ["npu8", "dsp4", "mcu2"]
    assert profiles["partition"]["name"] == "iid"


def test_profiles_take_the_settings_strategy_bits_takes():
    """One bit-width rule: a profile accepts every setting strategy.bits accepts (w4a8 included)."""
    cfg = make_config("strategy.bits=[w4a8,8]", "strategy.profiles=[{name: a, share: 1.0, bits: [w4a8]}]")
    validate(cfg)
    with pytest.raises(ConfigError, match=r"strategy.profiles\[0\].bits\[0\]='w4a20' is out of range"):
        validate(make_config("strategy.profiles=[{name: a, share: 1.0, bits: [w4a20]}]"))


def test_an_unknown_key_names_the_nearest_known_one():
    with pytest.raises(ConfigError, match=r"^num_round is not a config key: did you mean num_rounds\?"):
        validate(make_config("+num_round=3"))
    with pytest.raises(ConfigError, match=r"^eval.ptqq is not a config key: did you mean eval.ptq\?"):
        validate(make_config("+eval.ptqq=adaround"))


def test_conf_sets_only_keys_the_schema_knows_and_every_key_is_documented():
    """The schema is the one list of keys: the composed default config has exactly its keys (the
    groups' variant sections included), and every key has a one-line doc."""
    import dataclasses

    from fedquant.experiment import schema
    from fedquant.quant import QuantConfig

    cfg = make_config()
    defaults = schema.defaults()
    assert set(cfg) == set(defaults)
    for section in ("client", "eval", "strategy", "faults", "checkpoint", "simulation", "quantization"):
        assert set(cfg[section]) == set(defaults[section]), section
    classes = [schema.ExperimentConfig, schema.ModelConfig, schema.DatasetConfig, schema.StrategyConfig, schema.ProfileConfig, schema.ClientConfig,
               schema.EvalConfig, schema.FaultsConfig, schema.CheckpointConfig, schema.SimulationConfig, schema.DirichletConfig, schema.ShardsConfig,
               schema.WandbConfig, QuantConfig]
    undocumented = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
                    if not dataclasses.is_dataclass(f.default_factory) and not f.metadata.get("doc")]
    assert not undocumented


def test_eval_protocol_is_taken_from_the_eval_section_by_name():
    from fedquant.experiment.specs import eval_protocol

    cfg = make_config("eval.ptq=adaround", "eval.adaround_iterations=7", "eval.act_range=percentile",
                      "eval.act_percentile=99.5", "eval.bias_correction=true", "eval.weight_range=mse",
                      "eval.reestimate_bn=false")
    p = eval_protocol(cfg)
    assert (p.ptq, p.adaround_iterations, p.act_range, p.act_percentile, p.bias_correction, p.weight_range,
            p.reestimate_bn) == ("adaround", 7, "percentile", 99.5, True, "mse", False)


def test_overrides_of_a_finished_run_go_through_the_same_checks():
    """What reevaluate and the benchmarks change in a run's config is checked like the command line,
    and a config from an older version (a key missing) takes the schema's default."""
    from fedquant.experiment.config import with_overrides
    from strategies import server_options

    cfg = make_config()
    old = {**cfg, "eval": {k: v for k, v in cfg["eval"].items() if k != "bias_correction"}}
    new = with_overrides(old, {"eval.ptq": "adaround"}, server_options())
    assert new["eval"]["ptq"] == "adaround" and new["eval"]["bias_correction"] is False
    assert cfg["eval"]["ptq"] == "basic"  # the input is not changed
    with pytest.raises(ConfigError, match=r"^eval.ptq='gptq' is not valid: allowed are basic, adaround$"):
        with_overrides(cfg, {"eval.ptq": "gptq"}, server_options())
    with pytest.raises(ConfigError, match=r"^eval.ptqq is not a config key"):
        with_overrides(cfg, {"eval.ptqq": "adaround"}, server_options())


@pytest.mark.parametrize(("override", "group"), [("dataset.name=fmnist", "dataset"), ("strategy.name=fedavg", "strategy"),
                                                 ("model.name=cnn", "model"), ("partition.name=iid", "partition")])
def test_a_group_name_changed_without_its_group_says_which_to_use(override, group):
    """`dataset.name=fmnist` alone would keep the digits model, lr and hold-out: one line naming
    `dataset=fmnist` instead (the CLI prints it and exits 2)."""
    name = override.split("=")[1]
    with pytest.raises(ConfigError, match=rf"^{group}.name={name} keeps the settings of {group}=\w+ .*use {group}={name} instead$"):
        make_config(override)
    assert make_config(f"{group}={name}")[group]["name"] == name


def test_settings_clients_train_at_but_nobody_tests_are_named():
    from fedquant.experiment.specs import untested_training_settings

    assert untested_training_settings(make_config("strategy.bits=[5,8,fp]")) == [(5, 5)]
    assert untested_training_settings(make_config()) == []
    assert untested_training_settings(make_config("strategy=fedavg", "eval.settings=[fp]")) == []
    profiles = "strategy.profiles=[{name: a, share: 1.0, bits: [5]}]"  # a profile's settings are tested
    assert untested_training_settings(make_config("strategy.bits=[5,8]", "eval.settings=[fp]", profiles)) == [(8, 8)]
