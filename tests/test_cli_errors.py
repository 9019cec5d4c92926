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
    assert_no_runs(harness_cli)  # nothing was recorded for a user error


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
    assert_no_runs(harness_cli)


def test_seed_out_of_range(harness_cli):
    assert_one_line_error(harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--seed", "100000000000000000000"), "--seed")


def test_unwritable_save_dir_is_caught_before_training(harness_cli, shared_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--data-dir", str(shared_data),
                    "--save-dir", str(blocker / "runs"))
    assert_one_line_error(r, "--save-dir", "a-file")
    assert_no_runs(harness_cli)


@pytest.mark.parametrize("flag", ["--model", "--preset", "--attack", "--certifier"])
def test_an_empty_name_is_refused_not_ignored(harness_cli, flag):
    assert_one_line_error(harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", flag, ""), f"{flag} '' is empty")


def test_a_dataset_filter_with_a_typo_names_the_datasets(harness_cli, empty_db):
    for command in ("leaderboard", "runs"):
        assert_one_line_error(harness_cli(command, "--dataset", "mnsit"), "unknown dataset 'mnsit'; did you mean 'mnist'?")
    assert harness_cli("leaderboard", "--dataset", "cifar10").out.startswith("no finished runs yet")
    assert harness_cli("runs", "--dataset", "cifar10").out.strip() == "no runs recorded"


def test_a_misspelt_plugin_name_in_the_environment_is_named(harness_cli, monkeypatch, empty_db):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGINS", "lpidst")
    r = harness_cli("leaderboard")
    (line,) = r.err.strip().splitlines()
    assert r.code == 0 and line.startswith(
        "warning: HARNESS_DISABLE_PLUGINS names 'lpidst', which is not an installed plugin; did you mean 'lpdist'? installed: ")


# -- issue 12: values that are only wrong once the data or the model exists ------------------------------------------------


def test_more_eval_samples_than_the_test_split_is_refused_before_the_run_is_recorded(harness_cli, shared_data):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--eval-samples", "20000",
                    "--data-dir", str(shared_data), "--no-save")
    assert_one_line_error(r, "--eval-samples 20000 exceeds the 10000 test samples of 'mnist'", "give at most 10000")
    assert_no_runs(harness_cli)


def test_more_train_samples_than_the_training_split_is_refused(harness_cli, harness_tiny_data):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "tiny", "--no-preset", "--eps", "0.1", "--train-samples", "10000000",
                    "--no-save", plugins=[harness_tiny_data])
    assert_one_line_error(r, "--train-samples 10000000 exceeds the 600 training samples of 'tiny'", "give at most 600")
    assert_no_runs(harness_cli)


@pytest.mark.parametrize(
    ("width", "message"),
    [
        # two 10⁶×10⁶ layers and more: counted on the meta device and refused before anything is allocated
        ("1000000", "has 2,000,019,000,003 parameters (8,000.1 GB), more than the "),
        ("1000000000000000000000", "cannot be built on cpu: its sizes overflow"),
    ],
)
def test_a_model_too_big_to_build_is_one_line_naming_its_options(harness_cli, harness_tiny_data, width, message):
    args = ("run", "--plugin", "linf_v2", "--dataset", "tiny", "--no-preset", "--eps", "0.1", "--device", "cpu", "--set",
            f"model.width={width}", "--set", "model.depth=4", "--no-save")
    r = harness_cli(*args, plugins=[harness_tiny_data])
    assert_one_line_error(r, f"model 'linf_dist_net' (depth=4, width={width}, identity_value=10.0, momentum=0.1) ", message,
                          "give smaller sizes (--set model.KEY=VALUE)")
    assert_no_runs(harness_cli)
    from harness.errors import UsageError

    with pytest.raises(UsageError, match="linf_dist_net"):  # --debug: the traceback instead
        harness_cli("--debug", *args, plugins=[harness_tiny_data])


def test_a_model_option_that_does_not_fit_the_dataset_is_one_line(harness_cli, harness_tiny_data):
    r = harness_cli("run", "--plugin", "linf_mlp", "--dataset", "tiny", "--no-preset", "--eps", "0.1", "--set", "model.input_size=8",
                    "--no-save", plugins=[harness_tiny_data])
    assert_one_line_error(r, "model option input_size 8 is larger than the 4×4 images of 'tiny'; give at most 4")


