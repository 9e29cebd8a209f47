"""A full disk or missing permissions while writing ``--out``: one clear line, exit code 2,
the previous output intact, no temporary directory left behind.

ENOSPC and friends are simulated by making a write inside the staged directory raise the
``OSError`` the kernel would; one test hits a real limit (``RLIMIT_FSIZE``, so the kernel
itself answers EFBIG) in a subprocess, which goes through safetensors' own error type.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import SafetensorError

from spruce.cli.main import main
from spruce.errors import SpruceError
from spruce.pipelines import finetune as finetune_pipeline
from spruce.utils import atomic
from spruce.utils.atomic import StorageError, staged_output_dir, write_text_atomic
from tiny_models import write_sentiment_files

REPO = Path(__file__).resolve().parents[1]


def previous_output(parent: Path) -> Path:
    out = parent / "run"
    out.mkdir(parents=True)
    (out / "report.json").write_text('{"old": true}')
    (out / "model").mkdir()
    (out / "model" / "weights").write_bytes(b"old weights")
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def no_space(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


# -- staged_output_dir / write_text_atomic ----------------------------------------------------


def test_no_space_inside_the_staged_directory(tmp_path: Path) -> None:
    out = previous_output(tmp_path)
    before = snapshot(out)
    with pytest.raises(StorageError) as caught, staged_output_dir(out, overwrite=True) as staging:
        (staging / "report.json").write_text("half")
        raise no_space(staging / "model.safetensors")
    message = caught.value.one_line()
    assert message.startswith(f"no space left on the device while writing --out {out}")
    assert "free some space or choose another --out" in message
    assert f"the previous {out} is unchanged" in message
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_no_space_without_a_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "new" / "run"
    with pytest.raises(SpruceError, match="nothing was written"), staged_output_dir(out):
        raise no_space()
    assert not out.exists()
    assert leftovers(out.parent) == []


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (errno.EDQUOT, "disk quota is exceeded"),
        (errno.EROFS, "file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
        (errno.EFBIG, "larger than the file system allows"),
    ],
)
def test_each_storage_errno_has_its_message(tmp_path: Path, code: int, fragment: str) -> None:
    out = previous_output(tmp_path)
    before = snapshot(out)
    with pytest.raises(SpruceError, match=fragment), staged_output_dir(out, overwrite=True):
        raise OSError(code, os.strerror(code))
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_safetensors_io_error_is_recognised(tmp_path: Path) -> None:
    # What save_pretrained raises on a full disk: safetensors wraps the OS error in text.
    out = previous_output(tmp_path)
    error = SafetensorError("Error while serializing: I/O error: No space left (os error 28)")
    with pytest.raises(SpruceError, match="no space left"), staged_output_dir(out, True):
        raise error
    assert leftovers(tmp_path) == []


def test_other_errors_keep_their_type(tmp_path: Path) -> None:
    """Only storage conditions are user errors; anything else is a bug with a traceback."""
    out = previous_output(tmp_path)
    with pytest.raises(OSError) as caught, staged_output_dir(out, overwrite=True):
        raise OSError(errno.EIO, "I/O error")
    assert not isinstance(caught.value, SpruceError)
    with pytest.raises(SafetensorError), staged_output_dir(out, overwrite=True):
        raise SafetensorError("Error while deserializing header: invalid header length")
    assert leftovers(tmp_path) == []


def test_failed_final_rename_puts_the_previous_output_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = previous_output(tmp_path)
    before = snapshot(out)
    real_replace = os.replace

    def replace(source: object, target: object) -> None:
        if ".tmp-" in str(source):  # staging -> out: the step that would publish
            raise OSError(errno.EACCES, "Permission denied", str(target))
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", replace)
    denied = pytest.raises(SpruceError, match="permission denied")
    with denied as caught, staged_output_dir(out, overwrite=True) as staging:
        (staging / "report.json").write_text("new")
    assert "is unchanged" in caught.value.one_line()
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_staging_directory_cannot_be_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", read_only)
    out = previous_output(tmp_path)
    with pytest.raises(SpruceError, match="read-only"), staged_output_dir(out, True):
        raise AssertionError("the block must not run without a staging directory")
    assert (out / "report.json").read_text() == '{"old": true}'


def test_write_text_atomic_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.csv"
    path.write_text("old")
    real_fdopen = os.fdopen  # atomic.os is the os module: patching it patches os itself

    class FullDisk:
        def __init__(self, fd: int, *args: object, **kwargs: object) -> None:
            self.handle = real_fdopen(fd, "w")

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, text: str) -> None:
            self.handle.write(text[:2])
            raise no_space()

    monkeypatch.setattr(atomic.os, "fdopen", FullDisk)
    with pytest.raises(SpruceError, match="no space left on the device while writing") as caught:
        write_text_atomic(path, "new content")
    assert f"{path} is unchanged" in caught.value.one_line()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_unlistable_out_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = previous_output(tmp_path)

    def denied(self: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(SpruceError, match="cannot inspect --out"):
        atomic.check_output_dir(out, overwrite=False)


def test_unwritable_parent_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What chmod 0o500 on the parent gives a non-root user, whoever runs the tests."""
    out = previous_output(tmp_path)
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    with pytest.raises(SpruceError, match="permission denied"):
        atomic.check_output_dir(out, overwrite=True)


