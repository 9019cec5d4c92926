"""Bad input: one line on stderr naming the value and the valid choices, exit status 2, no traceback."""

import gzip
import shutil

import pytest


def assert_one_line_error(result, *fragments):
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_unknown_plugin(harness_cli):
    r = harness_cli("run", "--plugin", "linf_v3", "--dataset", "mnist")
    assert_one_line_error(r, "'linf_v3'", "did you mean 'linf_v2'", "available:")


def test_unknown_dataset(harness_cli):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnsit")
    assert_one_line_error(r, "'mnsit'", "did you mean 'mnist'", "cifar10", "fashion-mnist")


def test_unknown_preset(harness_cli):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quik")
    assert_one_line_error(r, "'quik'", "did you mean 'quick'", "paper-0.3")


@pytest.mark.parametrize("eps", ["0", "-0.1", "1.5"])
def test_eps_out_of_range(harness_cli, eps):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--eps", eps)
    assert_one_line_error(r, "out of range")


def test_eps_not_a_number(harness_cli):
    assert_one_line_error(harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--eps", "big"), "'big'")


def test_eps_without_a_paper_preset(harness_cli):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--eps", "0.2")
    assert_one_line_error(r, "eps 0.2", "paper-0.3", "--preset")


def test_epochs_below_one(harness_cli):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--epochs", "0")
    assert_one_line_error(r, "--epochs 0", ">= 1")


def test_bad_override(harness_cli):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--set", "model.widht=3")
    assert_one_line_error(r, "'widht'", "did you mean 'width'")


def test_bad_choice_from_click_is_one_line(harness_cli):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--device", "gpu")
    assert_one_line_error(r, "'gpu'", "auto", "cpu", "cuda")


def test_cuda_without_cuda(harness_cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--device", "cuda")
    assert_one_line_error(r, "'cuda'", "no CUDA")


def test_missing_cifar_prints_where_to_put_it(harness_cli, tmp_path, monkeypatch):
    import harness.data.files as files

    monkeypatch.setattr(files, "_urlopen_timeout", 0.5, raising=False)
    data = tmp_path / "empty-data"
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "cifar10", "--data-dir", str(data), "--no-save")
    assert_one_line_error(r, "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")


def test_corrupt_data_file_names_the_file(harness_cli, tmp_path, shared_data):
    data = tmp_path / "data"
    shutil.copytree(shared_data / "mnist", data / "mnist")
    target = data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(target.read_bytes()))
    payload[100] ^= 1
    target.write_bytes(gzip.compress(bytes(payload)))
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--data-dir", str(data), "--no-save")
    assert_one_line_error(r, "t10k-labels-idx1-ubyte", "checksum")
    assert harness_cli("runs").out.strip() == "no runs recorded"  # nothing was recorded for a user error


def test_database_that_cannot_be_opened(harness_cli, tmp_path):
    for db in (str(tmp_path / "no-such-dir" / "r.db"), "nosuchdialect://x"):
        assert_one_line_error(harness_cli("leaderboard", "--db", db), db.split("/")[0])
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    assert_one_line_error(harness_cli("leaderboard", "--db", str(garbage)), "garbage.db")


@pytest.fixture
def empty_db(tmp_path):
    """An empty results.db where harness_cli runs (the read commands never create one)."""
    from harness.store import open_store

    open_store(str(tmp_path / "results.db")).close()


def test_show_unknown_run(harness_cli, empty_db):
    assert_one_line_error(harness_cli("show", "7"), "no run with id 7")


def test_every_command_has_an_example_in_its_help(harness_cli):
    import harness.cli

    for name in harness.cli.cli.commands:
        r = harness_cli(name, "--help")
        assert r.code == 0 and "Example" in r.out, name


@pytest.mark.parametrize("override", ["trainer.lam0=0", "trainer.adam_eps=-1", "trainer.beta2=1", "trainer.crop_padding=-1",
                                      "model.momentum=nan", "trainer.lr=inf", "trainer.p_end_epoch=1000"])
def test_bad_option_values_are_user_errors(harness_cli, override):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--set", override)
    assert_one_line_error(r, override.split(".")[1].split("=")[0])
    assert harness_cli("runs").out.strip() == "no runs recorded"


def test_seed_out_of_range(harness_cli):
    assert_one_line_error(harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--seed", "100000000000000000000"), "--seed")


def test_unwritable_save_dir_is_caught_before_training(harness_cli, shared_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--data-dir", str(shared_data),
                    "--save-dir", str(blocker / "runs"))
    assert_one_line_error(r, "--save-dir", "a-file")
    assert harness_cli("runs").out.strip() == "no runs recorded"


@pytest.mark.parametrize("flag", ["--model", "--preset", "--attack", "--certifier"])
def test_an_empty_name_is_refused_not_ignored(harness_cli, flag):
    assert_one_line_error(harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", flag, ""), f"{flag} '' is empty")


def test_a_dataset_filter_with_a_typo_names_the_datasets(harness_cli, empty_db):
    for command in ("leaderboard", "runs"):
        assert_one_line_error(harness_cli(command, "--dataset", "mnsit"), "unknown dataset 'mnsit'; did you mean 'mnist'?")
    assert harness_cli("leaderboard", "--dataset", "cifar10").out.startswith("no finished runs")
    assert harness_cli("runs", "--dataset", "cifar10").out.strip() == "no runs match"


def test_a_misspelt_plugin_name_in_the_environment_is_named(harness_cli, monkeypatch, empty_db):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGINS", "lpidst")
    r = harness_cli("leaderboard")
    (line,) = r.err.strip().splitlines()
    assert r.code == 0 and line.startswith(
        "warning: HARNESS_DISABLE_PLUGINS names 'lpidst', which is not an installed plugin; did you mean 'lpdist'? installed: ")
