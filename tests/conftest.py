"""Shared pytest fixtures."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# what may appear in the checkout during a run without a test writing it: Python's, packaging's and linters' caches
_BYPRODUCTS = ("__pycache__", ".egg-info", ".pytest_cache", ".ruff_cache", ".mypy_cache")


def _ignored_paths() -> set[str] | None:
    """Git-ignored files of the checkout (outside .venv), where test output would land; None outside a git checkout.

    Only ignored paths are compared: a new source file someone is writing meanwhile is untracked, not ignored.
    """
    try:
        res = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "-uall", "--", ".",
                              ":(exclude).venv"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return {line[3:] for line in res.stdout.splitlines()
            if line.startswith("!! ") and not any(b in line for b in _BYPRODUCTS)}


@pytest.fixture(autouse=True, scope="session")
def _tests_write_only_under_tmp(tmp_path_factory):
    """Every test writes only under its temporary folders; the session fails at its end, naming what strayed.

    The session runs in an empty folder of its own, so a relative path (a YAML's ``runs/...``, ``lightning_logs``,
    a default ``--out``) lands there instead of in the checkout, and anything found there at the end is an error.
    So is a new git-ignored file in the checkout (an absolute path into it).
    """
    before = _ignored_paths()
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old)
    stray = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    after = _ignored_paths()
    new = sorted(after - before) if before is not None and after is not None else []
    if stray or new:
        pytest.fail("tests wrote outside their tmp folders: "
                    + (f"relative paths {stray[:20]} (in the session's working folder {cwd}); " if stray else "")
                    + (f"into the checkout {ROOT}: {new[:20]}" if new else ""), pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def _feature_cache_in_tmp(tmp_path_factory):
    """orderlab's caches (``$ORDERLAB_CACHE``) go to a session folder: the suite never writes ~/.cache."""
    old = os.environ.get("ORDERLAB_CACHE")
    os.environ["ORDERLAB_CACHE"] = str(tmp_path_factory.mktemp("orderlab-cache"))
    yield
    if old is None:
        os.environ.pop("ORDERLAB_CACHE", None)
    else:
        os.environ["ORDERLAB_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _one_thread_session():
    """Tests use tiny models: one intra-op thread is faster than two spin-waiting ones on a loaded 2-core box."""
    torch.set_num_threads(1)
    yield


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op thread, then restore the count.

    Schedule planning and plan metrics are many tiny tensor ops; on a loaded 2-core machine (CI) OpenMP threads
    spin-wait for each other and make them up to 10x slower. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """The sklearn digits dataset prepared once per test session (about 2 s)."""
    from orderlab.data.datasets import PrepareOptions, prepare_dataset

    root = str(tmp_path_factory.mktemp("data") / "digits")
    prepare_dataset("digits", root, PrepareOptions(seed=0, progress=False), overwrite=True)
    return root


# a tiny backbone and a short CPU run: appended to any fit config by the tests
def tiny_fit_args(root, out, steps=2):
    return ["--data.root", str(root), "--data.num_workers", "0", "--trainer.default_root_dir", str(out),
            "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "1", "--trainer.val_check_interval",
            "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
            "--trainer.strategy", "auto",
            "--model.backbone.preset", "null", "--model.backbone.depth", "2", "--model.backbone.dim", "16",
            "--model.backbone.heads", "2", "--model.backbone.height", "8", "--model.backbone.width", "8",
            "--model.backbone.vocab_size", "17", "--model.backbone.num_classes", "10", "--model.budgets", "[8, 4]",
            "--model.warmup_steps", "1"]


@pytest.fixture(scope="session")
def tiny_ckpt(digits_root, tmp_path_factory):
    """A checkpoint of a tiny digits model trained for 3 steps by ``orderlab fit``."""
    from pathlib import Path

    from orderlab.train.lightning_cli import run_lightning_cli

    out = tmp_path_factory.mktemp("fit")
    cfg = Path(__file__).resolve().parents[1] / "experiments" / "debug.yaml"
    run_lightning_cli(["fit", "--config", str(cfg), *tiny_fit_args(digits_root, out, 3),
                       "--trainer.logger.init_args.save_dir", str(out)])
    ckpts = sorted(Path(out).rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    return str(ckpts[-1])


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server of our own: a fresh cluster on a free loopback port, one database, removed after.

    Skips (saying why) only where no server can be started at all: no initdb binary, or initdb/pg_ctl refusing.
    """
    import glob
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not initdb[-1]:
        pytest.skip("no PostgreSQL server binaries (initdb) here; `apt-get install postgresql` provides them")
    bindir = os.path.dirname(initdb[-1])
    # the server refuses to run as root: run it as the `postgres` user, in a folder that user owns
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = tempfile.mkdtemp(prefix="orderlab-pg-", dir="/tmp")
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd):
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)

    res = run(f"{bindir}/initdb", "-D", f"{data}/db", "-A", "trust", "-U", "postgres", "-E", "UTF8",
              "--locale=C", "--no-sync")
    if res.returncode == 0:
        res = run(f"{bindir}/pg_ctl", "-D", f"{data}/db", "-l", f"{data}/log", "-w", "-t", "60", "-o",
                  f"-p {port} -h 127.0.0.1 -k {data} -c fsync=off", "start")
    if res.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {(res.stderr or res.stdout).strip()[-300:]}")
    try:
        res = run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "orderlab_test")
        assert res.returncode == 0, res.stderr
        print(f"PostgreSQL {bindir} serving on 127.0.0.1:{port}")
        yield f"postgresql://postgres@127.0.0.1:{port}/orderlab_test"
    finally:
        run(f"{bindir}/pg_ctl", "-D", f"{data}/db", "-m", "immediate", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)