# -- the command line --------------------------------------------------------------------------


def run_finetune(
    capsys: pytest.CaptureFixture[str], model: Path, data: dict[str, Path], out: Path
) -> tuple[int, str]:
    args = ["finetune", "--model", model, "--train", data["train"], "--out", out, "--overwrite"]
    capsys.readouterr()
    code = main([str(a) for a in [*args, "--device", "cpu", "--quiet", "--max-steps", "1"]])
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("spruce: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_cli_disk_full_while_writing_the_report(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = write_sentiment_files(tmp_path / "data", n_train=8)
    out = previous_output(tmp_path / "runs")
    before = snapshot(out)

    def full_disk(report: dict, path: Path) -> None:
        path.write_text('{"half": ')  # the model is already in the staged directory
        raise no_space(path)

    monkeypatch.setattr(finetune_pipeline, "write_report", full_disk)
    code, err = run_finetune(capsys, tiny_models["bert"], data, out)
    assert_one_line(code, err, "no space left on the device", f"--out {out}", "is unchanged")
    assert snapshot(out) == before
    assert leftovers(out.parent) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_cli_read_only_parent_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    data = write_sentiment_files(tmp_path / "data", n_train=8)
    out = previous_output(tmp_path / "runs")
    before = snapshot(out)
    out.parent.chmod(0o500)
    try:
        code, err = run_finetune(capsys, tiny_models["bert"], data, out)
    finally:
        out.parent.chmod(0o700)
    assert_one_line(code, err, "permission denied")
    assert snapshot(out) == before
    assert leftovers(out.parent) == []


def test_cli_permission_denied_while_staging(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a parent made read-only mid-run gives, for users root or not."""
    data = write_sentiment_files(tmp_path / "data", n_train=8)
    out = previous_output(tmp_path / "runs")
    before = snapshot(out)

    def denied(*args: object, **kwargs: object) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", str(out.parent))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", denied)
    code, err = run_finetune(capsys, tiny_models["bert"], data, out)
    assert_one_line(code, err, "permission denied while writing --out", "is unchanged")
    assert snapshot(out) == before


FILE_SIZE_LIMIT = """
import resource, signal, sys
# Without SIG_IGN the kernel kills the process (SIGXFSZ); ignored, write() fails with EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
from spruce.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE / SIGXFSZ as on Linux")
def test_cli_real_file_size_limit(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The kernel refuses the model file; safetensors reports it as a SafetensorError."""
    data = write_sentiment_files(tmp_path / "data", n_train=8)
    out = previous_output(tmp_path / "runs")
    before = snapshot(out)
    script = tmp_path / "limited.py"
    script.write_text(textwrap.dedent(FILE_SIZE_LIMIT))
    args = ["finetune", "--model", tiny_models["bert"], "--train", data["train"], "--out", out]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # No checkpoint: its file would reach the limit first (test_resume.py covers that).
    options = ["--overwrite", "--device", "cpu", "--quiet", "--max-steps", "1"]
    options += ["--checkpoint-steps", "0"]
    result = subprocess.run(
        [sys.executable, str(script), *map(str, args), *options],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert_one_line(result.returncode, result.stderr, "larger than the file system allows")
    assert snapshot(out) == before
    assert leftovers(out.parent) == []
