"""The one config mechanism: defaults < TOML file < command-line flags; clear errors for bad settings."""

from dataclasses import dataclass

import pytest

from gpt.config import from_dict, help_text, load_toml, parse_args, setting, to_toml
from gpt.errors import UserError


@dataclass
class Example:
    n_layer: int = setting(4, "number of layers")
    learning_rate: float = setting(1e-3, "peak learning rate")
    data: str = setting("stdlib", "what to train on")
    compile: bool = setting(False, "use torch.compile")
    top_k: int | None = setting(None, "keep the k most likely tokens")
    stop: list[str] = setting([], "stop strings")


def test_defaults_and_both_flag_spellings():
    cfg, overrides = parse_args(Example, [])
    assert cfg == Example() and overrides == {}
    cfg, overrides = parse_args(Example, ["--n_layer=6", "--learning_rate", "3e-4", "--data", "x.txt"])
    assert (cfg.n_layer, cfg.learning_rate, cfg.data) == (6, 3e-4, "x.txt")
    assert overrides == {"n_layer": 6, "learning_rate": 3e-4, "data": "x.txt"}
    cfg, _ = parse_args(Example, ["--n-layer", "2"])
    assert cfg.n_layer == 2


def test_booleans_optionals_and_lists():
    cfg, _ = parse_args(Example, ["--compile"])
    assert cfg.compile is True
    cfg, _ = parse_args(Example, ["--compile=false"])
    assert cfg.compile is False
    cfg, _ = parse_args(Example, ["--compile", "false", "--data=d"])
    assert cfg.compile is False and cfg.data == "d"
    cfg, _ = parse_args(Example, ["--top_k=5", "--stop", "\n\n", "--stop=END"])
    assert cfg.top_k == 5 and cfg.stop == ["\n\n", "END"]
    cfg, _ = parse_args(Example, ["--top_k=none"])
    assert cfg.top_k is None


def test_toml_file_then_flags_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('n_layer = 8\n[optim]\nlearning_rate = 1\nstop = ["a", "b"]\n')
    cfg, overrides = parse_args(Example, [str(path), "--n_layer=3"])
    assert cfg.n_layer == 3 and cfg.learning_rate == 1.0 and cfg.stop == ["a", "b"]
    assert overrides == {"n_layer": 3}
    cfg, _ = parse_args(Example, ["--config", str(path)])
    assert cfg.n_layer == 8


def test_to_toml_round_trips(tmp_path):
    cfg = Example(n_layer=2, learning_rate=6e-4, data='a "quoted"\npath\\x', compile=True, top_k=None, stop=["\n"])
    path = tmp_path / "out.toml"
    path.write_text(to_toml(cfg))
    assert from_dict(Example, load_toml(path)) == cfg


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n_layers=3"], "unknown setting 'n_layers' on the command line (did you mean n_layer?)"),
        (["--zzz=1"], "unknown setting 'zzz' on the command line (see --help for the list)"),
        (["--n_layers", "3"], "unknown setting 'n_layers' on the command line (did you mean n_layer?)"),
        (["--n_layer=3.5"], "setting n_layer expects an integer, got '3.5'"),
        (["--learning_rate=fast"], "setting learning_rate expects a number, got 'fast'"),
        (["--compile=maybe"], "setting compile expects a true/false, got 'maybe'"),
        (["--n_layer"], "setting n_layer needs a value"),
        (["stray"], "unexpected argument 'stray'"),
        (["missing.toml"], "config file missing.toml not found"),
    ],
)
def test_bad_settings_are_one_line_errors(argv, message):
    with pytest.raises(UserError) as e:
        parse_args(Example, argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layer = = 3\n")
    with pytest.raises(UserError, match="not valid TOML"):
        parse_args(Example, [str(bad)])
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('n_layer = "six"\n')
    with pytest.raises(UserError, match="setting n_layer expects an integer, got 'six'"):
        parse_args(Example, [str(wrong)])
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("n_heads = 3\n")
    with pytest.raises(UserError, match=f"unknown setting 'n_heads' in {unknown}"):
        parse_args(Example, [str(unknown)])


def test_help_lists_every_setting_with_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(Example, ["--help"], prog="x.py")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for line in ["usage: x.py [CONFIG.toml] [--name=value | --name value ...]", "--n_layer",
                 "number of layers [integer; 4]", "peak learning rate [number; 0.001]", '"stdlib"',
                 "[integer or none; none]", "[list of strings; none]"]:
        assert line in out
    assert help_text(Example).count("\n  --") == 6


def test_explicit_names_come_from_the_toml_file_and_the_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[model]\nn-layer = 8\n")
    given: set[str] = set()
    parse_args(Example, [str(path), "--learning_rate=2e-3"], explicit=given)
    assert given == {"n_layer", "learning_rate"}


def test_number_lists_may_be_written_with_commas():
    @dataclass
    class Lists:
        depths: list[int] = setting([1], "sizes")
        budgets: list[float] = setting([1.0], "budgets")

    cfg, _ = parse_args(Lists, ["--depths", "2,3,4", "--budgets=1e9,3e9"])
    assert cfg.depths == [2, 3, 4] and cfg.budgets == [1e9, 3e9]
    with pytest.raises(UserError, match="depths"):
        parse_args(Lists, ["--depths=2,x"])
