"""``kdkit tune --storage postgresql://...``: two worker processes share one study in a real PostgreSQL server.

The test starts its own throwaway server (Debian's ``postgresql`` package; ``scripts/install_debian.sh`` installs
it, ``make test`` calls that) in a temporary directory, listening only on a Unix socket there, with ``trust``
authentication for the one database user it creates. PostgreSQL refuses to run as root, so under root (as in CI) the
server runs as the ``postgres`` user (or ``nobody``) through ``runuser``. Skipped, with the reason, when the server
binaries or the psycopg2 driver are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="the PostgreSQL driver (psycopg2-binary, in the tune extra) is not installed")

pytestmark = pytest.mark.slow  # a server start and two workers × 2 trials of a real run: 1-3 min on a shared CPU


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


def _as_user() -> tuple[list[str], int | None]:
    """The command prefix that runs the server as a non-root user, and that user's uid (None: we are not root)."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and no runuser to start PostgreSQL as another user (it refuses root)")
    for user in ("postgres", "nobody"):
        try:
            return [runuser, "-u", user, "--"], pwd.getpwnam(user).pw_uid
        except KeyError:
            continue
    pytest.skip("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


@pytest.fixture
def postgres():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/install_debian.sh "
                    "(Debian's postgresql package)")
    prefix, uid = _as_user()
    root = Path(tempfile.mkdtemp(prefix="kdpg"))  # short: a Unix socket path is limited to ~100 characters
    root.chmod(0o755)
    if uid is not None:
        os.chown(root, uid, -1)
    data, port = root / "data", 5439  # the port only names the socket file: nothing listens on TCP
    run = dict(capture_output=True, text=True, timeout=120)
    proc = subprocess.run([*prefix, initdb, "-D", str(data), "-U", "kdkit", "--auth=trust", "-E", "UTF8"], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    opts = f"-k {root} -c listen_addresses='' -p {port}"
    proc = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w",
                           "start"], **run)
    assert proc.returncode == 0, proc.stderr[-2000:] + (root / "server.log").read_text()[-2000:]
    try:
        import psycopg2

        conn = psycopg2.connect(dbname="postgres", user="kdkit", host=str(root), port=port)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE kdkit")
        conn.close()
        yield f"postgresql+psycopg2://kdkit@/kdkit?host={root}&port={port}"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], **run)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres):
    from kdkit.study.tune import load_study

    recipe = {"name": "pg", "output_dir": str(tmp_path / "runs"),
              "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 300},
              "student": {"name": "mlp", "params": {"hidden": [16]}},
              "terms": [{"name": "ce", "params": {"label_smoothing": 0.0}}],
              "optim": {"name": "adamw", "lr": 0.003}, "epochs": 2,
              "search": {"optim.lr": {"log_uniform": [0.001, 0.03]}}}
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump(recipe))
    kdkit_bin = Path(sys.executable).parent / "kdkit"
    cmd = [str(kdkit_bin), "tune", str(path), "--trials", "2", "-q", "--pruner", "none", "--storage", postgres]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    study = load_study(str(path), storage=postgres)
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 4  # each trial its own run directory
    assert not (tmp_path / "runs" / "pg-tune" / "journal.log").exists()  # the database, not the journal file
    shown = subprocess.run([str(kdkit_bin), "tune", str(path), "--show", "--storage", postgres], capture_output=True,
                           text=True, timeout=300, env=env)
    assert shown.returncode == 0 and "4 trials (4 complete)" in shown.stdout, shown.stderr[-2000:]