def test_crm_with_a_training_set_its_holdout_empties_is_refused_before_training(harness_cli, harness_tiny_data):
    r = harness_cli("run", "--plugin", "crm", "--dataset", "tiny", "--no-preset", "--norm", "2", "--eps", "0.5", "--train-samples", "1",
                    "--no-save", plugins=[harness_tiny_data])
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert r.err.strip().splitlines()[-1] == (
        "error: trainer 'crm' trains on train_fraction=0.9 of the training samples, which leaves none of 1; "
        "give --train-samples 2 or more (or --set trainer.train_fraction=1)")
    assert "epoch 1" not in r.err  # refused before the first step


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--attack", "pgd-l2"],
         "attack 'pgd-l2' is for l_2; this run is l_inf"),
        (["run", "--plugin", "crm", "--dataset", "mnist", "--preset", "quick-linf", "--norm", "2"],
         "preset 'quick-linf' of 'crm' is for l_inf, not --norm 2; presets for 'mnist': paper-1.58 (mnist, l_2 eps 1.58); "
         "quick (mnist, l_2 eps 1.58); quick-linf (mnist, l_inf eps 0.1)"),
        (["run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--attack", "pgd", "--attack", "pgd"],
         "--attack 'pgd' is given twice"),
        (["show", "1", "--samples", "-5"], "Invalid value for '--samples': -5 is not in the range x>=0."),
    ],
)
def test_refused_choices_record_nothing(harness_cli, args, message):
    r = harness_cli(*args)
    assert_one_line_error(r, message)
    assert_no_runs(harness_cli)


def test_a_gzip_bomb_in_the_data_folder_is_one_line(harness_cli, tmp_path, shared_data, gzip_bomb):
    data = tmp_path / "data"
    shutil.copytree(shared_data / "mnist", data / "mnist")
    target = data / "mnist" / "t10k-images-idx3-ubyte.gz"
    target.chmod(0o644)
    target.write_bytes(gzip_bomb)
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--data-dir", str(data), "--no-save")
    assert_one_line_error(r, f"corrupt data file {target}: it decompresses to more than 7,840,016 bytes")
    assert_no_runs(harness_cli)


def test_filters_that_match_nothing_say_so_and_name_what_is_recorded(harness_cli, harness_tiny_data):
    def out(*args: str) -> str:
        r = harness_cli(*args, plugins=[harness_tiny_data])
        assert r.code == 0, r.err
        return r.out.strip()

    # An empty database: nothing to filter.
    from harness.store import open_store

    open_store("results.db").close()
    assert out("leaderboard", "--dataset", "tiny") == "no finished runs yet (harness run --plugin NAME --dataset NAME)"
    assert out("runs", "--status", "failed") == "no runs recorded"
    # One failed run (CRM's holdout leaves nothing of one sample), then one finished run.
    r = harness_cli("run", "--plugin", "crm", "--dataset", "tiny", "--no-preset", "--norm", "2", "--eps", "0.5", "--train-samples", "1",
                    "--no-save", plugins=[harness_tiny_data])
    assert r.code == 2
    assert out("leaderboard") == "no run has finished yet: 1 failed (harness runs lists them)"
    assert out("leaderboard", "--dataset", "tiny") == (
        "no finished run matches --dataset tiny; no run has finished yet: 1 failed (harness runs lists them)")
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "tiny", "--no-preset", "--eps", "0.1", "--epochs", "1", "--train-samples", "100",
                    "--eval-samples", "10", "--set", "model.width=8", "--set", "model.depth=2", "--attack", "pgd", "--set",
                    "attacker.pgd.steps=1", "--certifier", "interval", "--no-save", plugins=[harness_tiny_data])
    assert r.code == 0, r.err
    for fmt in ("table", "markdown"):
        assert out("leaderboard", "--dataset", "fashion-mnist", "--format", fmt) == (
            "no finished run matches --dataset fashion-mnist; finished runs are on tiny l_inf eps=0.1 (1)")
    assert out("leaderboard", "--norm", "2", "--eps", "8/255") == (
        "no finished run matches --norm 2 --eps 8/255; finished runs are on tiny l_inf eps=0.1 (1)")
    assert out("leaderboard", "--dataset", "fashion-mnist", "--format", "json") == "[]"
    assert out("runs", "--status", "interrupted") == "no run matches --status interrupted; recorded runs: 1 failed, 1 finished; datasets: tiny (2)"
    assert out("runs", "--status", "failed", "--dataset", "mnist") == (
        "no run matches --status failed --dataset mnist; recorded runs: 1 failed, 1 finished; datasets: tiny (2)")


def assert_no_runs(harness_cli):
    """Nothing was recorded: no database was created, or the one there holds no run."""
    from pathlib import Path

    if Path("results.db").exists():
        assert harness_cli("runs").out.strip() == "no runs recorded"


@pytest.mark.parametrize("command", [["run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick"], ["eval", "--weights", "w.pt",
                                     "--model", "linf_dist_net", "--dataset", "mnist", "--eps", "0.3"]])
def test_a_bad_certifier_budget_is_one_line_naming_it(harness_cli, command):
    r = harness_cli(*command, "--certifier-budget", "-3")
    assert_one_line_error(r, "--certifier-budget '-3': give SECONDS or NAME=SECONDS, with SECONDS a positive number")


def test_a_certifier_budget_for_a_certifier_that_does_not_run_names_the_valid_ones(harness_cli):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--certifier", "interval",
                    "--certifier-budget", "crown=60")
    assert_one_line_error(r, "--certifier-budget crown=...: 'crown' is not a certifier of this evaluation (valid: interval)")
